"""Reinforcement learning on the tasks' own checks: GRPO on LoRA through TRL's GRPOTrainer.

Each rollout drives its task's live MCP servers, started fresh for it like a collected trace
(TRL's `environment_factory`: one environment per rollout, its public methods the tools, `reset`
per rollout). The reward is the task's check (tracetune.checks.verdict) plus optional shaping from
the definitions curation uses: valid tool calls (tracetune.parsing's rule), tool errors recovered
from, fewer turns. TRL masks tool results out of the loss; only the model's own tokens are trained.

Every rollout is saved in the raw-trace format, with its reward, under
`data/rl/{run}/rollouts/step-{n}.jsonl`, so curation, review and the report can read it. Checkpoints
live beside them; a killed run resumes from the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import json
import logging
import math
import os
import random
import threading
import time
from pathlib import Path

from tracetune.checks import verdict
from tracetune.config import TaskFile, checked_train_tasks, section_settings
from tracetune.curate import invalid_tool_call, unrecovered_tool_errors
from tracetune.jsonio import InputError, atomic_dir, write_json, write_jsonl
from tracetune.parsing import tool_call_problem, tool_schemas
from tracetune.runtime.settings import split_settings
from tracetune.trace import check_error_budget, trace_header, trace_outcome, validate_trace

log = logging.getLogger(__name__)


def rl_tasks(taskfile: TaskFile, settings: dict) -> list[dict]:
    """The tasks RL trains on: train tasks with a check and one user turn (TRL's rollouts answer one
    prompt), the configured ones or all such. Eval tasks never reach RL."""
    return checked_train_tasks(taskfile, settings["tasks"], "rl", single_turn=True)


# --- the task's servers, as an environment TRL calls ----------------------------------------------

class _Loop:
    """One event loop in a daemon thread for every environment's servers: TRL calls tools from
    its own thread, and an MCP session must live in the loop (and task) it was opened in."""

    _loop: asyncio.AbstractEventLoop | None = None
    _lock = threading.Lock()

    @classmethod
    def run(cls, coroutine, timeout: float | None = None):
        with cls._lock:
            if cls._loop is None:
                cls._loop = asyncio.new_event_loop()
                threading.Thread(target=cls._loop.run_forever, name="tracetune-rl-servers", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coroutine, cls._loop).result(timeout)


class Servers:
    """A task's MCP servers in one task of the shared loop: opened, called and closed there (an
    MCP session's task group must be left in the task that entered it)."""

    def __init__(self, specs: dict[str, dict], truncate: int, tool_timeout_s: float):
        self.requests: asyncio.Queue | None = None
        self.tool_timeout_s = tool_timeout_s
        self.ready = _Loop.run(self._start(specs, truncate, tool_timeout_s))

    async def _start(self, specs, truncate, tool_timeout_s) -> asyncio.Future:
        from tracetune.mcp_client import ToolBox

        self.requests = asyncio.Queue()
        started = asyncio.get_running_loop().create_future()

        async def serve():
            try:
                async with ToolBox(specs, truncate=truncate, tool_timeout_s=tool_timeout_s) as box:
                    started.set_result(box)
                    while (request := await self.requests.get()) is not None:
                        name, arguments, reply = request
                        try:
                            reply.set_result(await box.call(name, arguments))
                        except Exception as e:  # a call that fails is the model's tool error, not the run's
                            reply.set_exception(e)
            except Exception as e:
                if not started.done():
                    started.set_exception(e)

        self.task = asyncio.get_running_loop().create_task(serve())
        return started

    def box(self):
        return _Loop.run(asyncio.wait_for(asyncio.shield(self.ready), 120))

    def call(self, name: str, arguments: dict):
        async def ask():
            reply = asyncio.get_running_loop().create_future()
            await self.requests.put((name, arguments, reply))
            return await reply
        # The ToolBox bounds each call; this bounds a session that died with the call queued.
        return _Loop.run(ask(), timeout=2 * self.tool_timeout_s + 30)

    def close(self) -> None:
        async def stop():
            await self.requests.put(None)
            with contextlib.suppress(Exception):
                await self.task
        _Loop.run(stop(), timeout=60)


