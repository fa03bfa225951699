"""MCP servers as OpenAI function tools, on the official `mcp` SDK.

`ToolBox` opens the servers of a `servers` map (the Claude Desktop / Cursor `mcpServers`
shape: stdio `{command, args, env, cwd}` or streamable HTTP `{url, headers}`), does the full
initialize handshake, lists every tool (following pagination cursors), and offers them as
OpenAI function tools:

    async with ToolBox(servers, truncate=4000, tool_timeout_s=30) as box:
        tools = box.openai_tools(["shop"], allow=["get_product", "search_products"])
        result = await box.call("get_product", {"sku": "KB-03"})   # ToolResult(content, is_error)

Conversions:
- schemas: a non-object root is wrapped as the single property `value`; JSON-Schema `format`s
  that OpenAI's function format rejects, `title`s and `$schema` are dropped (titles only
  repeat the property names and cost prompt tokens);
- names: MCP allows names OpenAI does not (dots, slashes, > 64 characters), and two servers
  may both offer e.g. `search`. Such a name becomes `{server}__{name}` (on every server that
  has it, so the result does not depend on server order), sanitized, and truncated with a
  short hash when still too long; calls are mapped back to the real tool;
- results: text parts joined, images/audio/resources named by a short placeholder, isError
  kept, long results cut at `truncate` characters with a marker.

Robustness: a stdio server gets only PATH, HOME, locale variables and the env it declares,
never the parent's environment (which holds the endpoint's API key). A server that dies is
restarted once and the interrupted call retried on the new process; after that its calls
return error results. A call that takes longer than `tool_timeout_s` returns an error result.
`call` never raises for tool trouble: the agent turns every ToolResult into a tool message.

A server's process and session (tracetune.runtime.mcp_connection) are owned by one background
task each (the SDK's anyio cancel scopes must be entered and left in the same task), so a restart
can be triggered from any caller.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

from tracetune.runtime.mcp_connection import CONNECT_TIMEOUT_S, Connection, ServerStartError

log = logging.getLogger(__name__)

MAX_NAME = 64
# String formats OpenAI's function (structured-output) schemas accept; others are dropped.
OPENAI_FORMATS = {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}


@dataclass(frozen=True)
class ToolResult:
    content: str
    is_error: bool = False
    full_length: int | None = field(default=None, compare=False)  # characters before the cut at `truncate`
    # The server did not answer (it stopped, or the call timed out): the environment failed, not the model.
    unavailable: bool = field(default=False, compare=False)

    @property
    def length(self) -> int:
        """The result's length as the server sent it, before any cut."""
        return len(self.content) if self.full_length is None else self.full_length


