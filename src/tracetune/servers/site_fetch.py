"""The demo website on loopback, read through a real third-party MCP server.

    python -m tracetune.servers.site_fetch --root data/site --port 27182
    python -m tracetune.servers.site_fetch --root data/site --port 27182 --exec npx @playwright/mcp …

Serves `--root` as static files on http://127.0.0.1:PORT in a background thread, then runs an
MCP server on stdio in the same process: by default the PyPI `mcp-server-fetch` server
(private addresses allowed, robots.txt ignored), or, with `--exec`, any stdio MCP server
command (e.g. the Playwright browser server), which inherits this process's stdin/stdout.

The port is fixed so that URLs in prompts and traces are the same on every run; the socket
uses SO_REUSEPORT so that several collect jobs running at once can each serve the same
site on the same port (they serve identical files, so it does not matter which answers).
Sharing has one hazard: the kernel may hand a connection to a process that is just exiting.
So each process stops accepting and finishes the requests it took before it exits, and the
fetch client retries a loopback request whose connection broke (a reset in the accept queue
of a closing listener).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # stderr is the MCP server's log; keep it readable
        pass


class SiteServer(ThreadingHTTPServer):
    allow_reuse_address = True
    allow_reuse_port = True
    daemon_threads = False  # server_close() waits for requests in flight (other jobs' too)
    block_on_close = True

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def serve_site(root: str | Path, port: int, host: str = "127.0.0.1") -> SiteServer:
    """Start serving `root` on host:port in a daemon thread; returns the server (call
    `.close()` to stop it after the requests in flight)."""
    root = Path(root)
    if not (root / "index.html").is_file():
        raise SystemExit(f"site_fetch: {root}: no index.html (wrong --root?)")
    handler = functools.partial(_QuietHandler, directory=str(root))
    try:
        server = SiteServer((host, port), handler)
    except OSError as e:
        raise SystemExit(f"site_fetch: cannot serve on {host}:{port}: {e.strerror}") from None
    threading.Thread(target=server.serve_forever, name="site", daemon=True).start()
    return server


def _without_node_readability() -> None:
    """Make mcp-server-fetch simplify HTML with readabilipy's pure-Python extractor.

    With Node on PATH, readabilipy would `npm install` Readability.js into site-packages on
    the first fetch (network, a write into the venv, unpinned versions) and then shell out to
    node for every page. The pure-Python path needs neither, and gives the same text on every
    machine whether or not Node is installed."""
    import readabilipy.simple_json as simple_json

    original = simple_json.simple_json_from_html_string

    def pure_python(html, *args, **kwargs):
        kwargs["use_readability"] = False
        return original(html, *args, **kwargs)

    simple_json.simple_json_from_html_string = pure_python


# The stock description (about 300 characters, mostly about having internet access) would go
# into every prompt of a small model; the tool itself is unchanged.
FETCH_DESCRIPTION = "Fetch a URL and return the page as markdown text."


def _retrying_loopback_client() -> None:
    """Give mcp-server-fetch's HTTP client a transport that retries a loopback request whose
    connection broke before an answer came (see the module docstring); other hosts as before."""
    import httpx
    import mcp_server_fetch.server as fetch_server

    class RetryingTransport(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request):
            for attempt in range(3):
                try:
                    return await super().handle_async_request(request)
                except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError):
                    if request.url.host not in ("127.0.0.1", "localhost") or attempt == 2:
                        raise
                    await asyncio.sleep(0.05 * (attempt + 1))

    original = fetch_server.make_client

    def make_client(proxy_url):
        if proxy_url:
            return original(proxy_url)
        return httpx.AsyncClient(transport=RetryingTransport())

    fetch_server.make_client = make_client


def run_fetch_server() -> None:
    """What `mcp_server_fetch.serve(...)` does (create_server + run_stdio_async), with a short
    tool description, private addresses allowed and robots.txt ignored."""
    from mcp_server_fetch.server import create_server

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per fetch otherwise
    _without_node_readability()
    _retrying_loopback_client()
    server = create_server(ignore_robots_txt=True, allow_private_ips=True)
    tool = getattr(server, "_tool_manager", None) and server._tool_manager.get_tool("fetch")
    if tool is not None:  # an SDK without this private seam keeps the stock description
        tool.description = FETCH_DESCRIPTION
    asyncio.run(server.run_stdio_async())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a static site on loopback, then an MCP server on stdio.")
    parser.add_argument("--root", default="data/site", help="directory with the site's files (default: data/site)")
    parser.add_argument("--port", type=int, default=27182, help="fixed loopback port (default: 27182)")
    parser.add_argument("--exec", nargs=argparse.REMAINDER, dest="command",
                        help="run this stdio MCP server command instead of mcp-server-fetch (must come last)")
    args = parser.parse_args(argv)
    # The MCP client stops us with SIGTERM when we are slow to exit: still close cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    site = serve_site(args.root, args.port)
    try:
        if args.command:
            # The child speaks MCP on our stdin/stdout; we only keep the site up while it runs.
            return subprocess.run(args.command).returncode
        run_fetch_server()
        return 0
    finally:
        site.close()


if __name__ == "__main__":
    sys.exit(main())
