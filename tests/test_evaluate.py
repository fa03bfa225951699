"""Scoring of eval traces (hand-made, incl. malformed calls), the Wilson interval, the evaluate
entry point against a scripted endpoint and a live demo MCP server, and the held-out loss."""

import dataclasses
import json
import sys
import textwrap
from pathlib import Path

import pytest

from fakes import FakeEndpoint, first_tool_then_answer, tool_then_answer
from tracetune.agent import Settings
from tracetune.runtime.endpoint import Endpoint
from tracetune.config import load_tasks
from tracetune.evaluate import (evaluate_to_files, percentile, score_traces,
                                tool_call_validity, tool_selection, wilson_interval)
from tracetune.heldout import heldout_loss
from tracetune.jsonio import InputError, read_jsonl
from tracetune.parsing import normalize_assistant
from tracetune.runtime.serving import free_port

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def traces(name):
    return [t for _, t in read_jsonl(FIXTURES / f"{name}.results.jsonl")]


# --- Wilson interval -------------------------------------------------------------------------

@pytest.mark.parametrize("k, n, lo, hi", [
    (5, 10, 0.2366, 0.7634),     # textbook values
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),   # Wikipedia's worked example (p = 0.308)
    (1, 1, 0.2065, 1.0),
])
def test_wilson_interval_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


@pytest.mark.parametrize("n", [1, 10, 13, 25, 100])
def test_wilson_interval_contains_the_rate_at_the_edges(n):
    # 10/10 once gave an upper bound of 0.9999999999999999, a negative error bar in the report.
    assert wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0


def test_wilson_interval_no_data_is_uninformative():
    assert wilson_interval(0, 0) == (0.0, 1.0)


# --- tool-call validity ----------------------------------------------------------------------

def one_call(name, arguments):
    trace = traces("lora")[0]
    trace["messages"][1]["tool_calls"][0]["function"] = {"name": name, "arguments": arguments}
    trace["invalid_calls"] = []
    return trace


@pytest.mark.parametrize("name, arguments, problem", [
    ("get_price", '{"item": "blue widget"}', None),
    ("get_price", "", None),  # no arguments: valid JSON-wise, but the schema requires item
    ("get_price", '{"item": "blue"', "bad_json"),
    ("get_price", "[1, 2]", "bad_json"),
    ("lookup_price", '{"item": "blue"}', "unknown_tool"),
    ("get_price", '{"item": 3}', "schema"),
    ("get_price", '{"item": "x", "colour": "blue"}', "schema"),  # additionalProperties: false
])
def test_tool_call_validity_single_calls(name, arguments, problem):
    if arguments == "":
        problem = "schema"
    validity = tool_call_validity(one_call(name, arguments))
    assert validity["calls"] == 1
    assert validity["valid"] == (problem is None)
    assert validity["problems"] == ({problem: 1} if problem else {})
    assert validity["parsable"] == (problem != "bad_json")
    assert validity["known_tool"] == (problem not in ("bad_json", "unknown_tool"))


def test_an_unreadable_tool_call_block_counts_as_a_bad_call():
    trace = traces("lora")[0]
    trace["messages"][1] = normalize_assistant({"content": "<tool_call>{get_price: blue}</tool_call>"}, "c")
    assert tool_call_validity(trace)["problems"] == {"bad_json": 1}


def test_trace_without_calls_has_no_validity_problems():
    trace = traces("lora")[0]
    trace["messages"] = trace["messages"][:1] + [{"role": "assistant", "content": "12.50"}]
    assert tool_call_validity(trace) == {"calls": 0, "parsable": 0, "known_tool": 0, "valid": 0, "problems": {}}


# --- score_traces ----------------------------------------------------------------------------

def test_score_tuned_fixture():
    s = score_traces(traces("lora"))
    assert (s["n_tasks"], s["n_traces"]) == (2, 4)
    assert s["success"]["per_sample"]["k"] == 3 and s["success"]["per_sample"]["rate"] == 0.75
    assert s["success"]["per_sample"]["ci95"] == pytest.approx(list(wilson_interval(3, 4)))
    # search-docs passed 1 of 2 samples: solved by the at-least-half rule.
    assert s["success"]["per_task"]["k"] == 2
    calls = s["tool_calls"]
    assert calls["calls"] == 4 and calls["valid"]["k"] == 3 and calls["problems"] == {"schema": 1}
    assert s["errors"] == {"tool_error": 1}
    assert s["mean_turns"] == 2.0
    assert s["latency"]["mean_s"] == 4.5 and s["latency"]["p50_s"] == 4.5
    assert s["latency"]["p95_s"] == pytest.approx(5.85)
    by_task = {row["task_id"]: row for row in s["tasks"]}
    assert by_task["price-blue"]["passed"] == 2 and by_task["search-docs"]["valid_calls"] == 1


