"""Reasoning and tool calls recovered from structured fields or from inside the content."""

import json

from tracetune.parsing import normalize_assistant, split_reasoning, split_tool_calls


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
