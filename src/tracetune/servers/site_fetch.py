"""The demo website on loopback, read through a real third-party MCP server.

    python -m tracetune.servers.site_fetch --root data/site --port 27182
    python -m tracetune.servers.site_fetch --root data/site --port 27182 --exec npx @playwright/mcp …

Keeps `--root` served as static files on http://127.0.0.1:PORT, then runs an MCP server on
stdio: by default the PyPI `mcp-server-fetch` server (private addresses allowed, robots.txt
ignored), or, with `--exec`, any stdio MCP server command (e.g. the Playwright browser server),
which inherits this process's stdin/stdout.

The port is fixed so that URLs in prompts and traces are the same on every run, so collect
jobs running at once share one site server per port. Each job holds a shared lock on the
port's lease file while it runs; the first starts the server (`--serve-only`, in a session of
its own so that no job's shutdown takes it down), and the server stops once no job holds the
lease. One listener per port means no request is ever handed to a job on its way out (with a
listener per job, the kernel reset connections queued at a closing one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import functools
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SITE_HEADER = "X-Tracetune-Site"  # every reply names the root it serves: a job checks it shares the right site
START_TIMEOUT_S = 15.0
LEASE_POLL_S = 0.2  # how often the server looks whether any job still holds the lease
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, whatever http_proxy says


class _SiteHandler(SimpleHTTPRequestHandler):
    def end_headers(self) -> None:
        self.send_header(SITE_HEADER, self.directory)
        super().end_headers()

    def log_message(self, *args) -> None:  # one line per request otherwise
        pass


class SiteServer(ThreadingHTTPServer):
    allow_reuse_address = True  # rebind at once over the last server's TIME_WAIT connections
    daemon_threads = False  # server_close() waits for the requests in flight
    block_on_close = True

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def site_root(root: str | Path) -> Path:
    root = Path(root).resolve()
    if not (root / "index.html").is_file():
        raise SystemExit(f"site_fetch: {root}: no index.html (wrong --root?)")
    return root


def serve_site(root: str | Path, port: int, host: str = "127.0.0.1") -> SiteServer:
    """Serve `root` on host:port from a background thread; `.close()` stops it after the
    requests in flight. OSError(EADDRINUSE) when something already listens there."""
    handler = functools.partial(_SiteHandler, directory=str(site_root(root)))
    server = SiteServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="site", daemon=True).start()
    return server


def _state_path(host: str, port: int, suffix: str) -> Path:
    return Path(tempfile.gettempdir()) / f"tracetune-site-{os.getuid()}-{host}-{port}{suffix}"


def served_root(host: str, port: int) -> str | None:
    """The root the site server on host:port serves; "" when something else answers there,
    None when nothing does."""
    request = urllib.request.Request(f"http://{host}:{port}/", method="HEAD")
    try:
        with _NO_PROXY.open(request, timeout=5) as reply:
            return reply.headers.get(SITE_HEADER, "")
    except urllib.error.HTTPError as e:
        return e.headers.get(SITE_HEADER, "")
    except (urllib.error.URLError, OSError):
        return None


@contextlib.contextmanager
def site_lease(root: str | Path, port: int, host: str = "127.0.0.1",
               timeout_s: float = START_TIMEOUT_S) -> Iterator[None]:
    """Keep `root` served on host:port while the block runs: join the server already there, or
    start it. Process death releases the lease too, so a killed job never keeps the site up."""
    root = site_root(root)
    with open(_state_path(host, port, ".lock"), "a") as lease:
        # Blocks only while a server that has just found no lease holder is shutting down.
        fcntl.flock(lease, fcntl.LOCK_SH)
        served = served_root(host, port)
        if served is None:
            served = _start_server(root, host, port, timeout_s)
        if served != str(root):
            raise SystemExit(f"site_fetch: {host}:{port} already serves {served or 'something else'}, "
                             f"not {root}: pick another --port")
        yield


def _start_server(root: Path, host: str, port: int, timeout_s: float) -> str:
    """Start `--serve-only` and wait until a site server answers (ours, or one that a job
    starting at the same moment won the port for)."""
    log_path = _state_path(host, port, ".log")
    with open(log_path, "a") as log:
        subprocess.Popen([sys.executable, "-m", "tracetune.servers.site_fetch", "--serve-only",
                          "--root", str(root), "--port", str(port), "--host", host],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                         start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        served = served_root(host, port)
        if served is not None:
            return served
        time.sleep(0.05)
    raise SystemExit(f"site_fetch: no site server on {host}:{port} after {timeout_s:.0f} s (log: {log_path})")


def serve_until_unleased(root: str | Path, port: int, host: str = "127.0.0.1") -> int:
    """The shared server: serve until no job holds the port's lease (the job that started us
    holds it already). Exits quietly when another server won the port."""
    try:
        server = serve_site(root, port, host)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return 0
        raise SystemExit(f"site_fetch: cannot serve on {host}:{port}: {e.strerror}") from None
    with open(_state_path(host, port, ".lock"), "a") as lease:
        while True:
            time.sleep(LEASE_POLL_S)
            try:
                fcntl.flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            # Still holding the lock: a job arriving now waits, then finds the port free.
            server.close()
            return 0


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


def run_fetch_server() -> None:
    """What `mcp_server_fetch.serve(...)` does (create_server + run_stdio_async), with a short
    tool description, private addresses allowed and robots.txt ignored."""
    from mcp_server_fetch.server import create_server

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per fetch otherwise
    _without_node_readability()
    server = create_server(ignore_robots_txt=True, allow_private_ips=True)
    tool = getattr(server, "_tool_manager", None) and server._tool_manager.get_tool("fetch")
    if tool is not None:  # an SDK without this private seam keeps the stock description
        tool.description = FETCH_DESCRIPTION
    asyncio.run(server.run_stdio_async())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a static site on loopback, then an MCP server on stdio.")
    parser.add_argument("--root", default="data/site", help="directory with the site's files (default: data/site)")
    parser.add_argument("--port", type=int, default=27182, help="fixed loopback port (default: 27182)")
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--serve-only", action="store_true", help=argparse.SUPPRESS)  # the shared server itself
    parser.add_argument("--exec", nargs=argparse.REMAINDER, dest="command",
                        help="run this stdio MCP server command instead of mcp-server-fetch (must come last)")
    args = parser.parse_args(argv)
    # The MCP client stops us with SIGTERM when we are slow to exit: still close cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.serve_only:
        return serve_until_unleased(args.root, args.port, args.host)
    with site_lease(args.root, args.port, args.host):
        if args.command:
            # The child speaks MCP on our stdin/stdout; the lease keeps the site up while it runs.
            return subprocess.run(args.command).returncode
        run_fetch_server()
        return 0

if __name__ == "__main__":
    sys.exit(main())
