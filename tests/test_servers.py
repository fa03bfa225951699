"""The demo servers (shop, site_fetch) and the demo task file, against live processes."""

import asyncio
import json
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tracetune.agent import replay_reference
from tracetune.checks import run_check
from tracetune.config import load_tasks
from tracetune.mcp_client import ToolBox
from tracetune.servers import site_fetch
from tracetune.runtime.serving import free_port

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "data" / "site"
SHOP = {"command": "python", "args": ["-m", "tracetune.servers.shop"]}
# Tool errors a reference plan may meet on purpose (the shop refusing); anything else, such as
# a fetch that failed or a server that stopped, is a bug in the servers or the client.
SHOP_REFUSALS = ("cannot be cancelled", "No order", "in stock; order not placed", "Unknown SKU")


def _on_free_port(task_file: Path, tmp_path: Path) -> Path:
    """A copy of a task file with the site's fixed port replaced by a free one (on a shared
    machine something else may listen on the fixed port)."""
    text = task_file.read_text()
    fixed = re.search(r"--port, \"(\d+)\"", text).group(1)
    assert text.count(f"127.0.0.1:{fixed}/") >= 10
    copy = tmp_path / task_file.name
    copy.write_text(text.replace(fixed, str(free_port())))
    return copy


def site_spec(port: int) -> dict:
    return {"command": "python", "args": ["-m", "tracetune.servers.site_fetch", "--root", str(SITE),
                                          "--port", str(port)]}


def test_shop_over_stdio_is_deterministic():
    async def scenario():
        async with ToolBox({"shop": SHOP}, tool_timeout_s=10) as box:
            tools = box.openai_tools()
            assert {t["function"]["name"] for t in tools} >= {
                "search_products", "get_product", "check_stock", "shipping_quote", "create_order",
                "get_order", "cancel_order"}
            # The schemas go into every prompt of a 135M model: keep them small.
            assert len(json.dumps(tools)) < 2000
            hits = await box.call("search_products", {"query": "blankets"})
            assert hits.content.splitlines() == ["HM-01 Wool blanket - $59.00", "OT-02 Picnic blanket - $18.00"]
            assert "Leeds 12, Bristol 0, Glasgow 5 (total 17)" in (await box.call("check_stock", {"sku": "kb-03"})).content
            quote = await box.call("shipping_quote", {"country": "UK", "sku": "HM-01", "quantity": 1})
            assert "shipping free" in quote.content  # free UK shipping from $50
            assert (await box.call("shipping_quote", {"sku": "HM-01"})).is_error  # no destination
            first = await box.call("create_order", {"sku": "GD-03", "quantity": 2})
            second = await box.call("create_order", {"sku": "GD-03"})
            assert "ORD-2001" in first.content and "$22.40" in first.content and "ORD-2002" in second.content
            too_many = await box.call("create_order", {"sku": "HM-01", "quantity": 5})
            assert too_many.is_error and "Only 3" in too_many.content
            cancel = await box.call("cancel_order", {"order_id": "ORD-1002"})
            again = await box.call("cancel_order", {"order_id": "ORD-1002"})
            assert cancel == again and "$17.00" in cancel.content  # idempotent
            shipped = await box.call("cancel_order", {"order_id": "ORD-1001"})
            assert shipped.is_error and "shipped" in shipped.content
            assert (await box.call("get_product", {"sku": "ZZ-99"})).is_error

    asyncio.run(scenario())


def test_site_fetch_reads_a_local_page_without_network_or_node():
    port = free_port()

    async def scenario():
        async with ToolBox({"site": site_spec(port)}, tool_timeout_s=20) as box:
            assert [t["function"]["name"] for t in box.openai_tools()] == ["fetch"]
            page = await box.call("fetch", {"url": f"http://127.0.0.1:{port}/hours.html"})
            assert not page.is_error
            assert "Sunday: 11:00 to 16:00" in page.content
            missing = await box.call("fetch", {"url": f"http://127.0.0.1:{port}/nope.html"})
            assert missing.is_error and "404" in missing.content

    asyncio.run(scenario())


def test_fetch_simplifies_html_without_node_or_npm(monkeypatch):
    """Stock readabilipy runs `node -v` and, lacking its Node modules, `npm install` on the first
    fetch; site_fetch switches it to its pure-Python extractor, so no process is started."""
    import subprocess

    import readabilipy.simple_json
    from mcp_server_fetch.server import extract_content_from_html

    monkeypatch.setattr(readabilipy.simple_json, "simple_json_from_html_string",
                        readabilipy.simple_json.simple_json_from_html_string)  # undone after the test

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"subprocess started: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    site_fetch._without_node_readability()
    markdown = extract_content_from_html((SITE / "hours.html").read_text())
    assert "Sunday: 11:00 to 16:00" in markdown


