"""`tracetune review`: the verdicts it shows are curate's, its actions write curate's inputs (and
only those, only under curation/), and what curate would refuse it refuses."""

import json
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tracetune.curate import curate_task, edit_paths, read_trace_ids
from tracetune.jsonio import InputError
from tracetune.review import Project, ReviewServer, apply_action, listing

ROOT = Path(__file__).resolve().parents[1]
RAW = Path(__file__).parent / "fixtures" / "raw" / "price-total.jsonl"
CHECK = {"contains": ["25"]}
TASKS = {
    "servers": {"shop": {"command": "python", "args": ["-m", "tracetune.servers.shop"]}},
    "tasks": [{"id": "price-total", "prompt": "What do two blue widgets cost?", "servers": ["shop"],
               "split": "train", "check": CHECK},
              {"id": "held-out", "prompt": "Hours?", "servers": ["shop"], "split": "eval",
               "check": {"contains": ["9"]}}],
}


@pytest.fixture
def project(tmp_path) -> Project:
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump(TASKS, sort_keys=False))
    (tmp_path / "data" / "traces" / "raw").mkdir(parents=True)
    shutil.copy(RAW, tmp_path / "data" / "traces" / "raw" / "price-total.jsonl")
    (tmp_path / "curation").mkdir()
    (tmp_path / "curation" / "reject.txt").write_text("# traces nobody should learn from\nother-task--s1\n")
    return Project(tmp_path)


def curated(project: Project) -> tuple[list[dict], dict]:
    """What the curate job would make of the project's files right now."""
    root = project.root
    return curate_task("price-total", root / "data/traces/raw/price-total.jsonl", check=CHECK,
                       edits=edit_paths(root / "curation/edits", "price-total"),
                       rejected=read_trace_ids(root / "curation/reject.txt", "price-total"),
                       kept=read_trace_ids(root / "curation/keep.txt", "price-total"),
                       drop_unrecovered_tool_errors=project.config["curate"]["drop_unrecovered_tool_errors"])


def shown(project: Project) -> dict[str, str | None]:
    return {r["trace_id"]: r["reason"] for r in listing(project, {})["rows"]}


def test_the_page_shows_curates_verdicts(project):
    _, stats = curated(project)
    assert {i: r for i, r in shown(project).items() if r} == stats["dropped_traces"]
    page = listing(project, {"verdict": "check_failed"})
    assert [r["trace_id"] for r in page["rows"]] == ["price-total--s2"]
    assert page["counts"][0] == {"task": "price-total", "split": "train", "traces": 8, "kept": 3, "dropped": 5,
                                 "error": None}
    assert [r["trace_id"] for r in listing(project, {"split": "eval"})["rows"]] == []


def test_keep_and_reject_override_the_filters_and_keep_comments(project):
    apply_action(project, "price-total--s2", {"action": "keep"})  # its check failed
    apply_action(project, "price-total--s0", {"action": "reject"})
    kept, stats = curated(project)
    assert "price-total--s2" in [t["trace_id"] for t in kept]
    assert stats["dropped_traces"]["price-total--s0"] == "rejected"
    assert shown(project)["price-total--s2"] is None
    reject = (project.root / "curation/reject.txt").read_text()
    assert reject == "# traces nobody should learn from\nother-task--s1\nprice-total--s0\n"
    apply_action(project, "price-total--s0", {"action": "keep"})  # from one list to the other
    assert read_trace_ids(project.root / "curation/reject.txt") == ["other-task--s1"]
    assert read_trace_ids(project.root / "curation/keep.txt") == ["price-total--s0", "price-total--s2"]
    apply_action(project, "price-total--s2", {"action": "clear"})
    assert shown(project)["price-total--s2"] == "check_failed"


def test_a_kept_trace_still_needs_valid_calls(project):
    apply_action(project, "price-total--s4", {"action": "keep"})
    assert shown(project)["price-total--s4"] == "invalid_tool_call"