def test_score_base_fixture_with_malformed_calls_and_failures():
    s = score_traces(traces("base"))
    assert s["success"]["per_sample"]["k"] == 0 and s["success"]["per_task"]["k"] == 0
    calls = s["tool_calls"]
    assert calls["calls"] == 3
    assert (calls["parsable"]["k"], calls["known_tool"]["k"], calls["valid"]["k"]) == (2, 1, 1)
    assert calls["problems"] == {"bad_json": 1, "unknown_tool": 1}
    assert s["errors"] == {"error:APIConnectionError": 1, "max_turns": 1, "tool_error": 2}
    assert s["status"] == {"answered": 2, "error": 1, "max_turns": 1}
    assert s["latency"]["n"] == 3  # the failed run's 0 s is not a latency


def test_percentile_matches_numpy_linear():
    np = pytest.importorskip("numpy")
    values = [0.3, 5.0, 1.2, 9.9, 2.2, 2.2, 7.0]
    for q in (0, 50, 95, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_dead_server_is_a_failed_run_not_a_zero_score():
    from tracetune.trace import check_error_budget

    with pytest.raises(RuntimeError, match=r"evaluation failed: 1/4 traces ended in an error \(more than x=0.2\)"):
        check_error_budget(traces("base"), 0.2, "evaluation", "x")
    check_error_budget(traces("base"), 0.5, "evaluation", "x")


# --- evaluate entry point (scripted endpoint, live demo MCP server) ----------------------------

def write_tasks(tmp_path, splits=("eval", "eval", "train")):
    tasks = "\n".join(textwrap.indent(textwrap.dedent(f"""\
        - id: t{i}
          prompt: Find me a widget.
          servers: [shop]
          split: {split}
          check: {{tool_called: search_products, contains: ["widget"]}}"""), "  ")
        for i, split in enumerate(splits))
    path = tmp_path / "tasks.yaml"
    path.write_text(f"servers:\n  shop: {{command: {sys.executable}, args: [-m, tracetune.servers.shop]}}\n"
                    f"tasks:\n{tasks}\n")
    return load_tasks(path)


def outputs(tmp_path):
    return {"results_path": str(tmp_path / "eval" / "results.jsonl"),
            "summary_path": str(tmp_path / "eval" / "summary.json"),
            "reordered_path": str(tmp_path / "eval" / "reordered.jsonl")}


def test_evaluate_runs_only_eval_tasks(tmp_path):
    taskfile = write_tasks(tmp_path)
    policy = tool_then_answer("search_products", {"query": "widget"}, "Here is a widget.")
    with FakeEndpoint(policy) as fake:
        summary = evaluate_to_files(taskfile, Endpoint(fake.base_url, "fake", timeout_s=10), Settings(concurrency=4),
                                    samples=2, max_error_rate=0.5, model="lora", **outputs(tmp_path))
    results = [t for _, t in read_jsonl(outputs(tmp_path)["results_path"])]
    assert sorted(t["trace_id"] for t in results) == ["t0--s0", "t0--s1", "t1--s0", "t1--s1"]
    assert all(t["source"] == "model" for t in results)
    assert summary["success"]["per_sample"]["k"] == 4, [t["check"] for t in results]
    assert summary["tool_calls"]["valid"]["rate"] == 1.0
    assert json.loads(Path(outputs(tmp_path)["summary_path"]).read_text()) == summary


@pytest.mark.parametrize("keep", [True, False])
def test_evaluate_sends_the_system_prompt_only_if_training_kept_it(tmp_path, keep):
    taskfile = dataclasses.replace(write_tasks(tmp_path, splits=("eval",)), system_prompt="Be brief.")
    policy = tool_then_answer("search_products", {"query": "widget"}, "Here is a widget.")
    with FakeEndpoint(policy) as fake:
        evaluate_to_files(taskfile, Endpoint(fake.base_url, "fake", timeout_s=10), Settings(), samples=1,
                          max_error_rate=0.5, model="lora", system_prompt=keep, **outputs(tmp_path))
    first = fake.requests[0]["messages"][0]
    assert (first == {"role": "system", "content": "Be brief."}) == keep, first


def test_evaluate_with_no_eval_tasks_is_one_line_error(tmp_path):
    taskfile = write_tasks(tmp_path, splits=("train",))
    with pytest.raises(InputError, match=r"tasks.yaml: tasks: no task has split: eval"):
        evaluate_to_files(taskfile, Endpoint("http://127.0.0.1:9/v1", "x"), Settings(), samples=1,
                          max_error_rate=0.5, model="base", **outputs(tmp_path))


def test_dead_endpoint_leaves_no_summary(tmp_path):
    taskfile = write_tasks(tmp_path, splits=("eval",))
    endpoint = Endpoint(f"http://127.0.0.1:{free_port()}/v1", "gone", timeout_s=2, max_retries=0)
    with pytest.raises(RuntimeError, match="evaluation failed: 1/1 traces"):
        evaluate_to_files(taskfile, endpoint, Settings(), samples=1, max_error_rate=0.5, model="base",
                          **outputs(tmp_path))
    assert not (tmp_path / "eval").exists() or not any((tmp_path / "eval").iterdir())


# --- held-out loss ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 2-layer Llama with a byte-level BPE tokenizer trained on the spot (no network)."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["<|im_start|>user\nHow much is the widget?<|im_end|>\n<|im_start|>assistant\nIt costs 12.50.<|im_end|>"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    path = tmp_path_factory.mktemp("tiny-model")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_heldout_loss_is_the_mean_over_completion_tokens(tiny_model, tmp_path):
    import polars as pl
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [{"id": "a", "prompt": "<|im_start|>user\nHow much is the widget?<|im_end|>\n<|im_start|>assistant\n",
             "completion": "It costs 12.50.<|im_end|>"},
            {"id": "b", "prompt": "<|im_start|>user\nwidget?<|im_end|>\n<|im_start|>assistant\n",
             "completion": "12.50<|im_end|>"}]
    pl.DataFrame([{"id": r["id"], "trace_id": r["id"], "text": r["prompt"] + r["completion"],
                   "loss_start": len(r["prompt"]), "loss_end": len(r["prompt"] + r["completion"])}
                  for r in rows]).write_parquet(tmp_path / "eval.parquet")
    got = heldout_loss(str(tiny_model), str(tmp_path / "eval.parquet"))

    # The same number by the library's own loss: labels masked to the completion's tokens.
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_model), AutoModelForCausalLM.from_pretrained(tiny_model)
    total, count = 0.0, 0
    for row in rows:
        prompt_ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        ids = tokenizer(row["prompt"] + row["completion"], add_special_tokens=False, return_tensors="pt")["input_ids"]
        assert ids[0, : len(prompt_ids)].tolist() == prompt_ids  # the boundary falls between tokens here
        labels = ids.clone()
        labels[0, : len(prompt_ids)] = -100
        n = int((labels[0, 1:] != -100).sum())
        with torch.no_grad():
            total += float(model(input_ids=ids, labels=labels).loss) * n
        count += n
    assert got["tokens"] == count and got["rows"] == 2
    assert got["loss"] == pytest.approx(total / count, rel=1e-4)


