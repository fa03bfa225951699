"""Recover reasoning and tool calls from what an endpoint returned, and judge a tool call.

Servers differ: vLLM splits reasoning into `reasoning_content` (newer: `reasoning`) and parses
tool calls; others leave a `<think>` block or Hermes `<tool_call>{…}</tool_call>` blocks inside
the content. Either way the stored message has the structured, OpenAI-shaped form.

`tool_call_problem` is the one rule of a call's validity: the agent answers the model with it,
curation drops traces by it and evaluation scores by it, so no two stages judge a call apart."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

import jsonschema

THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)
UNCLOSED_THINK = re.compile(r"^\s*<think>(.*)$", re.DOTALL)
TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def split_reasoning(content: str) -> tuple[str | None, str]:
    """Split a leading <think>…</think> block off the content."""
    match = THINK.match(content) or UNCLOSED_THINK.match(content)
    if not match:
        return None, content
    return match.group(1).strip(), content[match.end():] if match.re is THINK else ""


def split_tool_calls(content: str) -> tuple[list[dict], str]:
    """Extract Hermes <tool_call> blocks; returns (calls with raw argument text, remaining content).

    A block whose JSON cannot be read is kept as a call named '' with the raw text as
    arguments, so that the agent records it as malformed instead of dropping it."""
    calls = []
    for block in TOOL_CALL.findall(content):
        try:
            obj = json.loads(block)
            name, args = obj.get("name", ""), obj.get("arguments", {})
            arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        except (json.JSONDecodeError, AttributeError):
            name, arguments = "", block
        calls.append({"type": "function", "function": {"name": name, "arguments": arguments}})
    remaining = TOOL_CALL.sub("", content).strip() if calls else content
    return calls, remaining


def normalize_assistant(raw: dict, call_id_prefix: str) -> dict:
    """An assistant message in the stored shape: content, reasoning_content, tool_calls."""
    content = raw.get("content") or ""
    reasoning = raw.get("reasoning_content") or raw.get("reasoning")
    if not reasoning:
        reasoning, content = split_reasoning(content)
    calls = [
        {"type": "function", "function": {
            "name": c["function"].get("name") or "",
            "arguments": c["function"].get("arguments") if isinstance(c["function"].get("arguments"), str)
            else json.dumps(c["function"].get("arguments") or {}, ensure_ascii=False)}}
        for c in raw.get("tool_calls") or []
    ]
    if not calls and "<tool_call>" in content:
        calls, content = split_tool_calls(content)
    message = {"role": "assistant", "content": content.strip()}
    if reasoning:
        message["reasoning_content"] = reasoning.strip()
    if calls:
        # Ids of our own, in order: servers draw random ones (transformers serve, llama.cpp), and a
        # trace must be the same bytes when a run is repeated. They only pair calls with results.
        message["tool_calls"] = [{"id": f"{call_id_prefix}{i}", "type": "function", "function": c["function"]}
                                 for i, c in enumerate(calls)]
    return message


# --- validity of a tool call -------------------------------------------------------------------

@dataclass(frozen=True)
class CallProblem:
    kind: str  # bad_json (not a JSON object), unknown_tool (not offered), schema (arguments rejected)
    message: str  # as the agent tells the model, e.g. "unknown tool 'x'"


def tool_schemas(tools: list[dict] | None) -> dict[str, dict | None]:
    """Offered tool name -> its parameters schema, from OpenAI-shaped tools."""
    return {t["function"]["name"]: t["function"].get("parameters") for t in tools or []
            if (t.get("function") or {}).get("name")}


def _read_arguments(raw) -> tuple[dict | None, str | None]:
    """(arguments, None), or (None, why not): a call's arguments must be a JSON object (empty text: none)."""
    if isinstance(raw, dict):
        return raw, None
    if not isinstance(raw, str):
        return None, f"arguments are not valid JSON (not text but {type(raw).__name__})"
    try:
        arguments = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as e:
        return None, f"arguments are not valid JSON ({e.msg})"
    if not isinstance(arguments, dict):
        return None, "arguments must be a JSON object"
    return arguments, None


def call_arguments(raw) -> dict | None:
    """A call's arguments as a dict (empty text: no arguments), None when not a JSON object."""
    return _read_arguments(raw)[0]


def tool_call_problem(function: dict, schemas: Mapping[str, dict | None]) -> CallProblem | None:
    """Why a call ({"name", "arguments"}) is invalid, or None: its arguments must be a JSON
    object, its name an offered tool's, and the tool's parameters schema must accept them. A tool
    whose own schema is broken accepts any object: that fault is the server's, not the model's."""
    name = function.get("name")
    arguments, why_not = _read_arguments(function.get("arguments"))
    if why_not is not None:
        return CallProblem("bad_json", why_not)
    if name not in schemas:
        return CallProblem("unknown_tool", f"unknown tool {name!r}")
    try:
        jsonschema.validate(arguments, schemas[name] or {"type": "object"})
    except jsonschema.ValidationError as e:
        return CallProblem("schema", f"arguments do not match the schema: {e.message}")
    except jsonschema.SchemaError:
        return None
    return None
