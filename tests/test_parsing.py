"""Reasoning and tool calls recovered from structured fields or from inside the content, and the
one rule of a call's validity that every stage applies."""

import json

import pytest

from tracetune.parsing import normalize_assistant, split_reasoning, split_tool_calls, tool_call_problem, tool_schemas


def test_structured_fields_kept_with_ids_of_our_own():
    """A server's random call ids are replaced, so a repeated run stores the same trace."""
    raw = {"content": "ok", "reasoning_content": "think", "tool_calls": [
        {"id": "chatcmpl-tool-8f3a", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}
    msg = normalize_assistant(raw, "call_1_")
    assert msg == {"role": "assistant", "content": "ok", "reasoning_content": "think",
                   "tool_calls": [{"id": "call_1_0", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}


def test_reasoning_field_named_reasoning():
    assert normalize_assistant({"content": "a", "reasoning": "r"}, "c")["reasoning_content"] == "r"


def test_think_block_in_content():
    assert split_reasoning("<think>\nstep one\n</think>\n\nThe answer") == ("step one", "The answer")
    assert split_reasoning("no thinking here") == (None, "no thinking here")
    assert split_reasoning("<think>cut off by max_tokens") == ("cut off by max_tokens", "")


def test_hermes_blocks_in_content():
    content = ('<think>look it up</think>Let me check.\n<tool_call>\n{"name": "get_price", "arguments": {"item": "blue"}}\n'
               '</tool_call>\n<tool_call>{"name": "stock", "arguments": {}}</tool_call>')
    msg = normalize_assistant({"content": content}, "call_")
    assert msg["reasoning_content"] == "look it up"
    assert msg["content"] == "Let me check."
    assert [c["function"]["name"] for c in msg["tool_calls"]] == ["get_price", "stock"]
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"item": "blue"}
    assert [c["id"] for c in msg["tool_calls"]] == ["call_0", "call_1"]


def test_object_arguments_become_json_strings():
    raw = {"content": None, "tool_calls": [{"id": "i", "function": {"name": "f", "arguments": {"a": 1}}}]}
    assert normalize_assistant(raw, "c")["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'


def test_broken_block_is_kept_as_malformed_call():
    calls, rest = split_tool_calls('<tool_call>{"name": "f", "arguments": {oops}</tool_call>')
    assert calls == [{"type": "function", "function": {"name": "", "arguments": '{"name": "f", "arguments": {oops}'}}]
    assert rest == ""


# --- one rule of a tool call's validity, applied alike by the agent, curation and evaluation -----

SCHEMA = {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"],
          "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_price", "description": "", "parameters": SCHEMA}},
         {"type": "function", "function": {"name": "broken", "description": "",
                                           "parameters": {"type": "object", "required": 3}}}]
CALLS = [  # (name, arguments, problem kind)
    ("get_price", '{"item": "blue"}', None),
    ("get_price", '{"item": "blue"', "bad_json"),
    ("get_price", "[1, 2]", "bad_json"),
    ("get_price", "", "schema"),  # no arguments is {}: the schema wants item
    ("get_price", '{"item": 3}', "schema"),
    ("get_price", '{"item": "x", "colour": "blue"}', "schema"),
    ("lookup_price", '{"item": "blue"}', "unknown_tool"),
    ("", "{get_price: blue}", "bad_json"),  # an unreadable Hermes block
    ("broken", '{"a": 1}', None),  # the server's schema is broken, not the call
]


@pytest.mark.parametrize("name, arguments, kind", CALLS)
def test_every_stage_judges_a_call_alike(name, arguments, kind):
    import asyncio

    from tracetune.agent import Recorder
    from tracetune.curate import invalid_tool_call
    from tracetune.evaluate import tool_call_validity

    problem = tool_call_problem({"name": name, "arguments": arguments}, tool_schemas(TOOLS))
    assert getattr(problem, "kind", None) == kind

    class Box:  # reached only by valid calls
        async def call(self, name, arguments):
            return type("Result", (), {"is_error": False, "length": 2, "content": "ok"})()

    call = {"id": "c0", "type": "function", "function": {"name": name, "arguments": arguments}}
    recorder = Recorder([{"role": "assistant", "content": "", "tool_calls": [call]}], TOOLS)
    asyncio.run(recorder.run_tool_call(Box(), call))
    trace = recorder.outcome("answered") | {"tools": TOOLS}
    agent_says = [c["reason"] for c in trace["invalid_calls"]]
    assert agent_says == ([problem.message] if problem else [])
    assert invalid_tool_call(trace) == (f"c0: {name}: {problem.message}" if problem else None)
    assert tool_call_validity(trace)["problems"] == ({kind: 1} if kind else {})