@dataclass(frozen=True)
class Tool:
    server: str
    mcp_name: str
    openai_name: str
    description: str
    parameters: dict
    wrapped: bool  # the MCP schema's root was not an object: the model sends {"value": …}

    def openai(self) -> dict:
        function = {"name": self.openai_name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


# --- schema and name conversion ---------------------------------------------------------------

_SCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
_DATA_KEYWORDS = {"default", "enum", "const", "examples", "example"}
_DROPPED_KEYWORDS = {"title", "$schema"}


def clean_schema(schema: Any) -> Any:
    """Copy of a JSON schema without the keywords OpenAI rejects or does not need. Property
    *names* (keys of `properties`) and data (`default`, `enum`, …) are never touched."""
    if isinstance(schema, list):
        return [clean_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _DROPPED_KEYWORDS and isinstance(value, str):
            continue
        if key == "format" and isinstance(value, str) and value not in OPENAI_FORMATS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: clean_schema(sub) for name, sub in value.items()}
        elif key in _DATA_KEYWORDS:
            out[key] = value
        else:
            out[key] = clean_schema(value)
    return out


def _is_object_schema(schema: dict) -> bool:
    kind = schema.get("type")
    if kind is None:  # untyped: an object when it has properties or says nothing else
        return "properties" in schema or not ({"anyOf", "oneOf", "allOf", "items", "enum", "const"} & schema.keys())
    return kind == "object" or (isinstance(kind, list) and "object" in kind)


def convert_schema(input_schema: dict | None) -> tuple[dict, bool]:
    """An MCP input schema as OpenAI `parameters`: (schema, wrapped). OpenAI requires an object
    root; anything else becomes the single required property `value`."""
    schema = clean_schema(input_schema or {})
    if _is_object_schema(schema):
        schema["type"] = "object"
        schema.setdefault("properties", {})
        return schema, False
    defs = {k: schema.pop(k) for k in ("$defs", "definitions") if k in schema}
    return {"type": "object", "properties": {"value": schema}, "required": ["value"], **defs}, True


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "tool"


def _hashed(name: str, server: str, tool: str) -> str:
    digest = hashlib.sha1(f"{server}/{tool}".encode()).hexdigest()[:8]
    return f"{name[:MAX_NAME - 9]}_{digest}"


def assign_names(pairs: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """OpenAI names for (server, MCP tool name) pairs: the MCP name itself where it is valid,
    ≤ 64 characters and offered by one server only; else `{server}__{name}`, cut with a hash
    of the full pair when too long. Depends only on the set of pairs, never on their order."""
    plain = {pair: _sanitize(pair[1]) for pair in pairs}
    owners: dict[str, set[str]] = {}
    for (server, _), name in plain.items():
        owners.setdefault(name, set()).add(server)
    names = {}
    for (server, tool), name in plain.items():
        if len(owners[name]) > 1:
            name = _sanitize(f"{server}__{tool}")
        names[(server, tool)] = name if len(name) <= MAX_NAME else _hashed(name, server, tool)
    # Leftover clashes (e.g. "a.b" and "a_b" on one server): hash all but the first, sorted.
    taken: set[str] = set()
    for pair in sorted(names):
        if names[pair] in taken:
            names[pair] = _hashed(names[pair], *pair)
        taken.add(names[pair])
    return names


# --- result conversion ------------------------------------------------------------------------

def _base64_size(data: str) -> int:
    return len(data.rstrip("=")) * 3 // 4


def _part_text(part: Any) -> str:
    kind = getattr(part, "type", None)
    if kind == "text":
        return part.text
    if kind in ("image", "audio"):
        return f"[{kind}: {part.mime_type}, {_base64_size(part.data)} bytes]"
    if kind == "resource":
        res = part.resource
        size = f"{len(res.text)} characters" if hasattr(res, "text") else f"{_base64_size(res.blob)} bytes"
        return f"[resource: {res.uri}, {res.mime_type or 'unknown type'}, {size}]"
    if kind == "resource_link":
        return f"[resource link: {part.uri}]"
    return f"[{kind or 'unknown'} content]"


def truncate_text(text: str, limit: int | None) -> str:
    if not limit or limit <= 0 or len(text) <= limit:
        return text
    return f"{text[:limit]}\n…[truncated {len(text) - limit} characters]"


def convert_result(result: types.CallToolResult, truncate: int | None) -> ToolResult:
    """Text parts joined, other parts as short placeholders, isError kept, cut at `truncate`."""
    parts = [_part_text(part) for part in result.content]
    if not parts and result.structured_content is not None:
        parts = [json.dumps(result.structured_content, ensure_ascii=False)]
    text = "\n".join(parts)
    return ToolResult(truncate_text(text, truncate), bool(result.is_error), len(text))


class _NotRunning(Exception):
    pass


# --- the tool box -----------------------------------------------------------------------------

class ToolBox:
    """Async context manager: live MCP servers offered and called as OpenAI function tools."""

    def __init__(self, servers: dict[str, dict], *, truncate: int | None = 4000, tool_timeout_s: float = 30.0,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, errlog=None):
        self.servers = dict(servers)
        self.truncate = truncate
        self.tool_timeout_s = tool_timeout_s
        self.connections = {name: Connection(name, spec, connect_timeout_s=connect_timeout_s, errlog=errlog)
                            for name, spec in self.servers.items()}
        self.tools: dict[str, Tool] = {}  # by OpenAI name; servers in map order, tools in listing order
        self._offered: set[str] | None = None
        self._group = None

    async def __aenter__(self) -> ToolBox:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        try:
            await self._start_all()
        except BaseException:
            await self.aclose()
            raise
        self.tools = self._index()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop every server. The caller's own exception is not handed to the task group, so
        it propagates as itself rather than wrapped in an ExceptionGroup."""
        for conn in self.connections.values():
            conn._stop.set()
        if self._group is not None:
            group, self._group = self._group, None
            await group.__aexit__(None, None, None)

    async def _start_all(self) -> None:
        errors: list[ServerStartError] = []

        async def start(conn: Connection) -> None:
            try:
                await conn.start(self._group)
            except ServerStartError as e:
                errors.append(e)

        async with anyio.create_task_group() as starters:
            for conn in self.connections.values():
                starters.start_soon(start, conn)
        if errors:
            raise errors[0]

    def _index(self) -> dict[str, Tool]:
        names = assign_names([(s, t.name) for s, conn in self.connections.items() for t in conn.tools])
        tools = {}
        for server, conn in self.connections.items():
            for t in conn.tools:
                parameters, wrapped = convert_schema(t.input_schema)
                name = names[(server, t.name)]
                tools[name] = Tool(server, t.name, name, (t.description or "").strip(), parameters, wrapped)
        return tools

    @property
    def server_tools(self) -> dict[str, list[str]]:
        """MCP tool names per server."""
        return {name: [t.name for t in conn.tools] for name, conn in self.connections.items()}

    # -- what the agent offers --

    def openai_tools(self, servers: list[str] | None = None, allow: list[str] | None = None) -> list[dict]:
        """The tools of `servers` (default: all) as OpenAI function tools, limited to `allow`
        (MCP or OpenAI names) when given. From then on `resolve` and `call`
        know only the offered tools, so a model cannot call around the allowlist."""
        chosen = [t for t in self.tools.values() if servers is None or t.server in servers]
        if allow is not None:
            wanted = set(allow)
            unknown = wanted - {t.mcp_name for t in chosen} - {t.openai_name for t in chosen}
            if unknown:
                raise ValueError(f"tools allowlist names tools no server offers: {', '.join(sorted(unknown))}")
            chosen = [t for t in chosen if t.mcp_name in wanted or t.openai_name in wanted]
        self._offered = {t.openai_name for t in chosen}
        return [t.openai() for t in chosen]

    def resolve(self, name: str) -> Tool | None:
        """The offered tool called `name`; an MCP name is accepted too when it is unambiguous
        (reference plans name tools as their server does)."""
        offered = [t for t in self.tools.values() if self._offered is None or t.openai_name in self._offered]
        for tool in offered:
            if tool.openai_name == name:
                return tool
        matches = [t for t in offered if t.mcp_name == name]
        return matches[0] if len(matches) == 1 else None

    def openai_name(self, name: str) -> str:
        """The offered name of a tool given by its MCP or OpenAI name (KeyError if none)."""
        tool = self.resolve(name)
        if tool is None:
            raise KeyError(name)
        return tool.openai_name

    # -- calling --

    async def call(self, name: str, arguments: dict | None = None) -> ToolResult:
        """Call a tool by its OpenAI name. Never raises for tool trouble (unknown tool, protocol
        error, crash, timeout): those become error results the model can read."""
        tool = self.resolve(name)
        if tool is None:
            return ToolResult(f"Error: unknown tool {name!r}.", True)
        arguments = dict(arguments or {})
        if tool.wrapped and isinstance(arguments.get("value"), dict):
            arguments = arguments["value"]  # MCP arguments must be an object: unwrap only objects
        conn = self.connections[tool.server]
        for attempt in range(2):
            generation = conn.generation
            try:
                return await self._call_once(conn, tool, arguments)
            except MCPError as e:
                if e.code == REQUEST_TIMEOUT:
                    return ToolResult(f"Error: tool {name!r} timed out after {self.tool_timeout_s:g} s.", True,
                                      unavailable=True)
                if e.code != CONNECTION_CLOSED or await conn.alive():
                    return ToolResult(f"Error: {e.message}", True)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, _NotRunning):
                pass
            # The server is gone: restart it once and retry this call on the new process.
            if attempt == 0 and await conn.restart(generation):
                continue
            break
        return ToolResult(f"Error: MCP server {tool.server!r} is not responding (it stopped; restarts are spent).", True,
                          unavailable=True)

    async def _call_once(self, conn: Connection, tool: Tool, arguments: dict) -> ToolResult:
        session = conn.session
        if session is None:
            raise _NotRunning()
        # The SDK's read timeout answers REQUEST_TIMEOUT (and cancels the request on the server);
        # the outer deadline also covers a transport that stops answering altogether.
        with anyio.move_on_after(self.tool_timeout_s + 5) as scope:
            result = await session.call_tool(tool.mcp_name, arguments, read_timeout_seconds=self.tool_timeout_s)
        if scope.cancelled_caught:
            raise MCPError(REQUEST_TIMEOUT, "timed out")
        return convert_result(result, self.truncate)


# --- sync helper for config validation --------------------------------------------------------

async def alist_server_tools(servers: dict[str, dict], connect_timeout_s: float = CONNECT_TIMEOUT_S) -> dict:
    async with ToolBox(servers, connect_timeout_s=connect_timeout_s) as box:
        return box.server_tools


def list_server_tools(servers: dict[str, dict], connect_timeout_s: float = CONNECT_TIMEOUT_S) -> dict[str, list[str]]:
    """{server: [MCP tool names]} from the live servers (each started and stopped again)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(alist_server_tools(servers, connect_timeout_s))
    # Called from inside an event loop (a notebook, an async caller): use a thread of its own.
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = asyncio.run(alist_server_tools(servers, connect_timeout_s))
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