def test_edits_write_a_trace_curate_accepts(project):
    done = apply_action(project, "price-total--s2", {"action": "set_text", "index": "6",
                                                      "content": "Two blue widgets cost $25.00.", "reasoning": ""})
    assert done == "saved curation/edits/price-total--s2.json"
    _, stats = curated(project)
    assert stats["edited"] == ["price-total--s2"] and "price-total--s2" not in stats["dropped_traces"]
    edit = json.loads((project.root / "curation/edits/price-total--s2.json").read_text())
    assert edit["messages"][6] == {"role": "assistant", "content": "Two blue widgets cost $25.00."}

    apply_action(project, "price-total--s0", {"action": "set_arguments", "index": "2", "call": "0",
                                              "arguments": '{\n  "item": "red widget"\n}'})
    edit = json.loads((project.root / "curation/edits/price-total--s0.json").read_text())
    assert edit["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"item": "red widget"}'

    apply_action(project, "price-total--s0", {"action": "delete_turn", "index": "4"})  # the add call
    edit = json.loads((project.root / "curation/edits/price-total--s0.json").read_text())
    assert [m["role"] for m in edit["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert edit["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"item": "red widget"}'

    apply_action(project, "price-total--s0", {"action": "truncate", "index": "2"})
    edit = json.loads((project.root / "curation/edits/price-total--s0.json").read_text())
    assert [m["role"] for m in edit["messages"]] == ["system", "user", "assistant", "tool"]
    assert edit["outcome"]["status"] == "max_turns" and edit["outcome"]["turns"] == 1
    assert curated(project)[1]["dropped_traces"]["price-total--s0"] == "not_answered"

    apply_action(project, "price-total--s0", {"action": "revert"})
    assert not (project.root / "curation/edits/price-total--s0.json").exists()


@pytest.mark.parametrize("form, reason", [
    ({"action": "set_arguments", "index": "2", "call": "0", "arguments": '{"item": 5}'},
     "messages[2].tool_calls[0].function.arguments: arguments do not match the schema: 5 is not of type 'string'"),
    ({"action": "set_arguments", "index": "2", "call": "0", "arguments": "{item"},
     "messages[2].tool_calls[0].function.arguments: arguments are not valid JSON"),
    ({"action": "set_text", "index": "3", "content": "x"}, "messages[3]: not an assistant message"),
    ({"action": "delete_turn", "index": "6"}, "messages[6]: makes no tool call"),
    ({"action": "format_disk"}, "action: unknown action 'format_disk'"),
])
def test_an_invalid_edit_is_refused_and_writes_nothing(project, form, reason):
    before = sorted(p.relative_to(project.root) for p in project.root.rglob("*"))
    with pytest.raises(InputError) as e:
        apply_action(project, "price-total--s0", form)
    assert reason in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.relative_to(project.root) for p in project.root.rglob("*")) == before


@pytest.mark.parametrize("trace_id", ["../../config", "price-total--s0/../../x", "price-total--s99",
                                      "other-task--s1", ".", "..", "price-total--s0\x00", "price-total--s0\n"])
def test_untrusted_trace_ids_touch_nothing(project, trace_id):
    before = {p: p.read_bytes() for p in project.root.rglob("*") if p.is_file()}
    for form in ({"action": "reject"}, {"action": "set_text", "index": "6", "content": "x"}, {"action": "revert"}):
        with pytest.raises(InputError, match="is not a trace of this project"):
            apply_action(project, trace_id, form)
    assert {p: p.read_bytes() for p in project.root.rglob("*") if p.is_file()} == before


def test_a_broken_hand_edit_is_shown_not_fatal(project):
    edits = project.root / "curation/edits"
    edits.mkdir()
    (edits / "price-total--s0.json").write_text("{not json")
    page = listing(project, {})
    assert "price-total--s0.json: not valid JSON" in page["counts"][0]["error"]
    assert page["rows"] == []


def test_the_server_serves_loopback_and_its_own_forms_only(project):
    import threading

    server = ReviewServer(project, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert server.server_address[0] == "127.0.0.1"

        def post(path, data, host=None):
            request = urllib.request.Request(server.url.rstrip("/") + path, data=data.encode(), method="POST")
            if host:
                request.add_header("Host", host)
            try:
                with urllib.request.urlopen(request) as response:
                    return response.status
            except urllib.error.HTTPError as e:
                return e.code

        assert post("/trace/price-total--s0", "action=reject") == 403  # no token: another site's form
        assert post("/trace/price-total--s0", f"action=reject&token={server.token}", host="evil.example") == 403
        assert read_trace_ids(project.root / "curation/reject.txt", "price-total") == []
        assert post("/trace/price-total--s0", f"action=reject&token={server.token}") == 200  # after the redirect
        assert read_trace_ids(project.root / "curation/reject.txt", "price-total") == ["price-total--s0"]
        with urllib.request.urlopen(server.url + "trace/price-total--s2") as response:
            html = response.read().decode()
        assert "check_failed" in html and "edit the final answer" in html
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served(project):
    import threading

    server = ReviewServer(project, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def fetch(url: str, headers: dict | None = None, data: bytes | None = None) -> tuple[int, dict, str]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_no_page_may_frame_the_review_page_nor_run_an_unnonced_script(served):
    status, headers, html = fetch(served.url + "trace/price-total--s0")
    assert status == 200 and headers["X-Frame-Options"] == "DENY"
    policy = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
    assert policy["frame-ancestors"] == "'none'"
    nonce = policy["script-src"].removeprefix("'nonce-").removesuffix("'")
    assert "unsafe-inline" not in policy["script-src"] and len(nonce) >= 16
    assert not re.search(r"<[^>]*\son[a-z]+=", html)  # no inline event handler (the nonce would not cover it)
    assert html.count("<script") == html.count(f'<script nonce="{nonce}">')
    assert fetch(served.url + "trace/price-total--s0")[1]["Content-Security-Policy"] != headers["Content-Security-Policy"]


def test_a_trace_id_ending_in_a_newline_is_refused_and_writes_nothing(served, project):
    before = {p: p.read_bytes() for p in project.root.rglob("*") if p.is_file()}
    status, _, body = fetch(served.url + "trace/price-total--s0%0A",
                            data=f"action=reject&token={served.token}".encode())
    assert status == 404 and "is not a trace of this project" in body
    assert {p: p.read_bytes() for p in project.root.rglob("*") if p.is_file()} == before


def test_an_oversized_body_is_refused_before_it_is_read(served, project):
    import socket

    with socket.create_connection(served.server_address, timeout=10) as sock:  # 50 MB announced, 10 bytes sent
        sock.sendall(b"POST /trace/price-total--s0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 52428800\r\n\r\naction=rej")
        assert sock.recv(200).startswith(b"HTTP/1.0 413")
    status, _, _ = fetch(served.url + "trace/price-total--s0", headers={"Content-Length": "-5"}, data=b"x")
    assert status in (400, 413)
    assert read_trace_ids(project.root / "curation/reject.txt", "price-total") == []


def test_the_plan_is_for_the_page_s_own_script_and_one_at_a_time(served, project, monkeypatch):
    import threading

    release, asked = threading.Event(), []

    def planned_jobs():
        asked.append(1)
        release.wait(30)
        return ["curate:task=price-total"]

    monkeypatch.setattr(project, "planned_jobs", planned_jobs)
    assert fetch(served.url + "plan")[0] == 403  # what any web page's <img> or fetch() would send
    assert fetch(served.url + "plan", {"X-Review-Token": "guess"})[0] == 403
    first = threading.Thread(target=lambda: asked.append(fetch(served.url + "plan", {"X-Review-Token": served.token})))
    first.start()
    while not asked:
        pass
    status, headers, _ = fetch(served.url + "plan", {"X-Review-Token": served.token})
    assert status == 429 and headers["Retry-After"]
    release.set()
    first.join()
    assert asked[1][0] == 200 and json.loads(asked[1][2]) == {"jobs": ["curate:task=price-total"]}


def test_a_burst_of_connections_is_answered_and_an_idle_one_dropped(served, monkeypatch):
    import socket
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(64) as pool:
        statuses = list(pool.map(lambda _: fetch(served.url + "trace/price-total--s0")[0], range(200)))
    assert statuses == [200] * 200
    import tracetune.review

    monkeypatch.setattr(tracetune.review.ReviewHandler, "timeout", 0.5)
    with socket.create_connection(served.server_address, timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")  # and nothing more
        assert sock.recv(100) == b""  # closed by the server, not held open


def test_saving_a_text_unchanged_keeps_its_bytes(project):
    path = project.root / "data/traces/raw/price-total.jsonl"
    lines = path.read_text().splitlines()
    trace = json.loads(lines[0])
    trace["messages"][6]["content"] = "\nTwo blue widgets:\n  $25.00\r\nin all."
    path.write_text("\n".join([json.dumps(trace), *lines[1:]]) + "\n")
    browser_sent = "\nTwo blue widgets:\r\n  $25.00\r\nin all."  # a form sends every line break as CRLF
    apply_action(project, "price-total--s0", {"action": "set_text", "index": "6", "content": browser_sent,
                                              "reasoning": "The sum is 25."})
    saved = json.loads((project.root / "curation/edits/price-total--s0.json").read_text())
    assert saved["messages"][6] == trace["messages"][6]
    apply_action(project, "price-total--s0", {"action": "set_text", "index": "6", "content": "A\r\nB",
                                              "reasoning": "The sum is 25."})
    saved = json.loads((project.root / "curation/edits/price-total--s0.json").read_text())
    assert saved["messages"][6]["content"] == "A\nB"  # typed line breaks are LF, as in every trace


@pytest.mark.browser
def test_in_a_browser_a_hostile_page_cannot_frame_it_and_unchanged_edits_round_trip(served, project, chromium):
    import http.server
    import threading

    from playwright.sync_api import sync_playwright

    path = project.root / "data/traces/raw/price-total.jsonl"
    lines = path.read_text().splitlines()
    trace = json.loads(lines[0])
    original = "\nTwo blue widgets:\n  $25.00 in all.\n"  # a leading newline, which HTML would drop
    trace["messages"][6]["content"] = original
    path.write_text("\n".join([json.dumps(trace), *lines[1:]]) + "\n")
    hostile_html = (f'<p>win a prize</p><iframe id="f" src="{served.url}trace/price-total--s0" '
                    'style="opacity:0.01" width="800" height="600"></iframe>').encode()

    class Hostile(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(hostile_html)

        def log_message(self, *args):
            pass

    hostile = http.server.HTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=hostile.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{hostile.server_port}/", wait_until="load")
            framed = [f for f in page.frames if f is not page.main_frame]
            assert framed and not any(f.query_selector("input[name=token]") for f in framed)
            assert read_trace_ids(project.root / "curation/reject.txt", "price-total") == []

            page.goto(served.url + "trace/price-total--s0")
            page.locator("summary", has_text="edit the final answer").click()
            form = page.locator("details.edit[open] form")
            assert form.locator("textarea[name=content]").input_value() == original
            form.locator("button", has_text="save text").click()
            assert "saved" in page.inner_text("#done")
            browser.close()
    finally:
        hostile.shutdown()
        hostile.server_close()
    saved = json.loads((project.root / "curation/edits/price-total--s0.json").read_text())
    assert saved["messages"][6]["content"] == original


# --- the page in a real browser, on a built workflow -------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_base):
    """A workflow with curation and the dataset built: three train tasks (stock-teapot also with a
    model sample, from a scripted endpoint, that fails its check) and a held-out task."""
    from fakes import FakeEndpoint
    from test_workflow import DEMO_TASKS, TRAIN3, make_workflow, planned_jobs, snakemake, write_tasks

    tmp = tmp_path_factory.mktemp("review")
    base = tiny_base
    tasks = [dict(DEMO_TASKS[t]) for t in TRAIN3]
    tasks[1]["samples"] = 1
    with FakeEndpoint(lambda messages: {"role": "assistant", "content": "There are 7 teapots."}) as fake:
        wf = make_workflow(tmp, [], {"base_model": str(base), "endpoint": {"base_url": fake.base_url, "model": "fake"}})
        write_tasks(wf, tasks)
        snakemake(wf, "data/dataset/train.parquet", "data/reports/curation.json")
    assert planned_jobs(wf, "data/dataset/train.parquet", "data/reports/curation.json") == []
    return wf


@pytest.mark.browser
def test_review_in_a_browser_reruns_only_the_task_touched(built, chromium):
    import threading

    from playwright.sync_api import sync_playwright
    from test_workflow import planned_jobs

    server = ReviewServer(Project(built), 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    edit = built / "curation/edits/stock-teapot--ref.json"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(server.url)
            assert page.locator("#traces tr[data-trace]").count() == 5  # 3 + the sample + the held-out task
            page.select_option("select[name=verdict]", "check_failed")
            page.wait_for_url("**verdict=check_failed**")
            assert page.locator("#traces tr[data-trace]").all_inner_texts()[0].startswith("stock-teapot--s0")

            page.click("text=stock-teapot--s0")  # reject the failed sample
            page.click("button[value=reject]")
            assert "rejected by hand" in page.inner_text("#done")

            page.goto(server.url + "trace/stock-teapot--ref")  # edit check_stock's arguments: first wrongly
            call = page.locator(".call", has_text="check_stock")
            call.locator("summary", has_text="edit arguments").click()
            call.locator("textarea").fill('{"sku": 4}')
            call.locator("button", has_text="save arguments").click()
            assert "arguments do not match the schema: 4 is not of type 'string'" in page.inner_text("#refused")
            assert not edit.exists()
            call = page.locator(".call", has_text="check_stock")
            call.locator("summary", has_text="edit arguments").click()
            call.locator("textarea").fill('{"sku": "kb-04"}')
            call.locator("button", has_text="save arguments").click()
            assert "saved curation/edits/stock-teapot--ref.json" in page.inner_text("#done")
            page.wait_for_selector("#plan[data-jobs]", timeout=120_000)
            plan = json.loads(page.get_attribute("#plan", "data-jobs"))
            assert "curate:task=stock-teapot" in plan and not any(j.startswith("curate:task=price") for j in plan)

            page.locator(".msg.assistant").nth(1).locator("button", has_text="truncate after this turn").click()
            assert "saved" in page.inner_text("#done")
            assert page.inner_text("#verdict") == "dropped: not_answered"

            # an id from outside: refused, nothing written anywhere
            before = {q: q.stat().st_mtime_ns for q in built.rglob("*") if q.is_file()}
            page.goto(server.url + "trace/..%2F..%2Fconfig.yaml")
            assert "is not a trace of this project" in page.content()
            page.goto(server.url + "trace/stock-teapot--ref")
            token = page.get_attribute("input[name=token]", "value")
            for trace_id in ("..%2F..%2Fconfig", "stock-teapot--ref%2F..%2F..%2Fx", "stock-teapot--s7"):
                response = page.request.post(server.url + f"trace/{trace_id}", form={
                    "token": token, "action": "set_text", "index": "1", "content": "pwned"}, max_redirects=0)
                assert response.status == 404 and "is not a trace of this project" in response.text()
            assert {q: q.stat().st_mtime_ns for q in built.rglob("*") if q.is_file()} == before
            browser.close()
    finally:
        server.shutdown()
        server.server_close()

    assert read_trace_ids(built / "curation/reject.txt") == ["stock-teapot--s0"]
    trace = json.loads(edit.read_text())
    assert [m["role"] for m in trace["messages"]] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert trace["messages"][4]["tool_calls"][0]["function"]["arguments"] == '{"sku": "kb-04"}'
    assert set(planned_jobs(built, "data/dataset/train.parquet", "data/reports/curation.json")) == {
        "curate:task=stock-teapot", "curation_report", "build_dataset"}

    # a recording (tracetune record's file) of another task reruns that task's curation too
    raw = (built / "data/traces/raw/price-kettle.jsonl").read_text().splitlines()[0]
    recorded = built / "data/traces/recorded/price-kettle.jsonl"
    recorded.parent.mkdir(parents=True)
    recorded.write_text(json.dumps(json.loads(raw) | {"trace_id": "price-kettle--rec0", "source": "recorded"}) + "\n")
    assert set(planned_jobs(built, "data/dataset/train.parquet", "data/reports/curation.json")) == {
        "curate:task=stock-teapot", "curate:task=price-kettle", "curation_report", "build_dataset"}
    assert Project(built).row("price-kettle--rec0").reason is None
