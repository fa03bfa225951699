"""Tool lists of training rows: every tool of the servers, shuffled, with distractors and several
renderings; rows stay exact (prompt a prefix, loss region the target turn) under each of them."""

import json
from pathlib import Path

import pytest

from tracetune.config import TaskFile
from tracetune.dataset import Renderer, count_tokens, unroll_renderings
from tracetune.jsonio import InputError
from tracetune.toolsets import ToolRendering, check_task_options, distractor_pool, tool_lists, tool_name

FIXTURE = Path(__file__).parent / "fixtures" / "raw" / "price-total.jsonl"


def tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": f"The {name} tool.",
                                             "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture
def allowlisted_trace():
    """The fixture trace was collected offered get_price and add; its server has three more tools."""
    trace = json.loads(FIXTURE.read_text().splitlines()[0])
    trace["server_tools"] = trace["tools"] + [tool("refund"), tool("stock"), tool("track")]
    return trace


@pytest.fixture(scope="module")
def renderer(bundled_model):
    return Renderer.load(str(bundled_model))


POOL = {name: tool(name) for name in ("weather", "time", "fetch")}


def names(tools):
    return [tool_name(t) for t in tools]


def test_every_rendering_keeps_prompt_a_prefix_and_the_loss_region_the_turn(renderer, allowlisted_trace):
    opts = ToolRendering(distractors=2, renderings=3, seed=7)
    rows = unroll_renderings(renderer, allowlisted_trace, "train", opts, POOL)
    count_tokens(renderer, rows)
    assert len(rows) == 3 * 3 and sorted({r["rendering"] for r in rows}) == [0, 1, 2]
    assert len({r["id"] for r in rows}) == len(rows)
    targets = [m for m in allowlisted_trace["messages"] if m["role"] == "assistant"]
    for row in rows:
        tools = json.loads(row["tools"])
        assert len(tools) == 5 + 2
        history = json.loads(row["messages"])
        full = renderer.tokenizer.apply_chat_template(history, tools=tools, tokenize=False)
        prompt = renderer.tokenizer.apply_chat_template(history[:-1], tools=tools, tokenize=False,
                                                        add_generation_prompt=True)
        assert row["prompt"] == prompt and full.startswith(row["text"])
        assert row["text"][row["loss_start"]:row["loss_end"]] == row["completion"]
        assert row["completion"].endswith("<|im_end|>") and "<|im_start|>" not in row["completion"]
        assert targets[row["turn"]]["reasoning_content"] in row["completion"]
        assert row["n_loss_tokens"] > 0
    # the renderings differ in their tool lists, and every list holds every tool of the servers
    lists = {r["rendering"]: tuple(names(json.loads(r["tools"]))) for r in rows}
    assert len(set(lists.values())) == 3
    assert all(set(names(allowlisted_trace["server_tools"])) <= set(v) for v in lists.values())


def test_allowlisted_trace_renders_with_the_full_tool_list(renderer, allowlisted_trace):
    rows = unroll_renderings(renderer, allowlisted_trace, "train", ToolRendering(shuffle=False), {})
    assert names(json.loads(rows[0]["tools"])) == names(allowlisted_trace["server_tools"])
    assert '"name":"refund"' in rows[0]["prompt"]  # the tool it was not offered is listed too
    recorded = unroll_renderings(renderer, allowlisted_trace, "train", ToolRendering("recorded", shuffle=False), {})
    assert names(json.loads(recorded[0]["tools"])) == ["get_price", "add"]


def test_shuffling_is_deterministic_for_a_seed_and_differs_across_seeds(allowlisted_trace):
    def orders(seed):
        return [names(ts) for ts in tool_lists(allowlisted_trace, ToolRendering(seed=seed, renderings=2), POOL, 2)]

    assert orders(0) == orders(0)
    assert orders(0) != orders(1)
    assert names(tool_lists(allowlisted_trace, ToolRendering(seed=0), POOL, 1)[0]) != \
        names(allowlisted_trace["server_tools"])  # 5! orders: the servers' own order is unlikely


def test_eval_traces_get_one_rendering(renderer, allowlisted_trace):
    rows = unroll_renderings(renderer, allowlisted_trace, "eval", ToolRendering(renderings=4), {})
    assert {r["rendering"] for r in rows} == {0}


def test_distractors_come_from_other_servers_only(allowlisted_trace):
    pool = distractor_pool([allowlisted_trace, {"tools": [tool("weather"), tool("get_price")]}])
    assert list(pool) == sorted(["get_price", "add", "refund", "stock", "track", "weather"])
    (tools,) = tool_lists(allowlisted_trace, ToolRendering(distractors=1), pool, 1)
    assert sorted(names(tools)) == sorted(names(allowlisted_trace["server_tools"]) + ["weather"])


@pytest.mark.parametrize("opts, message", [
    (ToolRendering(distractors=4), r"trace 'price-total--s0': dataset\.distractor_tools: 4 asked for, but only 3 tool\(s\) of other servers exist"),
    (ToolRendering(shuffle=False, renderings=2), r"trace 'price-total--s0': dataset\.renderings: 2 asked for, but its 5 tool\(s\) with these options allow only 1 distinct tool list"),
])
def test_options_a_trace_cannot_meet_are_one_line_errors(allowlisted_trace, opts, message):
    with pytest.raises(InputError, match=message):
        tool_lists(allowlisted_trace, opts, POOL, opts.renderings)


def test_a_trace_calling_a_tool_its_list_lacks_is_refused(allowlisted_trace):
    allowlisted_trace["server_tools"] = [tool("refund")]
    with pytest.raises(InputError, match=r"calls \['add', 'get_price'\] that its tool list does not offer"):
        tool_lists(allowlisted_trace, ToolRendering(), {}, 1)


def test_task_file_is_checked_before_anything_runs():
    taskfile = TaskFile("tasks.yaml", {"shop": {}, "site": {}}, {
        "a": {"id": "a", "servers": ["site"], "split": "train"},
        "b": {"id": "b", "servers": ["shop"], "split": "train"}})
    server_tools = {"shop": ["search", "order", "cancel"], "site": ["fetch"]}
    check_task_options(ToolRendering(renderings=2, distractors=1), taskfile, server_tools, "config.yaml")
    with pytest.raises(InputError, match=r"^config.yaml: task 'a': dataset.renderings: 2 asked for, but its 1 tool"):
        check_task_options(ToolRendering(renderings=2), taskfile, server_tools, "config.yaml")
    with pytest.raises(InputError, match=r"^config.yaml: task 'b': dataset.distractor_tools: 2 asked for, but only 1"):
        check_task_options(ToolRendering(distractors=2), taskfile, server_tools, "config.yaml")
