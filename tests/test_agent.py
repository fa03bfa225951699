"""The agent loop against a scripted OpenAI-compatible endpoint and an in-memory tool box."""

import asyncio
import json

import pytest

from fakes import FakeEndpoint, tool_then_answer
import time

from tracetune.agent import Settings, replay_reference, run_agent
from tracetune.runtime.endpoint import Endpoint, EndpointError, request_timeout, sized_timeout
from tracetune.checks import run_check
from tracetune.mcp_client import ToolResult as Result

PRICE_TOOL = {"type": "function", "function": {"name": "get_price", "description": "price", "parameters": {
    "type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"], "additionalProperties": False}}}


class PriceBox:
    """Stands in for an MCP ToolBox: one tool with a JSON schema."""

    def __init__(self):
        self.calls = []

    def openai_name(self, name):
        return name

    async def call(self, name, arguments):
        self.calls.append(arguments)
        if arguments["item"] == "ghost":
            return Result("no such item", is_error=True)
        return Result("12.50")


TASK = {"id": "price", "prompt": ["How much is the blue widget?"], "servers": ["shop"],
        "check": {"contains": ["12.50"], "tool_called": "get_price"}}


def run(policy, task=TASK, timeout_s=2, **fake):
    with FakeEndpoint(policy, **fake) as fake_endpoint:
        endpoint = Endpoint(fake_endpoint.base_url, "fake", timeout_s=timeout_s, max_retries=3)
        box = PriceBox()

        async def agent():
            async with endpoint.client() as client:
                return await run_agent(client, endpoint, box, task, [PRICE_TOOL], Settings(), 0, None)

        return asyncio.run(agent()), box, fake_endpoint


@pytest.mark.parametrize("as_text", [False, True])
def test_tool_call_then_answer(as_text):
    trace, box, _ = run(tool_then_answer("get_price", {"item": "blue"}, "It costs 12.50.", as_text=as_text))
    assert trace["outcome"] == {"status": "answered", "error": None, "turns": 2}
    assistant = trace["messages"][1]
    assert assistant["reasoning_content"] == "need get_price"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"item": "blue"}
    assert trace["messages"][2] == {"role": "tool", "tool_call_id": assistant["tool_calls"][0]["id"],
                                    "name": "get_price", "content": "12.50"}
    assert box.calls == [{"item": "blue"}]
    assert run_check(TASK["check"], trace) == (True, "ok")