def test_heldout_loss_rejects_a_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "README.md").write_text("not a model")
    with pytest.raises(InputError, match=r"model: not a model directory \(no config.json\)"):
        heldout_loss(str(tmp_path / "model"), str(tmp_path / "eval.parquet"))


def test_heldout_loss_names_a_row_without_loss_region(tiny_model, tmp_path):
    import polars as pl

    pl.DataFrame([{"id": "r1", "trace_id": "t", "text": "hello", "loss_start": 3, "loss_end": 9}]).write_parquet(
        tmp_path / "eval.parquet")
    with pytest.raises(InputError, match=r"eval.parquet: row r1: loss_start/loss_end: not a span inside text"):
        heldout_loss(str(tiny_model), str(tmp_path / "eval.parquet"))


def test_reversed_tool_lists_show_a_model_that_picks_by_position(tmp_path):
    """A model that calls whatever tool comes first solves every task in the servers' order and
    none with the lists reversed: the robustness check must say so."""
    taskfile = write_tasks(tmp_path, splits=("eval", "eval"))
    with FakeEndpoint(first_tool_then_answer({"query": "widget"}, "Here is a widget."), sees_tools=True) as fake:
        summary = evaluate_to_files(taskfile, Endpoint(fake.base_url, "fake", timeout_s=10), Settings(), samples=1,
                                    max_error_rate=0.5, model="lora", reorder=True, **outputs(tmp_path))
    assert summary["success"]["per_task"]["k"] == 2
    assert summary["reordered"]["per_task"]["k"] == 0
    assert summary["reordered"]["delta_points"] == -100.0 and summary["reordered"]["flipped"] == ["t0", "t1"]
    reordered = [t for _, t in read_jsonl(outputs(tmp_path)["reordered_path"])]
    given = [t for _, t in read_jsonl(outputs(tmp_path)["results_path"])]
    assert [x["function"]["name"] for x in reordered[0]["tools"]] == [x["function"]["name"] for x in given[0]["tools"]][::-1]


