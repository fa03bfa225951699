"""The MCP client: schema and result conversion, names, allowlist, env isolation, crash, hang, HTTP."""

import asyncio
import base64
import os
import socket
import subprocess
import sys
import time

import mcp_types as types
import pytest

from tracetune.mcp_client import ToolBox, assign_names, convert_result, convert_schema, list_server_tools
from tracetune.runtime.serving import free_port

# A small FastMCP server with the misbehaviours under test; written to a file per test session.
FIXTURE_SERVER = '''
import os, sys, time
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image

server = MCPServer("fixture", log_level="WARNING")

@server.tool(structured_output=False)
def env_names() -> str:
    """Names of the environment variables this process sees."""
    return " ".join(sorted(os.environ))

@server.tool(structured_output=False)
def echo(text: str) -> str:
    """Echo the text."""
    return text

@server.tool(structured_output=False)
def picture() -> list:
    """Text and an image."""
    return ["a red dot", Image(data=b"\\x89PNG" + bytes(96), format="png")]

@server.tool(structured_output=False)
def fail() -> str:
    """Always fails."""
    raise ToolError("this tool always fails")

@server.tool(structured_output=False)
def crash() -> str:
    """Kill this server, unless the marker file exists (then answer)."""
    marker = os.environ["CRASH_MARKER"]
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return "alive after restart"

@server.tool(structured_output=False)
def always_crash() -> str:
    """Kill this server every time."""
    os._exit(4)

@server.tool(structured_output=False)
def hang(seconds: float = 60) -> str:
    """Sleep."""
    time.sleep(seconds)
    return "woke up"

@server.tool(structured_output=False, name="a_tool_whose_name_is_far_too_long_for_the_openai_function_name_limit_of_64")
def long_name() -> str:
    """Long name."""
    return "long"

server.run()
'''


@pytest.fixture(scope="module")
def fixture_spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("mcp") / "fixture_server.py"
    path.write_text(FIXTURE_SERVER)
    marker = path.parent / "crashed-once"
    return {"command": "python", "args": [str(path)], "env": {"CRASH_MARKER": str(marker)}}


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------- pure conversions

def test_non_object_root_is_wrapped():
    params, wrapped = convert_schema({"type": "array", "items": {"type": "string"}})
    assert wrapped
    assert params == {"type": "object", "properties": {"value": {"type": "array", "items": {"type": "string"}}},
                      "required": ["value"]}
    params, wrapped = convert_schema({"type": "object", "properties": {"a": {"type": "integer"}}})
    assert not wrapped and params["properties"] == {"a": {"type": "integer"}}
    assert convert_schema({}) == ({"type": "object", "properties": {}}, False)
    assert convert_schema(None) == ({"type": "object", "properties": {}}, False)


def test_rejected_formats_dropped_but_property_named_format_kept():
    schema = {"type": "object", "properties": {
        "url": {"type": "string", "format": "uri"},
        "when": {"type": "string", "format": "date-time"},
        "format": {"type": "string", "enum": ["json", "text"]},
        "items": {"type": "array", "items": {"type": "string", "format": "uri-reference"}},
    }, "$defs": {"D": {"type": "string", "format": "int64"}}}
    params, _ = convert_schema(schema)
    props = params["properties"]
    assert "format" not in props["url"]
    assert props["when"]["format"] == "date-time"
    assert props["format"] == {"type": "string", "enum": ["json", "text"]}
    assert "format" not in props["items"]["items"]
    assert "format" not in params["$defs"]["D"]
    assert schema["properties"]["url"]["format"] == "uri"  # the input is not modified


def test_names_long_clashing_and_odd_characters():
    long = "x" * 80
    names = assign_names([("shop", "search"), ("books", "search"), ("shop", "get.price"), ("shop", long),
                          ("books", long)])
    assert names[("shop", "search")] == "shop__search"
    assert names[("books", "search")] == "books__search"
    assert names[("shop", "get.price")] == "get_price"
    assert all(len(n) <= 64 for n in names.values())
    assert len(set(names.values())) == len(names)
    # Deterministic and independent of server order.
    again = assign_names([("books", long), ("books", "search"), ("shop", long), ("shop", "search"),
                          ("shop", "get.price")])
    assert again == names


def _result(content, is_error=False, structured=None):
    return types.CallToolResult(content=content, is_error=is_error, structured_content=structured)


def test_result_conversion():
    png = base64.b64encode(bytes(1234)).decode()
    res = convert_result(_result([
        types.TextContent(text="first"),
        types.ImageContent(data=png, mime_type="image/png"),
        types.TextContent(text="second"),
        types.EmbeddedResource(resource=types.TextResourceContents(uri="file:///a.txt", mime_type="text/plain",
                                                                   text="abc")),
        types.ResourceLink(uri="file:///b.bin", name="b"),
    ]), truncate=1000)
    assert res.content.split("\n") == ["first", "[image: image/png, 1234 bytes]", "second",
                                       "[resource: file:///a.txt, text/plain, 3 characters]",
                                       "[resource link: file:///b.bin]"]
    assert not res.is_error
    assert convert_result(_result([types.TextContent(text="boom")], is_error=True), 100).is_error
    cut = convert_result(_result([types.TextContent(text="a" * 50)]), truncate=20)
    assert cut.content == "a" * 20 + "\n…[truncated 30 characters]"
    assert cut.length == 50 and convert_result(_result([types.TextContent(text="abc")]), 20).length == 3
    assert convert_result(_result([], structured={"n": 1}), 100).content == '{"n": 1}'


