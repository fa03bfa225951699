"""One MCP server's process and session: starting it (stdio or streamable HTTP) with the
environment it may see, the handshake deadline, and restarting it. Part of tracetune.runtime:
how a server is kept running never changes what its tools answer."""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import mcp_types as types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

log = logging.getLogger(__name__)

# What a stdio server inherits from us besides PATH and its declared env (never secrets).
INHERITED_ENV = ("HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
CONNECT_TIMEOUT_S = 60.0
CLIENT_INFO = types.Implementation(name="tracetune", version="0.1.0")


class ServerStartError(RuntimeError):
    """An MCP server could not be started or did not complete the handshake."""


def server_env(declared: dict[str, str] | None) -> dict[str, str]:
    """The environment of a stdio server: PATH with this interpreter's bin directory first (so
    `python` and console scripts like `mcp-server-fetch` resolve inside the venv even when it
    is not activated), a few home/locale variables, and what the server declares."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    env = {"PATH": path}
    env.update({k: os.environ[k] for k in INHERITED_ENV if k in os.environ})
    env.update({k: str(v) for k, v in (declared or {}).items()})
    return env


def stdio_parameters(name: str, spec: dict) -> StdioServerParameters:
    env = server_env(spec.get("env"))
    command = spec["command"]
    if command in ("python", "python3"):  # the interpreter running tracetune, whatever PATH says
        command = sys.executable
    else:
        found = shutil.which(command, path=env["PATH"])
        if found is None:
            raise ServerStartError(f"server {name!r}: command {command!r} not found on PATH")
        command = found if os.sep not in command else command
    return StdioServerParameters(command=command, args=[str(a) for a in spec.get("args") or []],
                                 env=env, cwd=spec.get("cwd") or None)


def _expand(value: str) -> str:
    """`${NAME}` in an HTTP header is read from our environment, so tokens stay out of files."""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: os.environ.get(m.group(1), ""), value)


def _errlog():
    """Server stderr goes to ours (the rule's log), or nowhere when ours is not a real file."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return open(os.devnull, "w")


def _leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


async def list_all_tools(session: ClientSession) -> list[types.Tool]:
    tools, cursor = [], None
    while True:
        page = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools += page.tools
        cursor = page.next_cursor
        if not cursor:
            return tools


class Connection:
    """One server's session, owned by a background task so it can be restarted from any task."""

    def __init__(self, name: str, spec: dict, *, connect_timeout_s: float, errlog=None):
        self.name, self.spec = name, spec
        self.connect_timeout_s = connect_timeout_s
        self.errlog = errlog
        self.session: ClientSession | None = None
        self.tools: list[types.Tool] = []
        self.generation = 0  # counts successful starts
        self.restarts_left = 1
        self._lock = anyio.Lock()
        self._stop = anyio.Event()
        self._done = anyio.Event()
        self._group = None

    async def start(self, group) -> None:
        self._group = group
        self._stop, self._done = anyio.Event(), anyio.Event()
        await group.start(self._run)

    async def stop(self) -> None:
        self._stop.set()
        await self._done.wait()

    async def _transport(self, stack: AsyncExitStack):
        if "url" in self.spec:
            headers = {k: _expand(v) for k, v in (self.spec.get("headers") or {}).items()}
            client = await stack.enter_async_context(create_mcp_http_client(headers=headers))
            return await stack.enter_async_context(streamable_http_client(self.spec["url"], http_client=client))
        params = stdio_parameters(self.name, self.spec)
        return await stack.enter_async_context(stdio_client(params, errlog=self.errlog or _errlog()))

    async def _run(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            # The deadline covers the handshake only; it wraps the whole exit stack so that the
            # SDK's own cancel scopes nest inside it.
            with anyio.CancelScope(deadline=anyio.current_time() + self.connect_timeout_s) as scope:
                async with AsyncExitStack() as stack:
                    read, write = await self._transport(stack)
                    session = await stack.enter_async_context(ClientSession(read, write, client_info=CLIENT_INFO))
                    await session.initialize()
                    self.tools = await list_all_tools(session)
                    scope.deadline = math.inf
                    self.session, self.generation = session, self.generation + 1
                    started = True
                    task_status.started()
                    await self._stop.wait()
            if not started:
                raise ServerStartError(f"server {self.name!r}: no handshake within {self.connect_timeout_s:g} s")
        except ServerStartError:
            raise
        except Exception as e:
            if not started:
                raise ServerStartError(f"server {self.name!r}: could not start ({_leaf(e)!r})") from e
            log.warning("MCP server %r: error while closing: %r", self.name, _leaf(e))
        finally:
            self.session = None
            self._done.set()

    async def alive(self) -> bool:
        if self.session is None:
            return False
        try:
            with anyio.fail_after(5):
                await self.session.send_ping()
            return True
        except Exception:
            return False

    async def restart(self, seen_generation: int) -> bool:
        """Restart after a failure seen at `seen_generation` (once per ToolBox); True if running."""
        async with self._lock:
            if self.generation != seen_generation:  # another call restarted it meanwhile
                return self.session is not None
            if self.restarts_left <= 0:
                return False
            self.restarts_left -= 1
            log.warning("MCP server %r: connection lost, restarting it", self.name)
            await self.stop()
            try:
                await self.start(self._group)
            except ServerStartError as e:
                log.warning("%s", e)
                return False
            return True
