"""The browser example end to end: examples/browser/tasks.yaml collected (reference plans replayed
through the real Playwright MCP server driving chromium) against the demo site."""

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tracetune.agent import Settings
from tracetune.checks import verdict
from tracetune.collect import acollect
from tracetune.config import load_tasks
from tracetune.mcp_client import ToolBox
from tracetune.runtime.serving import free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "browser"
PLAYWRIGHT_MCP = EXAMPLE / "node_modules" / ".bin" / "playwright-mcp"
FIXED_PORT = "27182"

pytestmark = pytest.mark.browser


def _missing() -> str | None:
    if not Path("/usr/bin/chromium").exists():
        return "chromium is not installed"
    if shutil.which("node") is None or not PLAYWRIGHT_MCP.exists():
        return "node or @playwright/mcp is missing"
    return None


@pytest.fixture(scope="module")
def browser_installed():
    """Skip with the reason on a machine without the browser; in CI (which runs install.sh
    first) a missing browser is a failure, not a skip."""
    missing = _missing()
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"{missing}, although CI runs examples/browser/install.sh first")
    if missing:
        pytest.skip(f"{missing} (run examples/browser/install.sh)")


@pytest.fixture(scope="module")
def taskfile(browser_installed, tmp_path_factory):
    """The example's task file on a free port (the fixed one may be in use on a shared machine)."""
    text = (EXAMPLE / "tasks.yaml").read_text()
    assert f'--port, "{FIXED_PORT}",' in text and f"127.0.0.1:{FIXED_PORT}/" in text
    path = tmp_path_factory.mktemp("browser") / "tasks.yaml"
    path.write_text(text.replace(FIXED_PORT, str(free_port())))
    return load_tasks(path)


def test_example_task_file_is_valid():
    tf = load_tasks(EXAMPLE / "tasks.yaml")
    assert tf.ids("eval") and tf.ids("train")
    assert all(t.get("reference") for t in tf.tasks.values())


def test_browser_tools_listed(taskfile):
    async def names():
        async with ToolBox(taskfile.servers, tool_timeout_s=60) as box:
            return [t["function"]["name"] for t in box.openai_tools()]

    tools = asyncio.run(names())
    assert {"browser_navigate", "browser_snapshot", "browser_click"} <= set(tools)


def test_collect_reference_traces_end_to_end(taskfile):
    """Each plan goes navigate → snapshot (→ click → snapshot): the page text reaches the trace
    and every task's check passes."""
    settings = Settings(concurrency=3, truncate=4000, tool_timeout_s=60)
    traces = asyncio.run(acollect(taskfile, taskfile.ids(), None, settings))
    for task_id, (trace,) in traces.items():
        assert trace["outcome"]["status"] == "answered", (task_id, trace["outcome"])
        judged = verdict(taskfile.tasks[task_id]["check"], trace)
        assert judged["passed"], (task_id, judged)
        errors = [m["content"] for m in trace["messages"] if m.get("tool_call_id") in trace["tool_errors"]]
        assert not errors, (task_id, errors)
        snapshots = [m["content"] for m in trace["messages"] if m["role"] == "tool" and m["name"] == "browser_snapshot"]
        assert snapshots and "### Snapshot" in snapshots[-1], task_id
    hours = [m["content"] for m in traces["browser-hours-sunday"][0]["messages"] if m["role"] == "tool"]
    assert "Sunday: 11:00 to 16:00" in hours[-1]
    phone = [m["content"] for m in traces["browser-phone-via-home"][0]["messages"] if m["role"] == "tool"]
    assert "01904 555 210" in phone[-1]  # the click really went to the contact page
