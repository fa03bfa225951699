"""The rl stage: GRPO through TRL on live MCP servers, rewards from the tasks' own checks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tracetune.config import load_tasks
from tracetune.trace import validate_trace
from tracetune.jsonio import InputError
from tracetune.rl import reward, rl_tasks, rollout_trace, tool_method

ROOT = Path(__file__).resolve().parents[1]
SHOP = {"command": sys.executable, "args": ["-m", "tracetune.servers.shop"]}
TASKS = {
    "servers": {"shop": SHOP},
    "tasks": [
        {"id": "stock-teapot", "prompt": "Is the ceramic teapot in stock?", "servers": ["shop"],
         "check": {"contains": "out of stock", "tool_called": "check_stock"}},
        {"id": "never", "prompt": "Is the ceramic teapot in stock?", "servers": ["shop"],
         "check": {"contains": "a phrase the script never says"}},
        {"id": "two-turns", "prompt": ["Hi", "Bye"], "servers": ["shop"], "check": {"contains": "x"}},
        {"id": "unchecked", "prompt": "Hello", "servers": ["shop"]},
        {"id": "held-out", "prompt": "Is the kettle in stock?", "servers": ["shop"], "split": "eval",
         "check": {"contains": "kettle"}},
    ],
}
CALL = {"name": "check_stock", "arguments": {"sku": "KB-04"}}
ANSWER = "Sorry, the ceramic teapot is out of stock everywhere."


@pytest.fixture
def taskfile(tmp_path):
    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump(TASKS, sort_keys=False))
    return load_tasks(path)


def test_only_train_tasks_with_a_check_and_one_turn_are_rolled_out(taskfile):
    assert [t["id"] for t in rl_tasks(taskfile, {"tasks": []})] == ["stock-teapot", "never"]
    for task_id, why in [("held-out", "an eval task never reaches training"),
                         ("two-turns", "rl needs a check and a single user turn"),
                         ("unchecked", "rl needs a check and a single user turn"),
                         ("nope", "not a task of")]:
        with pytest.raises(InputError, match=f"config.yaml: rl.tasks: '{task_id}': {why}"):
            rl_tasks(taskfile, {"tasks": [task_id]})


def test_no_task_to_earn_rewards_on_is_one_line(tmp_path):
    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump({"servers": {"shop": SHOP}, "tasks": [TASKS["tasks"][3], TASKS["tasks"][4]]}))
    with pytest.raises(InputError, match="^config.yaml: rl: no train task has a check"):
        rl_tasks(load_tasks(path), {"tasks": []})


def test_a_tool_is_offered_with_its_mcp_schema():
    from transformers.utils import get_json_schema

    tool = {"type": "function", "function": {
        "name": "shipping_quote", "description": "Shipping cost\n  and days.",
        "parameters": {"type": "object", "required": ["sku", "country"], "properties": {
            "sku": {"type": "string", "description": "product SKU"},
            "country": {"type": "string", "description": "destination", "enum": ["UK", "FR"]},
            "quantity": {"type": "integer", "description": "how many"}}}}}
    schema = get_json_schema(tool_method(tool))
    assert schema["function"]["name"] == "shipping_quote"
    assert schema["function"]["description"] == "Shipping cost and days."
    assert schema["function"]["parameters"]["required"] == ["sku", "country"]
    properties = schema["function"]["parameters"]["properties"]
    assert properties["country"] == {"type": "string", "description": "destination", "enum": ["UK", "FR"]}
    assert properties["quantity"]["type"] == "integer"


def test_an_environment_calls_the_live_servers_fresh_per_rollout_and_checks_calls(taskfile):
    from tracetune.rl import environments

    [env_class] = environments(taskfile, rl_tasks(taskfile, {"tasks": []}), 4000, 30).values()
    env = env_class()
    try:
        env.reset(task_id="stock-teapot")
        assert "Leeds 0" in env.check_stock(sku="KB-04")
        assert env.check_stock(sku=4).startswith("Error: arguments do not match the schema")
        assert [r["error"] for r in env.results] == [False, True]
        env.reset(task_id="stock-teapot")
        assert env.results == []
    finally:
        env_class.close_all()


def test_a_rollout_is_a_raw_trace_with_its_reward(taskfile):
    task = taskfile.tasks["stock-teapot"]
    prompt = [{"role": "user", "content": task["prompt"][0]}]
    completion = [
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]},
        {"role": "tool", "name": "check_stock", "content": "KB-04 Ceramic teapot: Leeds 0 (total 0)."},
        {"role": "assistant", "content": ANSWER},
    ]
    results = [{"name": "check_stock", "arguments": CALL["arguments"], "error": False,
                "content": "KB-04 Ceramic teapot: Leeds 0 (total 0)."}]
    trace = rollout_trace(prompt, completion, results, task, taskfile, [], trace_id="stock-teapot--rl1-0", model="m",
                          truncate=4000)
    validate_trace(trace, "rollout")
    assert trace["messages"][1]["tool_calls"][0] == {"id": "call_0", "type": "function", "function": {
        "name": "check_stock", "arguments": '{"sku": "KB-04"}'}}
    assert trace["messages"][2]["tool_call_id"] == "call_0" and trace["outcome"]["status"] == "answered"
    weights = {"check": 1.0, "valid_calls": 0.5, "recovered_errors": 0.0, "turns": 0.1}
    total, parts = reward(trace, task["check"], weights)
    assert parts["check"] == 1.0 and parts["turns"] == -1 and total == pytest.approx(1.0 + 0.0 - 0.1)
    # offered no tools, the call is invalid: the valid-calls term says so
    assert parts["valid_calls"] == 0.0



def test_a_server_that_cannot_start_fails_the_rollout_not_the_model(taskfile):
    from tracetune.rl import environment_class

    dead = {"shop": {"command": sys.executable, "args": ["-c", "raise SystemExit(3)"]}}
    tools = [{"type": "function", "function": {"name": "check_stock", "parameters": {
        "type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]}}}]
    env_class = environment_class("shop", dead, tools, 4000, 5)
    env = env_class()
    try:
        env.reset(task_id="stock-teapot")
        assert env.check_stock(sku="KB-04").startswith("Error: the tool's server could not start")
        assert [(r["error"], r["unavailable"]) for r in env.results] == [(True, True)]
    finally:
        env_class.close_all()
    task = taskfile.tasks["stock-teapot"]
    completion = [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]},
                  {"role": "tool", "name": "check_stock", "content": env.results[0]["content"]},
                  {"role": "assistant", "content": ANSWER}]
    trace = rollout_trace([{"role": "user", "content": task["prompt"][0]}], completion, env.results, task, taskfile,
                          tools, trace_id="stock-teapot--rl1-0", model="m", truncate=4000)
    validate_trace(trace, "rollout")
    assert trace["outcome"]["status"] == "error" and "could not start" in trace["outcome"]["error"]


@pytest.mark.parametrize("dead, fails", [(1, False), (3, True)])
def test_a_step_over_its_error_budget_fails_before_it_trains(taskfile, tmp_path, dead, fails):
    from types import SimpleNamespace

    from tracetune.rl import RolloutLog

    task = taskfile.tasks["stock-teapot"]
    ok = {"name": "check_stock", "arguments": CALL["arguments"], "error": False, "unavailable": False,
          "content": "KB-04 Ceramic teapot: Leeds 0 (total 0)."}
    gone = ok | {"error": True, "unavailable": True, "content": "Error: MCP server 'shop' is not responding."}
    envs = [SimpleNamespace(results=[gone if i < dead else ok], tools=[]) for i in range(4)]
    completions = [[{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]},
                    {"role": "tool", "name": "check_stock", "content": env.results[0]["content"]},
                    {"role": "assistant", "content": ANSWER}] for env in envs]
    prompts = [[{"role": "user", "content": task["prompt"][0]}]] * 4
    log = RolloutLog({"stock-teapot": task}, taskfile, {"check": 1.0, "valid_calls": 0.0, "recovered_errors": 0.0,
                                                         "turns": 0.0}, tmp_path, "lora-rl", 4000, max_error_rate=0.5)
    if fails:
        with pytest.raises(RuntimeError, match=r"^rl step 1 failed: 3/4 traces ended in an error "
                                               r"\(more than rl.max_error_rate=0.5\); first: Error: MCP server 'shop'"):
            log(prompts, completions, envs, ["stock-teapot"] * 4)
    else:
        # under budget the step trains; the failed rollout earns nothing (its check fails on the error)
        assert log(prompts, completions, envs, ["stock-teapot"] * 4) == [0.0, 1.0, 1.0, 1.0]
    assert len((tmp_path / "step-00001.jsonl").read_text().splitlines()) == 4  # the step's rollouts stay for reading

def rl_settings(**overrides) -> dict:
    return {"tasks": ["stock-teapot", "never"], "group_size": 2, "tasks_per_step": 2, "max_steps": 2,
            "max_completion_length": 96, "max_tool_calls": 2, "save_steps": 1, "learning_rate": 1e-3} | overrides


@pytest.mark.slow
def test_grpo_steps_with_a_scripted_policy_earn_the_known_rewards_on_model_tokens(taskfile, tiny_base, tmp_path,
                                                                                  monkeypatch):
    from fakes import scripted_generation
    from trl import GRPOTrainer

    from tracetune.rl import run_rl

    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", scripted_generation(CALL, ANSWER, "(total 0)"))
    masks = []
    score = GRPOTrainer._generate_and_score_completions

    def recorded(self, inputs):
        out = score(self, inputs)
        masks.append((out["completion_ids"], out["tool_mask"], out["completion_mask"]))
        return out

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", recorded)
    summary = run_rl(taskfile, tiny_base, None, tmp_path / "adapter", tmp_path / "state", rl_settings())

    assert summary["steps"] == 2 and summary["init"] == "base"
    curve = [json.loads(line) for line in (tmp_path / "adapter" / "metrics.jsonl").read_text().splitlines()]
    assert [c["reward"] for c in curve] == [0.5, 0.5]  # stock-teapot passes, `never` cannot
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    for step in (1, 2):
        lines = (tmp_path / "state" / "rollouts" / f"step-{step:05d}.jsonl").read_text().splitlines()
        traces = [json.loads(line) for line in lines]
        assert len(traces) == 4
        for trace in traces:
            validate_trace(trace, "rollout")
            assert trace["source"] == "rl" and trace["messages"][-1]["content"] == ANSWER
            assert "Leeds 0, Bristol 0, Glasgow 0" in trace["messages"][-2]["content"]  # the live server's answer
            assert trace["reward"] == (1.0 if trace["task_id"] == "stock-teapot" else 0.0)

    # The loss sees the model's tokens only: the tool result's tokens (and the template around
    # them) are masked out, the call and the answer are in.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    completion_ids, tool_mask, completion_mask = masks[0]
    ids, mask = completion_ids[0].tolist(), tool_mask[0].tolist()
    model_text = tokenizer.decode([t for t, m, c in zip(ids, mask, completion_mask[0].tolist()) if m and c])
    masked_text = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert '"check_stock"' in model_text and ANSWER in model_text and "Leeds" not in model_text
    assert "Leeds 0, Bristol 0, Glasgow 0" in masked_text and ANSWER not in masked_text


RUN = """
import sys
sys.path.insert(0, {tests!r})
from fakes import scripted_generation
from trl import GRPOTrainer
from tracetune.config import load_tasks
from tracetune.rl import run_rl
from test_rl import CALL, ANSWER, rl_settings
GRPOTrainer._generate_single_turn = scripted_generation(CALL, ANSWER, "(total 0)")
print(run_rl(load_tasks({tasks!r}), {tiny_base!r}, None, {adapter!r}, {state!r}, rl_settings(max_steps=5)))
"""


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint(taskfile, tiny_base, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN.format(tests=str(Path(__file__).parent), tasks=taskfile.path, tiny_base=str(tiny_base),
                                 adapter=str(tmp_path / "adapter"), state=str(tmp_path / "state")))
    checkpoints = tmp_path / "state" / "checkpoints"
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not (checkpoints / "checkpoint-2" / "trainer_state.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "adapter").exists()

    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = eval(out.stdout.strip().splitlines()[-1])  # the dict run_rl returned, printed
    assert summary["steps"] == 5 and summary["resumed_from"].endswith(("checkpoint-2", "checkpoint-3"))
    steps = sorted(p.name for p in (tmp_path / "state" / "rollouts").glob("step-*.jsonl"))
    assert steps == [f"step-{n:05d}.jsonl" for n in range(1, 6)]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_rl_calls_tools_with_the_users_tool_timeout(taskfile, tiny_base, tmp_path, monkeypatch):
    """collect.tool_timeout_s as configured, not the schema's default (rules/scripts/grpo.py passes it)."""
    import tracetune.rl
    from tracetune.rl import run_rl

    seen = []

    def stop(taskfile, tasks, truncate, tool_timeout_s):
        seen.append(tool_timeout_s)
        raise RuntimeError("stopped before any rollout")

    monkeypatch.setattr(tracetune.rl, "environments", stop)
    with pytest.raises(RuntimeError, match="stopped before any rollout"):
        run_rl(taskfile, tiny_base, None, tmp_path / "adapter", tmp_path / "state", rl_settings(), tool_timeout_s=7)
    assert seen == [7]
