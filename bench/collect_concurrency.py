"""Collector throughput at concurrency 1 and 8, and its own overhead per tool call.

The endpoint is the scripted loopback server of tests/fakes.py with a fixed latency per request
(so the model is never the bottleneck); tools are the demo shop server, started once over
streamable HTTP (each trace opens its own MCP session, as in a real run).

    .venv/bin/python bench/collect_concurrency.py [--traces 32] [--latency 0.25]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fakes import FakeEndpoint, tool_then_answer  # noqa: E402

from tracetune.agent import Recorder, Settings  # noqa: E402
from tracetune.runtime.endpoint import Endpoint  # noqa: E402
from tracetune.collect import acollect  # noqa: E402
from tracetune.config import TaskFile  # noqa: E402
from tracetune.mcp_client import ToolBox  # noqa: E402
from tracetune.runtime.serving import free_port  # noqa: E402


def start_shop() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tracetune.servers.shop", "--transport", "streamable-http",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("shop server did not start")


def taskfile(url: str, n: int) -> TaskFile:
    tasks = {f"t{i}": {"id": f"t{i}", "prompt": ["Find the blue widget"], "servers": ["shop"], "split": "train",
                       "samples": 1, "check": {"tool_called": "search_products"}} for i in range(n)}
    return TaskFile("bench", {"shop": {"url": url}}, tasks)


def traces_per_minute(tf: TaskFile, endpoint: Endpoint, concurrency: int) -> tuple[float, int]:
    settings = Settings(concurrency=concurrency, temperature=0.0)
    start = time.perf_counter()
    by_task = asyncio.run(acollect(tf, tf.ids(), endpoint, settings, reference=False))
    elapsed = time.perf_counter() - start
    traces = [t for ts in by_task.values() for t in ts]
    failed = sum(t["outcome"]["status"] != "answered" or not t["check"]["passed"] for t in traces)
    return len(traces) / elapsed * 60, failed


async def call_overhead(url: str, calls: int) -> tuple[float, float]:
    """Mean seconds per tool call through the agent's path (validation, ToolBox, result
    conversion, message building) and through a bare MCP session, on the same server."""
    async with ToolBox({"shop": {"url": url}}) as box:
        box.openai_tools()
        rec = Recorder([])
        call = {"id": "c", "type": "function", "function": {"name": "search_products", "arguments": '{"query": "widget"}'}}
        for _ in range(5):
            await rec.run_tool_call(box, call)
        start = time.perf_counter()
        for _ in range(calls):
            await rec.run_tool_call(box, call)
        agent_path = (time.perf_counter() - start) / calls
        session = box.connections["shop"].session
        start = time.perf_counter()
        for _ in range(calls):
            await session.call_tool("search_products", {"query": "widget"})
        bare = (time.perf_counter() - start) / calls
    return agent_path, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.25, help="seconds per endpoint request")
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    proc, url = start_shop()
    try:
        policy = tool_then_answer("search_products", {"query": "blue widget"}, "Found it.")
        with FakeEndpoint(policy, latency_s=args.latency) as fake:
            endpoint = Endpoint(fake.base_url, "fake")
            tf = taskfile(url, args.traces)
            rate1, failed1 = traces_per_minute(tf, endpoint, 1)
            rate8, failed8 = traces_per_minute(tf, endpoint, 8)
        agent_path, bare = asyncio.run(call_overhead(url, args.calls))
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"endpoint latency {args.latency * 1000:.0f} ms/request, {args.traces} traces of 2 requests + 1 tool call")
    print(f"concurrency 1: {rate1:8.1f} traces/min ({failed1} failed)")
    print(f"concurrency 8: {rate8:8.1f} traces/min ({failed8} failed)")
    print(f"speed-up at 8: {rate8 / rate1:.2f}x   (target >= 6x)")
    print(f"tool call through the agent: {agent_path * 1000:.2f} ms; bare MCP session: {bare * 1000:.2f} ms")
    print(f"collector overhead per tool call: {(agent_path - bare) * 1000:.2f} ms   (target < 5 ms)")


if __name__ == "__main__":
    main()