def test_reorder_check_off_writes_an_empty_file(tmp_path):
    taskfile = write_tasks(tmp_path, splits=("eval",))
    with FakeEndpoint(tool_then_answer("search_products", {"query": "widget"}, "Here is a widget.")) as fake:
        summary = evaluate_to_files(taskfile, Endpoint(fake.base_url, "fake", timeout_s=10), Settings(), samples=1,
                                    max_error_rate=0.5, model="lora", **outputs(tmp_path))
    assert summary["reordered"] is None and len(fake.requests) == 2
    assert Path(outputs(tmp_path)["reordered_path"]).read_text() == ""


def _trace_with_calls(*names):
    messages = [{"role": "user", "content": "q"}]
    for i, name in enumerate(names):
        messages.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": "{}"}}]})
        messages.append({"role": "tool", "tool_call_id": f"c{i}", "name": name, "content": "ok"})
    messages.append({"role": "assistant", "content": "done"})
    return {"trace_id": "t--s0", "task_id": "t", "messages": messages, "tools": [],
            "outcome": {"status": "answered"}, "check": {"passed": True}}


@pytest.mark.parametrize("calls, first, every", [
    (("search_products", "check_stock"), True, True),
    (("check_stock", "search_products"), False, True),   # right tools, wrong first choice
    (("search_products",), True, False),                  # stopped before the stock lookup
    (("create_order", "search_products", "check_stock"), False, True),
    ((), False, False),                                    # answered without a tool
])
def test_tool_selection_against_the_reference_plan(calls, first, every):
    expected = ["search_products", "check_stock"]
    assert tool_selection(_trace_with_calls(*calls), expected) == {"first_call": first, "all_tools": every}


def test_summary_gives_tool_selection_and_success_per_capability():
    plan = [{"tool": "search_products", "arguments": {}}, {"tool": "check_stock", "arguments": {}}, {"answer": "x"}]
    tasks = {"a": {"capability": "stock", "reference": plan}, "b": {"capability": "stock", "reference": plan},
             "c": {"capability": "price", "reference": plan[:1] + plan[2:]}, "d": {}}
    traces = [_trace_with_calls("search_products", "check_stock") | {"task_id": "a"},
              _trace_with_calls("get_product") | {"task_id": "b", "check": {"passed": False}},
              _trace_with_calls("search_products") | {"task_id": "c"},
              _trace_with_calls() | {"task_id": "d"}]
    summary = score_traces(traces, tasks)
    assert summary["tool_selection"]["first_call"]["k"] == 2 and summary["tool_selection"]["first_call"]["n"] == 3
    assert summary["tool_selection"]["all_tools"]["k"] == 2
    assert {c: (r["k"], r["n"]) for c, r in summary["capabilities"].items()} == {
        "general": (1, 1), "price": (1, 1), "stock": (1, 2)}


# --- reproducibility -------------------------------------------------------------------------

PROMPTS = ["Find me a widget.", "how much is the kettle??", "Is the teapot in stock?", "Cancel ORD-1002 please",
           "What's the status of order ORD-1001?", "Do you ship to Germany?"]


def without_run_details(path) -> list[dict]:
    """A results file less what differs between runs by design: when, how long, and which port."""
    drop = {"created", "timings", "endpoint"}
    return [{k: v for k, v in trace.items() if k not in drop} for _, trace in read_jsonl(path)]


@pytest.mark.slow
def test_evaluating_twice_gives_identical_transcripts(tmp_path, bundled_gguf_model):
    """The same model and settings, two fresh llama.cpp servers, 6 tasks at once (the agent's
    concurrency, so requests share batches): identical verdicts and transcripts at temperature 0."""
    from tracetune.runtime.serving import served_model

    tasks = "\n".join(f"  - {{id: t{i}, prompt: {json.dumps(p)}, servers: [shop], split: eval, "
                      f"check: {{tool_called: search_products}}}}" for i, p in enumerate(PROMPTS))
    path = tmp_path / "tasks.yaml"
    path.write_text(f"servers:\n  shop: {{command: {sys.executable}, args: [-m, tracetune.servers.shop]}}\n"
                    f"tasks:\n{tasks}\n")
    taskfile, runs = load_tasks(path), []
    for run in ("first", "second"):
        with served_model(bundled_gguf_model, timeout_s=120) as served:
            files = {k: str(tmp_path / run / Path(v).name) for k, v in outputs(tmp_path).items()}
            evaluate_to_files(taskfile, Endpoint(served.base_url, served.model), Settings(temperature=0.0, max_tokens=48),
                              samples=1, max_error_rate=0.5, model="base", reorder=True, **files)
        runs.append(without_run_details(files["results_path"]) + without_run_details(files["reordered_path"]))
    assert [t["messages"] for t in runs[0]] == [t["messages"] for t in runs[1]]
    assert runs[0] == runs[1]
    assert any(m["role"] == "assistant" and m["content"] for t in runs[0] for m in t["messages"])