@pytest.mark.parametrize("arguments, reason", [
    ({"colour": "blue"}, "arguments do not match the schema"),
    ("{not json", "arguments are not valid JSON"),
])
def test_malformed_call_is_answered_with_a_tool_error(arguments, reason):
    def policy(messages):
        if messages[-1]["role"] == "tool":
            return {"role": "assistant", "content": "Sorry."}
        args = arguments if isinstance(arguments, str) else json.dumps(arguments)
        return {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_price", "arguments": args}}]}

    trace, box, fake = run(policy)
    assert box.calls == []
    assert trace["invalid_calls"][0]["tool_call_id"] == "call_1_0" and reason in trace["invalid_calls"][0]["reason"]
    # The trace keeps what the model wrote; the endpoint is sent arguments it can parse back.
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    assert trace["messages"][1]["tool_calls"][0]["function"]["arguments"] == args
    sent = fake.requests[1]["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert isinstance(json.loads(sent), dict)
    assert trace["tool_errors"] == ["call_1_0"]
    assert trace["messages"][2]["content"].startswith("Error: ")
    assert trace["outcome"]["status"] == "answered"
    assert not run_check(TASK["check"], trace)[0]


def test_tool_attempted_counts_a_refused_call_that_tool_called_does_not():
    trace = {"messages": [
        {"role": "user", "content": "Cancel ORD-1007."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "cancel_order", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "cancel_order", "content": "Error: already shipped"},
        {"role": "assistant", "content": "It has shipped; return it instead."}], "tool_errors": ["c1"]}
    assert run_check({"tool_attempted": "cancel_order", "contains": "return"}, trace) == (True, "ok")
    assert not run_check({"tool_called": "cancel_order"}, trace)[0]
    assert run_check({"tool_attempted": ["get_order"]}, trace) == (False, "tools not called: ['get_order']")



def test_no_tool_call_passes_only_an_answer_without_any_call():
    asked = {"role": "user", "content": "Thanks, have a nice day!"}
    plain = {"messages": [asked, {"role": "assistant", "content": "You too!"}], "tool_errors": []}
    called = {"messages": [asked, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "search_products", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "search_products", "content": "none"},
        {"role": "assistant", "content": "You too!"}], "tool_errors": []}
    assert run_check({"no_tool_call": True}, plain) == (True, "ok")
    assert run_check({"no_tool_call": True}, called) == (False, "tools called where none fits: ['search_products']")

def test_unknown_tool_is_recorded():
    trace, _, _ = run(tool_then_answer("delete_everything", {}, "done"))
    assert "unknown tool 'delete_everything'" in trace["invalid_calls"][0]["reason"]


def test_retries_500s_then_succeeds():
    trace, _, fake = run(tool_then_answer("get_price", {"item": "blue"}, "12.50"), fail_first=2)
    assert trace["outcome"]["status"] == "answered"
    assert len(fake.requests) == 4  # two failures retried, then two real turns


def test_retries_timeouts_then_succeeds():
    trace, _, fake = run(tool_then_answer("get_price", {"item": "blue"}, "12.50"), hang_first=1, hang_s=3, timeout_s=1)
    assert trace["outcome"]["status"] == "answered"


def test_persistent_failure_becomes_error_trace():
    trace, _, fake = run(tool_then_answer("get_price", {"item": "blue"}, "12.50"), fail_first=100)
    assert trace["outcome"]["status"] == "error"
    assert "InternalServerError" in trace["outcome"]["error"]
    assert len(fake.requests) == 4  # the first try and three retries


def run_with_sized_timeout(policy, settings, timeout_s=None, **fake):
    """The collector's way: probe the server (unless a timeout is configured), then run."""
    with FakeEndpoint(policy, **fake) as fake_endpoint:
        endpoint = Endpoint(fake_endpoint.base_url, "fake", timeout_s=timeout_s, max_retries=0)

        async def agent():
            async with endpoint.client() as client:
                timeout = await request_timeout(client, endpoint, settings)
                return timeout, await run_agent(client.with_options(timeout=timeout), endpoint, PriceBox(), TASK,
                                                [PRICE_TOOL], settings, 0, None)

        return asyncio.run(agent())


def test_a_slow_server_finishes_with_timeouts_sized_from_its_speed():
    """2 s per request (0.4 s per token): the sized timeout leaves room for a full-length answer
    under concurrency, where a fixed 1 s timeout fails the same run."""
    policy, settings = tool_then_answer("get_price", {"item": "blue"}, "12.50"), Settings(max_tokens=64, concurrency=2)
    timeout, trace = run_with_sized_timeout(policy, settings, latency_s=2.0)
    assert timeout >= 3 * 2 * (64 + 400) * 0.4 * 0.95
    assert trace["outcome"]["status"] == "answered"
    _, trace = run_with_sized_timeout(policy, settings, timeout_s=1.0, latency_s=2.0)
    assert trace["outcome"]["status"] == "error" and "APITimeoutError" in trace["outcome"]["error"]


def test_sized_timeout_grows_with_slowness_and_concurrency_from_a_floor():
    assert sized_timeout(0.0001, 256, 8) == 30.0  # a fast server still gets a sane floor
    assert sized_timeout(0.05, 256, 8) < sized_timeout(0.1, 256, 8) < sized_timeout(0.1, 256, 16)


def test_a_dead_server_fails_fast_in_one_line():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = Endpoint(f"http://127.0.0.1:{port}/v1", "gone", max_retries=4)

    async def probe_it():
        async with endpoint.client() as client:
            return await request_timeout(client, endpoint, Settings())

    started = time.monotonic()
    with pytest.raises(EndpointError) as error:
        asyncio.run(probe_it())
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message and "does not answer" in message


def test_max_turns():
    always_call = tool_then_answer("get_price", {"item": "blue"}, "unused")
    trace, _, _ = run(lambda m: always_call(m[:1]), task={**TASK, "max_turns": 3})
    assert trace["outcome"]["status"] == "max_turns" and trace["outcome"]["turns"] == 3


def test_multi_turn_prompt_sends_each_user_turn_after_an_answer():
    task = {**TASK, "prompt": ["Price of blue?", "And the ghost widget?"]}
    trace, _, fake = run(tool_then_answer("get_price", {"item": "blue"}, "12.50"), task=task)
    roles = [m["role"] for m in trace["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "user", "assistant", "tool", "assistant"]
    assert trace["outcome"]["turns"] == 4


def test_reference_replay_uses_real_tool_outputs():
    task = {**TASK, "prompt": ["Price of blue?", "And ghost?"], "reference": [
        {"tool": "get_price", "arguments": {"item": "blue"}, "think": "look it up"},
        {"answer": "It costs 12.50."},
        {"tool": "get_price", "arguments": {"item": "ghost"}},
        {"answer": "There is no ghost widget."}]}
    trace = asyncio.run(replay_reference(PriceBox(), task, [PRICE_TOOL], "be brief"))
    assert [m["role"] for m in trace["messages"]] == [
        "system", "user", "assistant", "tool", "assistant", "user", "assistant", "tool", "assistant"]
    assert trace["messages"][2]["reasoning_content"] == "look it up"
    assert trace["messages"][3]["content"] == "12.50"
    assert trace["longest_tool_result"] == len("no such item")
    assert trace["tool_errors"] == [trace["messages"][6]["tool_calls"][0]["id"]]


class ScriptedHook:
    """A person as tracetune.record asks them: replace the first call's arguments, skip the second,
    then add one user turn of their own."""

    def __init__(self):
        self.results, self.answers = [], []

    def before_call(self, message, call):
        if not self.results:
            return {**call, "function": {**call["function"], "arguments": json.dumps({"item": "blue"})}}
        return "Not now."

    def after_call(self, call, result):
        self.results.append(result["content"])

    def after_answer(self, message, next_turn):
        self.answers.append(message["content"])
        return next_turn or ("And again?" if len(self.answers) == 1 else None)


def test_a_hook_edits_skips_and_continues_through_the_same_loop():
    hook = ScriptedHook()
    with FakeEndpoint(tool_then_answer("get_price", {"item": "ghost"}, "Done.")) as fake_endpoint:
        endpoint = Endpoint(fake_endpoint.base_url, "fake", timeout_s=2, max_retries=0)

        async def agent():
            async with endpoint.client() as client:
                return await run_agent(client, endpoint, box, TASK, [PRICE_TOOL], Settings(), 0, None, hook=hook)

        box = PriceBox()
        trace = asyncio.run(agent())
    assert box.calls == [{"item": "blue"}]  # the edited call ran; the skipped one did not
    assert hook.results == ["12.50", "Not now."] and hook.answers == ["Done.", "Done."]
    first, second = (m["tool_calls"][0] for m in trace["messages"] if m.get("tool_calls"))
    assert json.loads(first["function"]["arguments"]) == {"item": "blue"}  # the trace keeps the edit
    assert trace["tool_errors"] == [second["id"]] and trace["invalid_calls"] == []
    assert [m["content"] for m in trace["messages"] if m["role"] == "user"] == [TASK["prompt"][0], "And again?"]
    assert trace["outcome"] == {"status": "answered", "error": None, "turns": 4}