JSON_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool, "array": list, "object": dict}


def tool_method(tool: dict):
    """A method TRL offers the model and calls: its signature and Google-style docstring carry the
    MCP tool's schema (transformers.get_json_schema reads the tool list from them)."""
    function = tool["function"]
    name, parameters = function["name"], function.get("parameters") or {}

    def method(self, **arguments):
        return self._call(name, arguments)

    required = set(parameters.get("required") or [])
    signature, docs = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)], []
    for argument, schema in (parameters.get("properties") or {}).items():
        if not argument.isidentifier():
            raise InputError(f"tool {name!r}: argument {argument!r}: RL offers tools as Python functions, "
                             "whose arguments must be identifiers")
        kind = JSON_TYPES.get(schema.get("type"), str)
        optional = argument not in required
        signature.append(inspect.Parameter(argument, inspect.Parameter.KEYWORD_ONLY,
                                           default=None if optional else inspect.Parameter.empty,
                                           annotation=kind | None if optional else kind))
        text = " ".join((schema.get("description") or argument).split())
        choices = f" (choices: {json.dumps(schema['enum'])})" if schema.get("enum") else ""
        docs.append(f"    {argument}: {text}{choices}")
    method.__name__ = method.__qualname__ = name
    method.__signature__ = inspect.Signature(signature)
    method.__annotations__ = {p.name: p.annotation for p in signature[1:]}
    description = " ".join((function.get("description") or name).split())
    method.__doc__ = f"{description}\n\nArgs:\n" + "\n".join(docs) + "\n" if docs else description
    return method


class TaskEnvironment:
    """One rollout's tools: `reset` starts the row's task's servers fresh (stateful tools, like
    orders, start from the same state every rollout); each call is checked first, as the agent
    checks it, and recorded for the reward and the saved trace."""

    specs: dict[str, dict] = {}
    tools: list[dict] = []
    truncate: int = 4000
    tool_timeout_s: float = 30.0

    _live: set[TaskEnvironment] = set()  # whose servers run: closed when training ends

    def __init__(self):
        self._servers: Servers | None = None
        self._schemas = tool_schemas(self.tools)
        self.results: list[dict] = []  # per call: name, arguments, error and unavailable (bools), content

    def reset(self, **row) -> None:
        self._close()
        self._servers = Servers(self.specs, self.truncate, self.tool_timeout_s)
        TaskEnvironment._live.add(self)
        self.results = []

    def _close(self) -> None:
        if self._servers is not None:
            self._servers.close()
            self._servers = None
        TaskEnvironment._live.discard(self)

    @classmethod
    def close_all(cls) -> None:
        for environment in list(cls._live):
            environment._close()

    def _call(self, name: str, arguments: dict) -> str:
        problem = tool_call_problem({"name": name, "arguments": arguments}, self._schemas)
        unavailable = False
        if problem is not None:
            content, error = f"Error: {problem.message}", True
        else:
            try:
                self._servers.box()
            except Exception as e:  # ServerStartError, or no start within its deadline
                content, error, unavailable = f"Error: the tool's server could not start ({e}).", True, True
            else:
                result = self._servers.call(name, arguments)
                content, error, unavailable = result.content, result.is_error, result.unavailable
        self.results.append({"name": name, "arguments": arguments, "error": error, "unavailable": unavailable,
                             "content": content})
        return content


def environment_class(name: str, specs: dict[str, dict], tools: list[dict], truncate: int,
                      tool_timeout_s: float) -> type:
    """A TaskEnvironment whose methods are the tools of one set of servers."""
    methods = {t["function"]["name"]: tool_method(t) for t in tools}
    clash = set(methods) & set(dir(TaskEnvironment))
    if clash:
        raise InputError(f"servers {name}: tool {sorted(clash)[0]!r} clashes with the environment's own method")
    return type(f"Env_{name}", (TaskEnvironment,), {
        **methods, "specs": specs, "tools": tools, "truncate": truncate, "tool_timeout_s": tool_timeout_s})


