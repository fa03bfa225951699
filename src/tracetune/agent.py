"""The agent loop: an OpenAI-compatible endpoint calling MCP tools, recorded as a raw trace."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from tracetune.config import section_settings
from tracetune.parsing import call_arguments, normalize_assistant, tool_call_problem, tool_schemas
from tracetune.runtime.endpoint import Endpoint
from tracetune.trace import trace_outcome

log = logging.getLogger(__name__)


_COLLECT = section_settings("collect")  # the schema's defaults


@dataclass(frozen=True)
class Settings:
    """How the agent runs: the collect section (evaluation passes its own temperature)."""
    temperature: float = _COLLECT["temperature"]
    seed: int = _COLLECT["seed"]
    max_turns: int = _COLLECT["max_turns"]
    max_tokens: int = _COLLECT["max_tokens"]
    concurrency: int = _COLLECT["concurrency"]
    truncate: int = _COLLECT["truncate"]
    tool_timeout_s: float = _COLLECT["tool_timeout_s"]

    @classmethod
    def from_config(cls, collect: dict) -> "Settings":
        return cls(**{k: v for k, v in collect.items() if k in cls.__dataclass_fields__})


class Recorder:
    """Builds one trace: messages, tool errors, invalid calls, usage, timings and the length of
    the longest tool result before any cut (so a changed `truncate` reruns only what it changes)."""

    def __init__(self, messages: list[dict], tools: list[dict]):
        self.messages = messages
        self.schemas = tool_schemas(tools)  # only offered tools may be called
        self.tool_errors: list[str] = []
        self.invalid_calls: list[dict] = []
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self.tools_s = 0.0
        self.longest_tool_result = 0
        self.started = time.perf_counter()

    def add_usage(self, usage) -> None:
        if usage is not None:
            self.usage["prompt_tokens"] += usage.prompt_tokens or 0
            self.usage["completion_tokens"] += usage.completion_tokens or 0

    async def run_tool_call(self, toolbox, call: dict) -> None:
        """Execute one call; an invalid one is answered with a tool error the model can read."""
        name = call["function"]["name"]
        problem = tool_call_problem(call["function"], self.schemas)
        if problem is not None:
            self.invalid_calls.append({"tool_call_id": call["id"], "reason": problem.message})
            self.tool_errors.append(call["id"])
            content = f"Error: {problem.message}"
        else:
            start = time.perf_counter()
            result = await toolbox.call(name, call_arguments(call["function"]["arguments"]))
            self.tools_s += time.perf_counter() - start
            if result.is_error:
                self.tool_errors.append(call["id"])
            self.longest_tool_result = max(self.longest_tool_result, result.length)
            content = result.content
        self.messages.append({"role": "tool", "tool_call_id": call["id"], "name": name, "content": content})

    def skip_tool_call(self, call: dict, content: str) -> None:
        """A call a person declined: not run; their message is its result, so it counts as a tool error."""
        self.tool_errors.append(call["id"])
        self.messages.append({"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"],
                              "content": content})

    def outcome(self, status: str, error: str | None = None) -> dict:
        return {
            "messages": self.messages,
            "tool_errors": self.tool_errors,
            "invalid_calls": self.invalid_calls,
            "outcome": trace_outcome(self.messages, status=status, error=error),
            "usage": self.usage,
            "longest_tool_result": self.longest_tool_result,
            "timings": {"total_s": round(time.perf_counter() - self.started, 4), "tools_s": round(self.tools_s, 4)},
        }


def sendable(messages: list[dict]) -> list[dict]:
    """The history as an endpoint accepts it: servers (transformers serve, vLLM) parse every past
    call's arguments to render the template and fail the whole request on one that is not a JSON
    object. Such a call is sent with empty arguments; its tool message already says what was wrong,
    and the trace keeps the raw text."""
    def readable(arguments: str) -> bool:
        return call_arguments(arguments) is not None

    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if calls and not all(readable(c["function"]["arguments"]) for c in calls):
            m = {**m, "tool_calls": [
                c if readable(c["function"]["arguments"]) else {**c, "function": {**c["function"], "arguments": "{}"}}
                for c in calls]}
        out.append(m)
    return out


def opening_messages(task: dict, system_prompt: str | None) -> list[dict]:
    return [{"role": "system", "content": system_prompt}] if system_prompt else []


class AgentHook(Protocol):
    """A person steering run_agent (tracetune.record). Any method may raise to end the run."""

    def before_call(self, message: dict, call: dict) -> dict | str:
        """The call to run (its arguments possibly replaced), or a message the model reads as its
        result instead of running it. `message` is the assistant turn that made the call."""

    def after_call(self, call: dict, result: dict) -> None:
        """The tool message a call was answered with."""

    def after_answer(self, message: dict, next_turn: str | None) -> str | None:
        """The user turn to send next (the task's own `next_turn`, or another), or None to end;
        may change the answer's content in `message`."""


async def run_agent(client, endpoint: Endpoint, toolbox, task: dict, tools: list[dict],
                    settings: Settings, sample: int, system_prompt: str | None,
                    hook: AgentHook | None = None) -> dict:
    """Run the model on every user turn of the task until it answers, or max_turns is spent.
    A `hook` is asked before each tool call and after each answer; without one the run is autonomous."""
    import openai

    rec = Recorder(opening_messages(task, system_prompt), tools)
    max_turns = task.get("max_turns", settings.max_turns)
    turns = 0
    task_turns = iter(task["prompt"])
    user_turn = next(task_turns)
    try:
        while user_turn is not None:
            rec.messages.append({"role": "user", "content": user_turn})
            while True:
                if turns >= max_turns:
                    return rec.outcome("max_turns")
                response = await client.chat.completions.create(
                    model=endpoint.model, messages=sendable(rec.messages), tools=tools or openai.NOT_GIVEN,
                    tool_choice="auto" if tools else openai.NOT_GIVEN,
                    temperature=task.get("temperature", settings.temperature),
                    seed=task.get("seed", settings.seed) + sample, max_tokens=settings.max_tokens,
                )
                turns += 1
                rec.add_usage(response.usage)
                message = normalize_assistant(response.choices[0].message.model_dump(), f"call_{turns}_")
                rec.messages.append(message)
                if not message.get("tool_calls"):
                    break
                for i in range(len(message["tool_calls"])):
                    await run_call(rec, toolbox, message, i, hook)
            user_turn = next(task_turns, None)
            if hook is not None:
                user_turn = hook.after_answer(message, user_turn)
        return rec.outcome("answered")
    except openai.APIError as e:
        # Retries are spent: keep what was collected, with the reason (never the key).
        return rec.outcome("error", f"{type(e).__name__}: {str(e)[:300]}")


async def run_call(rec: Recorder, toolbox, message: dict, i: int, hook: AgentHook | None) -> None:
    """The i-th call of `message`, as the hook decides: run (its edited arguments kept in the
    trace, as if the model had written them) or skipped with the person's message."""
    call = message["tool_calls"][i]
    decision = call if hook is None else hook.before_call(message, call)
    if isinstance(decision, str):
        rec.skip_tool_call(call, decision)
    else:
        message["tool_calls"][i] = decision
        await rec.run_tool_call(toolbox, decision)
    if hook is not None:
        hook.after_call(message["tool_calls"][i], rec.messages[-1])


async def replay_reference(toolbox, task: dict, tools: list[dict], system_prompt: str | None) -> dict:
    """Replay the hand-written plan against the live servers, offered `tools`: real tool outputs,
    the written answers."""
    rec = Recorder(opening_messages(task, system_prompt), tools)
    user_turns = iter(task["prompt"])
    rec.messages.append({"role": "user", "content": next(user_turns)})
    for i, step in enumerate(task["reference"]):
        message = {"role": "assistant", "content": step.get("answer", "")}
        if step.get("think"):
            message["reasoning_content"] = step["think"]
        if "tool" in step:
            call = {"id": f"call_{i}", "type": "function", "function": {
                "name": toolbox.openai_name(step["tool"]), "arguments": json.dumps(step.get("arguments", {}), ensure_ascii=False)}}
            message["tool_calls"] = [call]
            rec.messages.append(message)
            await rec.run_tool_call(toolbox, call)
        else:
            rec.messages.append(message)
            next_turn = next(user_turns, None)
            if next_turn is not None:
                rec.messages.append({"role": "user", "content": next_turn})
    return rec.outcome("answered")