def _page(port: int, page: str = "contact.html") -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/{page}", timeout=5) as reply:
        return reply.read()


def _stops_within(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while site_fetch.served_root("127.0.0.1", port) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_site_server_lives_while_any_job_holds_the_lease():
    port = free_port()
    with site_fetch.site_lease(SITE, port):
        with site_fetch.site_lease(SITE, port):  # a second collect job joins the same server
            assert b"14 Mill Lane" in _page(port)
        time.sleep(3 * site_fetch.LEASE_POLL_S)
        assert b"14 Mill Lane" in _page(port)  # the first job still reads it
    assert _stops_within(port, 5)
    with site_fetch.site_lease(SITE, port):  # a later job starts it again
        assert b"14 Mill Lane" in _page(port)
    assert _stops_within(port, 5)


def test_jobs_coming_and_going_never_see_a_failed_request():
    """Four jobs at a time, each holding the lease for a few requests: with a listener per
    job, the kernel reset about one request in eight queued at a listener that was closing."""
    port = free_port()

    def job(_):
        failures = 0
        with site_fetch.site_lease(SITE, port):
            for page in ("index.html", "hours.html", "contact.html"):
                try:
                    failures += not _page(port, page)
                except OSError:
                    failures += 1
        return failures

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(job, range(80))) == 0
    assert _stops_within(port, 5)


def test_a_port_serving_another_site_is_refused(tmp_path):
    (tmp_path / "index.html").write_text("<p>another site</p>")
    port = free_port()
    with site_fetch.site_lease(SITE, port):
        with pytest.raises(SystemExit, match=f"already serves {SITE}, not {tmp_path}"):
            with site_fetch.site_lease(tmp_path, port):
                pass


def test_site_refuses_a_root_without_index(tmp_path):
    with pytest.raises(SystemExit, match="no index.html"):
        with site_fetch.site_lease(tmp_path, free_port()):
            pass


def test_demo_task_file_shape():
    taskfile = load_tasks(ROOT / "tasks.yaml")
    tasks = list(taskfile.tasks.values())
    evals = [t for t in tasks if t["split"] == "eval"]
    assert len(tasks) >= 40 and len(evals) >= 10
    assert all(t.get("reference") and t.get("check") for t in tasks)
    multi_call = [t for t in tasks if sum("tool" in step for step in t["reference"]) >= 2]
    assert len(multi_call) * 3 >= len(tasks)
    assert any(len(t["prompt"]) > 1 for t in tasks)


MUTATING_TOOLS = {"create_order", "cancel_order"}


@pytest.mark.slow
def test_every_reference_plan_passes_its_check(tmp_path):
    """Replay each plan against live servers and run the task's check. Plans that change the
    shop (orders) get fresh servers, as collect gives every trace; read-only plans share one
    set of servers per server combination, to keep the test quick."""
    taskfile = load_tasks(_on_free_port(ROOT / "tasks.yaml", tmp_path))
    servers = dict(taskfile.servers)

    def mutates(task) -> bool:
        return any(step.get("tool") in MUTATING_TOOLS for step in task["reference"])

    async def fresh(task, limit):
        async with limit:
            async with ToolBox({s: servers[s] for s in task["servers"]}, tool_timeout_s=30) as box:
                tools = box.openai_tools(task["servers"], task.get("tools"))
                return [(task["id"], await replay_reference(box, task, tools, taskfile.system_prompt))]

    async def shared(combination, tasks, limit):
        async with limit:
            async with ToolBox({s: servers[s] for s in combination}, tool_timeout_s=30) as box:
                return [(t["id"], await replay_reference(box, t, box.openai_tools(t["servers"], t.get("tools")),
                                                         taskfile.system_prompt)) for t in tasks]

    async def replay_all():
        limit = asyncio.Semaphore(4)
        groups: dict[tuple, list] = {}
        jobs = []
        for task in taskfile.tasks.values():
            if mutates(task):
                jobs.append(fresh(task, limit))
            else:
                groups.setdefault(tuple(task["servers"]), []).append(task)
        jobs += [shared(combination, tasks, limit) for combination, tasks in groups.items()]
        return [pair for result in await asyncio.gather(*jobs) for pair in result]

    failures = []
    traces = asyncio.run(replay_all())
    assert len(traces) == len(taskfile.tasks)
    for task_id, trace in traces:
        passed, detail = run_check(taskfile.tasks[task_id]["check"], trace)
        if not passed:
            failures.append(f"{task_id}: {detail}")
        errors = [m["content"] for m in trace["messages"]
                  if m["role"] == "tool" and m["tool_call_id"] in trace["tool_errors"]]
        failures += [f"{task_id}: {e[:120]}" for e in errors if not any(r in e for r in SHOP_REFUSALS)]
    assert not failures, failures