# ---------------------------------------------------------------- live servers

def test_live_fixture_server(fixture_spec, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-should-not-leak")
    monkeypatch.setenv("HF_TOKEN", "hf-secret")

    async def scenario():
        async with ToolBox({"fx": fixture_spec}, truncate=60, tool_timeout_s=2) as tb:
            names = [t["function"]["name"] for t in tb.openai_tools()]
            assert all(len(n) <= 64 for n in names) and "echo" in names
            env = (await tb.call("env_names", {})).content.split()
            assert "OPENAI_API_KEY" not in env and "HF_TOKEN" not in env
            assert "PATH" in env and "CRASH_MARKER" in env
            assert await tb.call("echo", {"text": "hi"}) == (await tb.call("echo", {"text": "hi"}))
            assert (await tb.call("echo", {"text": "hi"})).content == "hi"
            long = await tb.call("echo", {"text": "y" * 100})
            assert long.content.endswith("…[truncated 40 characters]")
            pic = await tb.call("picture", {})
            assert pic.content == "a red dot\n[image: image/png, 100 bytes]"
            failed = await tb.call("fail", {})
            assert failed.is_error and "always fails" in failed.content and not failed.unavailable
            start = time.monotonic()
            hung = await tb.call("hang", {"seconds": 30})
            assert hung.is_error and "timed out" in hung.content and time.monotonic() - start < 10
            assert hung.unavailable  # the server did not answer: the environment failed, not the model
            assert (await tb.call("echo", {"text": "still here"})).content == "still here"
            assert (await tb.call("nope", {})).is_error
    run(scenario())


def test_crash_restarts_once_then_errors(fixture_spec, tmp_path):
    spec = fixture_spec | {"env": {"CRASH_MARKER": str(tmp_path / "marker")}}

    async def scenario():
        async with ToolBox({"fx": spec}, truncate=1000, tool_timeout_s=10) as tb:
            first = await tb.call("crash", {})  # crashes, is restarted, the retry answers
            assert first == type(first)("alive after restart", False)
            assert (await tb.call("echo", {"text": "ok"})).content == "ok"
            dead = await tb.call("always_crash", {})  # the one restart is spent
            assert dead.is_error and "not responding" in dead.content and dead.unavailable
    run(scenario())


def test_allowlist_limits_what_resolves(fixture_spec):
    async def scenario():
        async with ToolBox({"fx": fixture_spec}) as tb:
            assert tb.resolve("hang")  # nothing offered yet: every tool
            tools = tb.openai_tools(["fx"], ["echo", "fail"])
            assert [t["function"]["name"] for t in tools] == ["echo", "fail"]
            assert tb.resolve("echo") and tb.resolve("hang") is None
            assert tools[0]["function"]["parameters"]["required"] == ["text"]
            assert tb.openai_tools(["other"]) == []
            with pytest.raises(ValueError, match="no_such_tool"):
                tb.openai_tools(None, ["echo", "no_such_tool"])
    run(scenario())


def test_clashing_servers_map_back(fixture_spec, tmp_path):
    other = fixture_spec | {"env": {"CRASH_MARKER": str(tmp_path / "m2")}}

    async def scenario():
        async with ToolBox({"one": fixture_spec, "two": other}) as tb:
            names = [t["function"]["name"] for t in tb.openai_tools()]
            assert "one__echo" in names and "two__echo" in names and "echo" not in names
            assert len(names) == len(set(names)) and all(len(n) <= 64 for n in names)
            assert (await tb.call("two__echo", {"text": "from two"})).content == "from two"
            assert tb.tools["two__echo"].server == "two"
            # the allowlist may use the MCP name: it picks the tool on every server
            assert len(tb.openai_tools(None, ["echo"])) == 2
    run(scenario())


def test_list_server_tools(fixture_spec):
    tools = list_server_tools({"fx": fixture_spec})
    assert "echo" in tools["fx"] and "hang" in tools["fx"]


def test_missing_command_raises():
    with pytest.raises(Exception):
        list_server_tools({"bad": {"command": "/nonexistent/mcp-server"}})


def test_streamable_http_transport():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tracetune.servers.shop", "--transport", "streamable-http",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)

        async def scenario():
            async with ToolBox({"shop": {"url": url, "headers": {"X-Test": "1"}}}, tool_timeout_s=10) as tb:
                assert "check_stock" in [t["function"]["name"] for t in tb.openai_tools()]
                result = await tb.call("get_product", {"sku": "KB-03"})
                assert not result.is_error and "$32.00" in result.content
        run(scenario())
    finally:
        proc.terminate()
        proc.wait(10)


def test_stdio_command_and_environment(monkeypatch):
    from tracetune.runtime.mcp_connection import _expand, stdio_parameters

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("SOME_TOKEN", "t0k")
    params = stdio_parameters("s", {"command": "python", "args": ["-m", "x", 5], "env": {"A": "1"}})
    assert params.command == sys.executable  # the venv's interpreter even when PATH has another python
    assert params.args == ["-m", "x", "5"]
    assert params.env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert params.env["A"] == "1" and "OPENAI_API_KEY" not in params.env and "SOME_TOKEN" not in params.env
    # Header values may name environment variables, so tokens need not be written into task files.
    assert _expand("Bearer ${SOME_TOKEN}") == "Bearer t0k"
