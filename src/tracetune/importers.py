"""Import traces people already have into raw traces (DESIGN.md schema).

Accepted input, one conversation per record, in a .json file (one object or a list) or a .jsonl
file (one object per line):
- the workshop format: `{"messages": [...], "tools": [...]}` where assistant messages carry
  `reasoning_content` and `tool_calls` whose `arguments` may be JSON objects;
- plain OpenAI chat logs: the same `messages` (optionally with `<think>…</think>` inside the
  assistant content) with or without `tools`, or a whole request `{"model": …, "messages": …, "tools": …}`.

Output: `{out_dir}/{task}.jsonl` (curate reads `data/traces/imported/{task}.jsonl` beside the
collected traces), trace ids `{task}--imp{n}`, arguments stringified, missing call ids added.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from tracetune.trace import trace_id, validate_trace
from tracetune.jsonio import InputError, read_json, read_jsonl, write_jsonl

THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)


def read_records(path: str | Path) -> list[tuple[str, dict]]:
    """(where, record) for each conversation in a .json or .jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        return [(f"{path}:{lineno}", record) for lineno, record in read_jsonl(path)]
    doc = read_json(path)
    records = doc if isinstance(doc, list) else [doc]
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(f"{path}: [{i}]: expected a JSON object with 'messages'")
    return [(f"{path}: [{i}]" if isinstance(doc, list) else str(path), r) for i, r in enumerate(records)]


def _arguments_string(arguments, where: str) -> str:
    if isinstance(arguments, str):
        return arguments
    if isinstance(arguments, dict):
        return json.dumps(arguments, ensure_ascii=False)
    raise InputError(f"{where}: arguments: expected a JSON object or a JSON string")


def normalise_messages(messages, where: str) -> list[dict]:
    """OpenAI-style messages with string arguments, call ids and tool-result ids filled in."""
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{where}: messages: expected a non-empty list")
    out, pending, counter = [], [], 0
    for i, message in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "tool"):
            raise InputError(f"{at}.role: expected system, user, assistant or tool")
        message = dict(message)
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        message["content"] = content if content is not None or message["role"] == "assistant" else ""
        if message["role"] == "assistant":
            for key in ("reasoning", "thinking"):  # other names servers use for the reasoning
                if message.get(key) and not message.get("reasoning_content"):
                    message["reasoning_content"] = message[key]
                message.pop(key, None)
            match = THINK.match(message.get("content") or "")
            if match and not message.get("reasoning_content"):
                message["reasoning_content"] = match.group(1).strip()
                message["content"] = message["content"][match.end():]
            calls = []
            for j, call in enumerate(message.get("tool_calls") or []):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not function.get("name"):
                    raise InputError(f"{at}.tool_calls[{j}].function.name: missing")
                counter += 1
                call_id = call.get("id") or f"call_{counter}"
                calls.append({"id": call_id, "type": "function", "function": {
                    "name": function["name"],
                    "arguments": _arguments_string(function.get("arguments", {}), f"{at}.tool_calls[{j}].function")}})
                pending.append((call_id, function["name"]))
            if calls:
                message["tool_calls"] = calls
            else:
                message.pop("tool_calls", None)
        elif message["role"] == "tool":
            if not pending:
                raise InputError(f"{at}: a tool result with no tool call before it")
            known = dict(pending)
            call_id = message.get("tool_call_id") or pending[0][0]
            if call_id not in known:
                raise InputError(f"{at}.tool_call_id: no earlier call has id {call_id!r}")
            pending = [p for p in pending if p[0] != call_id]
            message["tool_call_id"], message["name"] = call_id, message.get("name") or known[call_id]
            if not isinstance(message["content"], str):
                message["content"] = json.dumps(message["content"], ensure_ascii=False)
        out.append(message)
    return out


def normalise_tools(tools, messages: list[dict], where: str) -> list[dict]:
    """OpenAI `tools`; a log without them gets one entry per called tool, with an open schema."""
    if tools is None:
        names = sorted({c["function"]["name"] for m in messages for c in m.get("tool_calls") or []})
        return [{"type": "function", "function": {"name": n, "description": "", "parameters": {"type": "object"}}}
                for n in names]
    if not isinstance(tools, list):
        raise InputError(f"{where}: tools: expected a list of OpenAI tool definitions")
    out = []
    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and "function" not in tool and "name" in tool:
            tool = {"type": "function", "function": tool}  # a bare function definition
        if not isinstance(tool, dict) or not isinstance(tool.get("function"), dict):
            raise InputError(f"{where}: tools[{i}]: expected {{type: function, function: {{name, parameters}}}}")
        out.append({"type": "function", "function": tool["function"]})
    return out


def to_trace(record: dict, where: str, task_id: str, n: int, model: str | None = None) -> dict:
    messages = normalise_messages(record.get("messages"), where)
    tools = normalise_tools(record.get("tools"), messages, where)
    known = {t["function"]["name"] for t in tools}
    for i, message in enumerate(messages):
        for j, call in enumerate(message.get("tool_calls") or []):
            if call["function"]["name"] not in known:
                raise InputError(f"{where}: messages[{i}].tool_calls[{j}].function.name: "
                                 f"unknown tool {call['function']['name']!r} (not in the record's tools)")
    last = messages[-1]
    answered = last["role"] == "assistant" and not last.get("tool_calls") and bool((last.get("content") or "").strip())
    trace = {
        "trace_id": trace_id(task_id, f"imp{n}"), "task_id": task_id, "sample": n, "source": "imported",
        "model": model or record.get("model"), "endpoint": None, "spec_hash": None, "created": None,
        "tools": tools, "messages": messages,
        "outcome": {"status": "answered" if answered else "max_turns", "error": None,
                    "turns": sum(m["role"] == "assistant" for m in messages)},
        "check": {"passed": bool(answered), "detail": "imported; curate re-runs the task's check"},
        "tool_errors": list(record.get("tool_errors") or []), "invalid_calls": [],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0}, "timings": {"total_s": 0.0, "tools_s": 0.0},
    }
    validate_trace(trace, where)
    return trace


def import_traces(sources: list[str | Path], out_dir: str | Path, task_id: str, model: str | None = None) -> Path:
    """Convert every conversation in `sources` into raw traces of task `task_id`, written (all or
    nothing) to `{out_dir}/{task_id}.jsonl`; returns that path."""
    if not re.fullmatch(r"[a-z0-9._-]+", task_id):
        raise InputError(f"task id {task_id!r}: use [a-z0-9._-]+")
    traces = []
    for source in sources:
        for where, record in read_records(source):
            traces.append(to_trace(record, where, task_id, len(traces), model))
    out = Path(out_dir) / f"{task_id}.jsonl"
    write_jsonl(out, traces)
    return out


def main_import(argv: list[str] | None = None) -> int:
    """`tracetune import SRC… --task ID [--out DIR] [--model NAME]`."""
    parser = argparse.ArgumentParser(prog="tracetune import", description=(
        "Import workshop-format or OpenAI chat-log traces (.json or .jsonl) as raw traces of one task."))
    parser.add_argument("sources", nargs="+", help=".json (one conversation or a list) or .jsonl files")
    parser.add_argument("--task", required=True, help="the task id (in tasks.yaml) the traces belong to")
    parser.add_argument("--out", default="data/traces/imported", help="output folder (default: %(default)s)")
    parser.add_argument("--model", help="the model that produced the traces, for the dataset card")
    args = parser.parse_args(argv)
    try:
        out = import_traces(args.sources, args.out, args.task, args.model)
    except InputError as e:
        parser.exit(2, f"tracetune import: {e}\n")
    print(f"wrote {out}")
    return 0