def servers_key(task: dict) -> str:
    return "+".join(task["servers"])


async def _list_tools(specs: dict[str, dict], servers: list[str]) -> list[dict]:
    from tracetune.mcp_client import ToolBox

    async with ToolBox(specs) as box:
        return box.openai_tools(servers)


def environments(taskfile: TaskFile, tasks: list[dict], truncate: int, tool_timeout_s: float) -> dict[str, type]:
    """One environment class per set of servers the tasks use, offering every tool of them (as
    the generalization work's evaluation does: RL must choose among all of them)."""
    classes = {}
    for task in tasks:
        key = servers_key(task)
        if key not in classes:
            specs = {s: taskfile.servers[s] for s in task["servers"]}
            tools = asyncio.run(_list_tools(specs, task["servers"]))
            classes[key] = environment_class(key, specs, tools, truncate, tool_timeout_s)
    return classes


# --- rollouts as traces, and their reward ---------------------------------------------------------

def rollout_trace(prompt: list[dict], completion: list[dict], results: list[dict], task: dict,
                  taskfile: TaskFile, tools: list[dict], *, trace_id: str, model: str, truncate: int) -> dict:
    """A rollout in the raw-trace format, with collection's header: TRL's messages (calls with
    dict arguments, tool messages without ids) given the ids and JSON arguments collected traces have."""
    messages, errors, call_ids, n = [dict(m) for m in prompt], [], [], 0
    unmatched = list(results)  # the environment's record of each call it ran, in order
    for message in completion:
        message = dict(message)
        if message.get("role") == "assistant" and message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = call.get("function") or {}
                arguments = function.get("arguments")
                calls.append({"id": f"call_{n}", "type": "function", "function": {
                    "name": function.get("name", ""),
                    "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)}})
                call_ids.append(f"call_{n}")
                n += 1
            message["tool_calls"] = calls
        elif message.get("role") == "tool":
            call_id = call_ids.pop(0) if call_ids else f"call_{n}"
            message = {"role": "tool", "tool_call_id": call_id, "name": message.get("name", ""),
                       "content": str(message.get("content", ""))}
            result = next((r for r in unmatched if (r["name"], r["content"]) == (message["name"], message["content"])),
                          None)
            if result is not None:
                unmatched.remove(result)
            if result is None or result["error"]:  # not run by the environment: TRL's own error (unknown tool)
                errors.append(call_id)
        messages.append(message)
    # A server that did not answer failed the rollout, not the model: an error, counted against rl.max_error_rate.
    failed = next((r["content"] for r in results if r.get("unavailable")), None)
    header = trace_header(task, taskfile, truncate, None, None, trace_id=trace_id, sample=0, source="rl")
    return header | {
        "model": model, "tools": tools, "server_tools": tools, "messages": messages, "tool_errors": errors,
        "invalid_calls": [], "outcome": trace_outcome(messages, error=failed),
    }


def reward(trace: dict, check: dict, weights: dict) -> tuple[float, dict]:
    """The rollout's reward and its parts: the check's verdict, and the shaping terms."""
    judged = verdict(check, trace)
    parts = {
        "check": float(judged["passed"]),
        "valid_calls": float(invalid_tool_call(trace) is None),
        "recovered_errors": float(not unrecovered_tool_errors(trace)),
        "turns": -max(0, trace["outcome"]["turns"] - 1),
    }
    total = sum(weights[k] * v for k, v in parts.items())
    return total, parts | {"detail": judged.get("detail", "")}


class RolloutLog:
    """The reward function TRL calls once per generation batch: it scores every rollout and saves
    them, with their reward, as data/rl/{run}/rollouts/step-{n}.jsonl (a resumed run rewrites the
    steps after its checkpoint, whole)."""

    __name__ = "check_reward"  # TRL logs each reward function under its name

    def __init__(self, tasks: dict[str, dict], taskfile: TaskFile, weights: dict, out_dir: Path, model: str,
                 truncate: int, max_error_rate: float = 0.5):
        self.tasks, self.taskfile, self.weights, self.out_dir, self.model = tasks, taskfile, weights, out_dir, model
        self.truncate, self.max_error_rate = truncate, max_error_rate
        self.curve: list[dict] = []

    def __call__(self, prompts, completions, environments, task_id, trainer_state=None, **_) -> list[float]:
        step = (trainer_state.global_step if trainer_state is not None else len(self.curve)) + 1
        traces, rewards = [], []
        for i, (prompt, completion, env, task) in enumerate(zip(prompts, completions, environments, task_id)):
            trace = rollout_trace(prompt, completion, env.results, self.tasks[task], self.taskfile, env.tools,
                                  trace_id=f"{task}--rl{step}-{i}", model=self.model, truncate=self.truncate)
            total, parts = reward(trace, self.tasks[task]["check"], self.weights)
            trace["reward"], trace["check"] = total, {"passed": bool(parts["check"]), "detail": parts["detail"]}
            trace["reward_parts"] = {k: v for k, v in parts.items() if k != "detail"}
            validate_trace(trace, f"rollout {trace['trace_id']}")
            traces.append(trace)
            rewards.append(total)
        write_jsonl(self.out_dir / f"step-{step:05d}.jsonl", traces)
        # Before the step's update: a dead server's batch never trains the policy (a rerun resumes).
        check_error_budget(traces, self.max_error_rate, f"rl step {step}", "rl.max_error_rate")
        self.curve.append({"step": step, "reward": sum(rewards) / len(rewards),
                           "passed": sum(t["check"]["passed"] for t in traces) / len(traces)})
        return rewards


# --- the run -------------------------------------------------------------------------------------

def task_rows(tasks: list[dict], system_prompt: str | None, n: int, seed: int) -> list[dict]:
    """`n` prompts, the tasks in a seeded order, again and again: what GRPO samples groups for."""
    rng, rows = random.Random(seed), []
    while len(rows) < n:
        order = list(tasks)
        rng.shuffle(order)
        rows += [{"prompt": ([{"role": "system", "content": system_prompt}] if system_prompt else [])
                  + [{"role": "user", "content": t["prompt"][0]}],
                  "environment": servers_key(t), "task_id": t["id"]} for t in order]
    return rows[:n]


def run_rl(taskfile: TaskFile, base_model: str | os.PathLike, init_adapter: str | os.PathLike | None,
           out_dir: str | os.PathLike, state_dir: str | os.PathLike, settings: dict | None = None, *,
           train_settings: dict | None = None, truncate: int = 4000, system_prompt: bool = False,
           tool_timeout_s: float | None = None) -> dict:
    """GRPO from `init_adapter` (None: a fresh LoRA of `train_settings`' shape) into the adapter
    `out_dir`; rollouts and checkpoints in `state_dir` (a killed run resumes there). The prompts
    carry the task file's system prompt only with `system_prompt`, as SFT rows and evaluation do.
    `tool_timeout_s` is collect.tool_timeout_s (None: its default)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory is experimental: we know
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from tracetune.models import check_model_dir, mixed_precision
    from tracetune.train import last_checkpoint, plot_metric, prepare_checkpoint_dir

    settings = section_settings("rl", settings)
    train_settings = section_settings("train", train_settings)
    base_model = check_model_dir(base_model, "base model")
    tasks = rl_tasks(taskfile, settings)
    if tool_timeout_s is None:
        tool_timeout_s = section_settings("collect")["tool_timeout_s"]
    envs = environments(taskfile, tasks, truncate, tool_timeout_s)
    out_dir, state_dir = Path(out_dir), Path(state_dir)
    prepare_checkpoint_dir(state_dir, rl_fingerprint(settings, tasks, base_model, init_adapter, truncate, system_prompt))
    resume_from = last_checkpoint(state_dir / "checkpoints")

    tokenizer = AutoTokenizer.from_pretrained(base_model, padding_side="left")
    batch = settings["group_size"] * settings["tasks_per_step"]
    micro = math.gcd(settings["micro_batch"], batch)
    from datasets import Dataset

    rows = Dataset.from_list(task_rows(tasks, taskfile.system_prompt if system_prompt else None,
                                       settings["tasks_per_step"] * settings["max_steps"], settings["seed"]))
    rewards = RolloutLog({t["id"]: t for t in tasks}, taskfile, settings["reward"], state_dir / "rollouts", out_dir.name,
                         truncate, settings["max_error_rate"])
    import torch

    cuda = torch.cuda.is_available()
    vllm = cuda and settings["vllm"] and importlib.util.find_spec("vllm") is not None
    if cuda and settings["vllm"] and not vllm:
        log.warning("rl.vllm: vllm is not installed (pip install vllm): generating with transformers instead")
    args = GRPOConfig(
        output_dir=str(state_dir / "checkpoints"), max_steps=settings["max_steps"],
        # One update per step over all its rollouts, computed `micro` rollouts at a time: the memory
        # of a forward and backward pass grows with the rollouts in it (TRL scales the loss to match).
        learning_rate=settings["learning_rate"], per_device_train_batch_size=micro,
        gradient_accumulation_steps=batch // micro,
        num_generations=settings["group_size"], max_completion_length=settings["max_completion_length"],
        temperature=settings["temperature"], max_tool_calling_iterations=settings["max_tool_calls"],
        beta=settings["beta"], seed=settings["seed"], logging_steps=1, save_steps=settings["save_steps"],
        save_strategy="steps", report_to=[], use_cpu=not cuda, **mixed_precision("cuda" if cuda else "cpu"),
        use_vllm=vllm, vllm_mode="colocate", shuffle_dataset=False, disable_tqdm=True,
        gradient_checkpointing=train_settings["gradient_checkpointing"],
        save_total_limit=train_settings["save_total_limit"],
    )
    from tracetune.backends.peft_lora import load_lora_model

    policy, _ = load_lora_model(base_model, train_settings, init_adapter and Path(init_adapter))
    trainer = GRPOTrainer(model=policy,
                          reward_funcs=[rewards], args=args, train_dataset=rows, processing_class=tokenizer,
                          environment_factory=dict(envs))
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    finally:
        TaskEnvironment.close_all()
    wall_s = time.perf_counter() - started
    curve = [{"step": e["step"], "reward": e["reward"], "loss": e.get("loss")}
             for e in trainer.state.log_history if "reward" in e]
    summary = {"tasks": len(tasks), "steps": trainer.state.global_step, "rollouts_per_step": batch,
               "resumed_from": resume_from, "wall_s": wall_s, "device": "cuda" if cuda else "cpu",
               "init": "sft" if init_adapter else "base", "first_reward": curve[0]["reward"] if curve else None,
               "final_reward": curve[-1]["reward"] if curve else None}
    with atomic_dir(out_dir) as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_jsonl(tmp / "metrics.jsonl", curve)
        write_json(tmp / "summary.json", summary)
        plot_metric(curve, tmp / "reward.png", "reward", "mean reward", f"reward — {out_dir.name}")
    return summary


def rl_fingerprint(settings: dict, tasks: list[dict], base_model, init_adapter, *rest) -> str:
    """Changes with whatever shapes the run: a checkpoint of another run is never resumed."""
    import hashlib

    result, _ = split_settings(settings, "rl")
    digest = hashlib.sha256(json.dumps([result, tasks, rest], sort_keys=True, default=str).encode())
    digest.update(str(Path(base_model).resolve()).encode())
    if init_adapter is not None:
        for path in sorted(Path(init_adapter).glob("adapter_model.*")):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
