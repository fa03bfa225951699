"""`tracetune record` driven through a pseudo-terminal, against the scripted endpoint and the demo
shop server: every answer a person can give, what the model reads, and what is (not) saved."""

import json
import sys
from pathlib import Path

import pexpect
import pytest
import yaml
from fakes import FakeEndpoint

from tracetune.config import load_tasks, task_hash
from tracetune.curate import curate_task
from tracetune.trace import validate_trace

TASKS = """\
# Tasks for recording by hand: the demo shop.
servers:
  shop: {command: python, args: [-m, tracetune.servers.shop]}  # the demo server

system_prompt: Be brief.

tasks:
  # one question
  - id: price-kettle
    prompt: How much does the steel kettle cost?
    servers: [shop]
    check: {contains: ["32.00"]}

  - id: kettle-italy
    prompt:
      - looking for a kettle, what have you got?
      - what would it cost to send one to italy
    servers: [shop]
    check: {contains: ["12.00"]}  # shipping to the EU
# end of the task list
"""

APPROVE = r"approve \[a\], edit arguments \[e\], skip with a message \[s\], stop \[q\]\? "
ACCEPT = r"accept \[a\], edit the answer \[e\], another user turn \[u\], stop \[q\]\? "

# What the scripted model does after each user turn: (tool, arguments), or None to answer at once.
PLAN = {
    "How much does the steel kettle cost?": ("search_products", {"query": "kettel"}),
    "looking for a kettle, what have you got?": ("search_products", {"query": "kettle"}),
    "what would it cost to send one to italy": ("shipping_quote", {"country": "Italy", "sku": "KB-03"}),
    "How much is the garden hose?": ("search_products", {"query": "garden hose"}),
    "Order two wool blankets.": ("create_order", {"sku": "HM-01", "quantity": 2}),
}


def model(messages):
    """Calls the planned tool after a user turn; after a result, answers with what it read."""
    last = messages[-1]
    if last["role"] == "tool":
        return {"role": "assistant", "content": f"I read: {last['content']}"}
    step = PLAN.get(last["content"])
    if step is None:
        return {"role": "assistant", "content": f"You said: {last['content']}"}
    tool, arguments = step
    return {"role": "assistant", "content": "", "reasoning_content": f"I need {tool}.",
            "tool_calls": [{"id": "x", "type": "function",
                            "function": {"name": tool, "arguments": json.dumps(arguments)}}]}


@pytest.fixture
def fake():
    with FakeEndpoint(model) as endpoint:
        yield endpoint


@pytest.fixture
def workdir(tmp_path, fake):
    (tmp_path / "tasks.yaml").write_text(TASKS)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "tasks": "tasks.yaml", "base_model": "bundled:smollm2-135m",
        "endpoint": {"base_url": fake.base_url, "model": "fake", "timeout_s": 10, "max_retries": 0}}))
    return tmp_path


def record(workdir, *args) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-m", "tracetune.cli", "record", *args], cwd=str(workdir),
                          encoding="utf-8", timeout=30, dimensions=(50, 200))
    child.logfile_read = sys.stdout  # shown by pytest when a test fails
    return child


def finish(child, status: int = 0) -> str:
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == status, child.before
    return child.before


def saved(workdir, task_id: str) -> list[dict]:
    path = workdir / "data/traces/recorded" / f"{task_id}.jsonl"
    traces = [json.loads(line) for line in path.read_text().splitlines()]
    for lineno, trace in enumerate(traces, 1):
        validate_trace(trace, f"{path}:{lineno}")
    return traces


def tool_results(request: dict) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "tool"]


def leftovers(workdir) -> list[Path]:
    return [p for p in workdir.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def test_approve_and_accept_appends_a_trace_with_a_collected_trace_fields(workdir, fake):
    for n in range(2):  # the second recording of the task is appended as --rec1
        child = record(workdir, "price-kettle")
        child.expect("user: How much does the steel kettle cost?")
        child.expect("reasoning: I need search_products.")
        child.expect('tool call: search_products\r\n  {\r\n    "query": "kettel"\r\n  }')
        child.expect(APPROVE)
        child.sendline("a")
        child.expect("result:")
        child.expect(ACCEPT)
        child.sendline("a")
        child.expect(f"saved price-kettle--rec{n} to data/traces/recorded/price-kettle.jsonl")
        finish(child)
    traces = saved(workdir, "price-kettle")
    assert [t["trace_id"] for t in traces] == ["price-kettle--rec0", "price-kettle--rec1"]
    trace = traces[0]
    assert trace["source"] == "recorded" and trace["task_id"] == "price-kettle" and trace["sample"] == 0
    assert trace["model"] == "fake" and trace["endpoint"] == fake.base_url
    assert trace["outcome"] == {"status": "answered", "error": None, "turns": 2}
    assert [m["role"] for m in trace["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert trace["messages"][3]["content"] == "No products match 'kettel'."
    assert trace["tool_errors"] == [] and trace["invalid_calls"] == []
    assert {t["function"]["name"] for t in trace["tools"]} >= {"search_products", "create_order"}
    assert trace["server_tools"] == trace["tools"] and trace["truncate"] == 4000
    for key in ("usage", "timings", "longest_tool_result", "spec_hash", "created"):
        assert key in trace


def test_edited_arguments_are_asked_again_until_the_schema_takes_them(workdir, fake):
    child = record(workdir, "price-kettle")
    child.expect(APPROVE)
    child.sendline("e")
    child.expect(r"new arguments \(JSON on one line; empty to go back\): ")
    child.sendline('{"q": "steel kettle"}')
    child.expect("invalid: arguments do not match the schema: 'query' is a required property")
    child.sendline("{not json")
    child.expect("invalid: arguments are not valid JSON")
    child.sendline('{"query": "steel kettle"}')
    child.expect("KB-03 Steel kettle")  # the edited call ran
    child.expect(ACCEPT)
    child.sendline("a")
    finish(child)
    [trace] = saved(workdir, "price-kettle")
    call = trace["messages"][2]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"query": "steel kettle"}  # as if the model wrote it
    assert "Steel kettle" in trace["messages"][3]["content"] and trace["tool_errors"] == []
    # The model was answered with the edited call's result.
    assert "Steel kettle" in tool_results(fake.requests[-1])[0]
    assert json.loads(fake.requests[-1]["messages"][2]["tool_calls"][0]["function"]["arguments"]) == {
        "query": "steel kettle"}


def test_a_skipped_call_answers_the_model_with_the_message_and_counts_as_a_tool_error(workdir, fake):
    child = record(workdir, "--prompt", "Order two wool blankets.", "--servers", "shop")
    child.expect("tool call: create_order")
    child.expect(APPROVE)
    child.sendline("s")
    child.expect(r"message for the model \(one line; empty to go back\): ")
    child.sendline("Do not order anything; ask me first.")
    child.expect("answer: I read: Do not order anything; ask me first.")
    child.expect(ACCEPT)
    child.sendline("u")  # the conversation goes on with a turn the person types
    child.expect("user: ")
    child.sendline("Fine, never mind.")
    child.expect("answer: You said: Fine, never mind.")
    child.expect(ACCEPT)
    child.sendline("a")
    child.expect("saved order-two-wool-blankets--rec0")
    child.expect("the task is not in tasks.yaml")
    finish(child)
    assert tool_results(fake.requests[1]) == ["Do not order anything; ask me first."]
    [trace] = saved(workdir, "order-two-wool-blankets")
    call_id = trace["messages"][2]["tool_calls"][0]["id"]
    assert trace["tool_errors"] == [call_id]
    assert trace["messages"][3] == {"role": "tool", "tool_call_id": call_id, "name": "create_order",
                                    "content": "Do not order anything; ask me first."}
    assert [m["content"] for m in trace["messages"] if m["role"] == "user"] == [
        "Order two wool blankets.", "Fine, never mind."]
    assert (workdir / "tasks.yaml").read_text() == TASKS


def test_a_multi_turn_task_sends_its_next_turn_and_the_answer_can_be_edited(workdir, fake):
    child = record(workdir, "kettle-italy", "--base-url", fake.base_url, "--model", "flagged")
    child.expect(APPROVE)
    child.sendline("a")
    child.expect("answer: I read: KB-03")
    child.expect("user: what would it cost to send one to italy")  # sent without asking
    child.expect("tool call: shipping_quote")
    child.expect(APPROVE)
    child.sendline("a")
    child.expect(ACCEPT)
    child.sendline("e")
    child.expect(r"new answer \(one line; empty to go back\): ")
    child.sendline("Shipping a kettle to Italy costs $12.00 and takes 4-6 days.")
    child.expect(ACCEPT)
    child.sendline("a")
    finish(child)
    [trace] = saved(workdir, "kettle-italy")
    assert trace["model"] == "flagged"
    assert [m["role"] for m in trace["messages"]] == [
        "system", "user", "assistant", "tool", "assistant", "user", "assistant", "tool", "assistant"]
    assert trace["messages"][-1]["content"] == "Shipping a kettle to Italy costs $12.00 and takes 4-6 days."
    assert "shipping $12.00" in trace["messages"][-2]["content"]
    assert len(fake.requests) == 4  # no request after the edit: the person wrote the answer


def new_task_until_its_check(workdir):
    """`record --prompt … --save-task`, the call approved and the answer accepted: asking for the check."""
    child = record(workdir, "--prompt", "How much is the garden hose?", "--servers", "shop", "--save-task")
    child.expect(APPROVE)
    child.sendline("a")
    child.expect(ACCEPT)
    child.sendline("a")
    child.expect(r"check \(one line of YAML")
    return child


def test_save_task_appends_it_with_the_typed_check_and_keeps_the_file_as_it_was(workdir, fake):
    child = new_task_until_its_check(workdir)
    child.sendline("{answer_contains: '19.99'}")
    child.expect(r"tasks.yaml: task 'how-much-is-the-garden-hose': check: unknown check kind 'answer_contains'")
    child.sendline("{contains: '19.99', tool_called: search_products}")
    child.expect("saved how-much-is-the-garden-hose--rec0")
    child.expect("added task 'how-much-is-the-garden-hose' to tasks.yaml")
    finish(child)
    text = (workdir / "tasks.yaml").read_text()
    before, after = text.split("# end of the task list\n")
    assert before.startswith(TASKS.split("# end of the task list\n")[0].rstrip("\n"))
    assert after == ""  # the comment after the list stays after it
    assert "# the demo server" in text and "# one question" in text
    task = load_tasks(workdir / "tasks.yaml").tasks["how-much-is-the-garden-hose"]
    assert task == {"id": "how-much-is-the-garden-hose", "split": "train", "prompt": ["How much is the garden hose?"],
                    "servers": ["shop"], "check": {"contains": "19.99", "tool_called": "search_products"}}
    [trace] = saved(workdir, "how-much-is-the-garden-hose")
    assert "Garden hose" in trace["messages"][3]["content"]
    taskfile = load_tasks(workdir / "tasks.yaml")
    assert trace["spec_hash"] == task_hash(task, taskfile.servers, taskfile.system_prompt)  # as collect's


def test_a_task_saved_without_a_check_is_curated_by_its_other_filters(workdir):
    child = new_task_until_its_check(workdir)
    child.sendline("")
    child.expect("saved how-much-is-the-garden-hose--rec0")
    child.expect("added task 'how-much-is-the-garden-hose' to tasks.yaml")
    finish(child)
    task = load_tasks(workdir / "tasks.yaml").tasks["how-much-is-the-garden-hose"]
    assert "check" not in task and task["split"] == "train"
    path = workdir / "data/traces/recorded/how-much-is-the-garden-hose.jsonl"
    kept, _ = curate_task("how-much-is-the-garden-hose", path, check=None)
    assert [t["trace_id"] for t in kept] == ["how-much-is-the-garden-hose--rec0"]


@pytest.mark.parametrize("text, expected_tail", [
    # A list at column 0 followed by another key; the last task ends in a block scalar.
    ("tasks:\n- id: a\n  prompt: |\n    two\n    lines\n  servers: [s]\n  check: {contains: x}  # c\n"
     "servers:\n  s: {command: python}\n",
     "  check: {contains: x}  # c\n\n- id: new\n  prompt: hi\n  servers: [s]\n  check: {contains: y}\n"
     "servers:\n  s: {command: python}\n"),
    ("servers:\n  s: {command: python}\ntasks:\n    - id: a\n      servers: [s]\n      check: {contains: x}\n"
     "      prompt: >-\n        folded\n\n# trailing\n",
     "        folded\n\n    - id: new\n      prompt: hi\n      servers: [s]\n      check: {contains: y}\n\n# trailing\n"),
])
def test_a_saved_task_goes_at_the_end_of_the_tasks_list_as_a_block(tmp_path, text, expected_tail):
    from tracetune.record import task_file_with

    path = tmp_path / "tasks.yaml"
    path.write_text(text)
    new = task_file_with(str(path), {"id": "new", "prompt": ["hi"], "servers": ["s"], "check": {"contains": "y"}})
    assert new.endswith(expected_tail) and new.startswith(text[:text.index("check: {contains: x}")])
    path.write_text(new)
    assert list(load_tasks(path).tasks) == ["a", "new"]


@pytest.mark.parametrize("where", ["tool call", "model request", "check"])
def test_ctrl_c_leaves_no_file_behind(workdir, fake, where):
    args = ["--prompt", "How much is the garden hose?", "--servers", "shop", "--save-task"]
    child = record(workdir, *args)
    if where == "model request":
        fake.latency_s = 5  # Ctrl-C while the model is thinking
        child.expect("user: How much is the garden hose?")
    else:
        child.expect(APPROVE)
    if where == "check":
        child.sendline("a")
        child.expect(ACCEPT)
        child.sendline("a")
        child.expect(r"check \(one line of YAML")
    child.sendintr()
    child.expect("tracetune: interrupted: nothing saved")
    finish(child, 130)
    assert not (workdir / "data").exists()
    assert (workdir / "tasks.yaml").read_text() == TASKS
    assert leftovers(workdir) == []


def test_stop_saves_nothing(workdir):
    child = record(workdir, "price-kettle")
    child.expect(APPROVE)
    child.sendline("a")
    child.expect(ACCEPT)
    child.sendline("q")
    child.expect("tracetune: stopped: nothing saved")
    finish(child, 1)
    assert not (workdir / "data").exists()


@pytest.mark.parametrize("args, message", [
    (["price-kettel"], "tasks.yaml: no task 'price-kettel' (did you mean price-kettle?)"),
    (["--prompt", "hi", "--servers", "shop,mall"], "--servers: unknown server 'mall' (known in tasks.yaml: shop)"),
    (["--prompt", "How much does the steel kettle cost?", "--servers", "shop", "--task-id", "price-kettle"],
     "tasks.yaml: task 'price-kettle' exists already"),
    (["price-kettle", "--servers", "shop"], "record: --servers, --tools, --task-id and --save-task describe a new task"),
    (["price-kettle", "--config", "none.yaml"], "none.yaml: file not found"),
])
def test_bad_input_is_one_line_before_anything_starts(workdir, args, message):
    child = record(workdir, *args)
    output = finish(child, 1).strip()
    assert output.startswith(f"tracetune: {message}") and "\n" not in output


def test_an_allowlist_naming_a_tool_the_servers_lack_is_one_line(workdir):
    child = record(workdir, "--prompt", "hi", "--servers", "shop", "--tools", "search_products,fly")
    child.expect(r"recording 'hi' .*\r\n")  # known once the servers run
    assert finish(child, 1).strip() == "tracetune: task 'hi': tools allowlist names tools no server offers: fly"


def test_no_endpoint_is_one_line(workdir):
    (workdir / "config.yaml").write_text("tasks: tasks.yaml\nbase_model: bundled:smollm2-135m\n")
    child = record(workdir, "price-kettle")
    assert finish(child, 1).strip() == (
        "tracetune: no endpoint: set endpoint.base_url in the config, or give --base-url or --model-dir")


def processes_serving(path) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(path).encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            pass  # ended meanwhile
    return pids


@pytest.mark.slow
def test_model_dir_is_served_for_the_session_and_stopped_after(workdir, bundled_gguf_model):
    """Whatever the small model does, approving and accepting ends in a saved trace (or a model
    that never finishes), and its server is gone afterwards."""
    (workdir / "config.yaml").write_text("tasks: tasks.yaml\nbase_model: bundled:smollm2-135m\n")
    child = record(workdir, "price-kettle", "--model-dir", str(bundled_gguf_model))
    child.timeout = 300
    child.expect(f"recording 'price-kettle' with {bundled_gguf_model} at http://127.0.0.1:")
    while child.expect([APPROVE, ACCEPT, pexpect.EOF]) != 2:
        child.sendline("a")
    child.close()
    assert "saved price-kettle--rec0" in child.before or "the model did not finish" in child.before
    assert processes_serving(bundled_gguf_model) == []
