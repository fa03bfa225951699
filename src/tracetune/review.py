"""`tracetune review`: a local web page to read every task's traces with curation's verdict, and to
keep, reject or edit them by hand.

Every action writes curation's own inputs atomically (curation/reject.txt, curation/keep.txt,
curation/edits/{trace_id}.json), so what the page decides is what the next `snakemake` curates,
and only the task touched reruns. The verdicts shown are curate's own (tracetune.curate.judge_task
on the same files), and an edit curate would refuse (tracetune.curate.edit_problem) is refused here.

The page serves loopback only, checks the Host header (no DNS rebinding) and a per-run token on
every change (no cross-site posts), and treats trace ids as untrusted: only ids of traces it
listed are accepted, and files are written only under curation/.
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
import subprocess
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tracetune.config import load_tasks, read_config, section_settings
from tracetune.curate import (
    edit_paths,
    edit_problem,
    judge_task,
    read_task_traces,
    read_trace_ids,
)
from tracetune.jsonio import InputError, write_json, write_text
from tracetune.report import environment, transcript
from tracetune.trace import is_trace_id, task_of_trace_id, trace_outcome, validate_trace

log = logging.getLogger(__name__)

TRACE_KINDS = ("raw", "imported", "recorded")  # data/traces/{kind}/{task}.jsonl, as curate reads them
VERDICT_FILES = {"reject": "reject.txt", "keep": "keep.txt"}
MAX_BODY = 1 << 20  # bytes of a form: an edited trace text is far smaller
REQUEST_TIMEOUT_S = 10  # a connection that sends nothing is dropped, not waited on


# --- the project's traces, judged as curate judges them -----------------------------------------

@dataclass
class Row:
    """One trace as the page lists it."""
    trace: dict
    split: str
    reason: str | None  # curate's drop reason; None: kept
    hand: str | None  # "keep" or "reject" when set by hand
    edited: bool

    @property
    def trace_id(self) -> str:
        return self.trace["trace_id"]

    @property
    def verdict(self) -> str:
        return "kept" if self.reason is None else "dropped"


@dataclass
class TaskState:
    rows: list[Row] = field(default_factory=list)
    error: str | None = None  # a file curate would refuse (a broken hand edit): shown, not fatal


class Project:
    """The files of one workflow directory that curation reads (and this page writes)."""

    def __init__(self, root: str | Path, config_path: str | Path = "config.yaml"):
        self.root = Path(root).resolve()
        self.config_path = self.root / config_path
        self.config = read_config(self.config_path)
        self.taskfile = load_tasks(self.root / self.config["tasks"])
        self.curation = self.root / "curation"
        self.edits = self.curation / "edits"

    def trace_files(self, task_id: str) -> list[Path]:
        paths = [self.root / "data" / "traces" / kind / f"{task_id}.jsonl" for kind in TRACE_KINDS]
        return [p for p in paths if p.is_file()]

    def hand_verdicts(self, task_id: str | None = None) -> dict[str, str]:
        """trace id -> "keep" / "reject"; a trace in both lists is rejected, as curate decides."""
        verdicts = {}
        for name in ("keep", "reject"):
            verdicts |= dict.fromkeys(read_trace_ids(self.curation / VERDICT_FILES[name], task_id), name)
        return verdicts

    def task_state(self, task_id: str) -> TaskState:
        task = self.taskfile.tasks[task_id]
        hand = self.hand_verdicts(task_id)
        try:
            traces, edited = read_task_traces(task_id, self.trace_files(task_id), edit_paths(self.edits, task_id))
            judged = judge_task(traces, check=task.get("check"),
                                rejected=[i for i, v in hand.items() if v == "reject"],
                                kept=[i for i, v in hand.items() if v == "keep"],
                                drop_unrecovered_tool_errors=section_settings(
                                    "curate", self.config["curate"])["drop_unrecovered_tool_errors"])
        except InputError as e:
            return TaskState(error=str(e))
        return TaskState([Row(t, task["split"], reason, hand.get(t["trace_id"]), t["trace_id"] in edited)
                          for t, reason in judged])

    def states(self) -> dict[str, TaskState]:
        return {task_id: self.task_state(task_id) for task_id in self.taskfile.ids()}

    def row(self, trace_id: str) -> Row:
        """The listed trace with this id; anything else (a path, an unknown id) is an InputError."""
        if not is_trace_id(trace_id) or task_of_trace_id(trace_id) not in self.taskfile.tasks:
            raise InputError(f"trace_id: {trace_id[:80]!r} is not a trace of this project")
        state = self.task_state(task_of_trace_id(trace_id))
        if state.error:
            raise InputError(state.error)
        for row in state.rows:
            if row.trace_id == trace_id:
                return row
        raise InputError(f"trace_id: {trace_id!r} is not a trace of this project")

    # --- writing curation's inputs ---

    def set_hand_verdict(self, trace_id: str, verdict: str | None) -> None:
        """Keep or reject a trace by hand, or (None) leave it to curate's filters. The id leaves the
        other list first: a crash between the two writes leaves it in neither, never in both."""
        self.row(trace_id)
        for name, filename in VERDICT_FILES.items():
            if name != verdict:
                self._list_edit(self.curation / filename, trace_id, add=False)
        if verdict is not None:
            self._list_edit(self.curation / VERDICT_FILES[verdict], trace_id, add=True)

    @staticmethod
    def _list_edit(path: Path, trace_id: str, add: bool) -> None:
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        kept = [line for line in lines if line.split("#", 1)[0].strip() != trace_id]
        if add:
            kept.append(trace_id)
        if kept != lines:
            write_text(path, "".join(f"{line}\n" for line in kept))

    def edit_path(self, trace_id: str) -> Path:
        path = (self.edits / f"{trace_id}.json").resolve()
        if path.parent != self.edits.resolve():  # is_trace_id already forbids separators; belt and braces
            raise InputError(f"trace_id: {trace_id!r} would leave {self.edits}")
        return path

    def save_edit(self, trace: dict) -> Path:
        """Write a hand edit, after the checks curate applies to it (tracetune.curate.load_edit)."""
        row = self.row(trace["trace_id"])
        path = self.edit_path(row.trace_id)
        validate_trace(trace, str(path.relative_to(self.root)))
        if trace["task_id"] != row.trace["task_id"]:
            raise InputError(f"{path.name}: task_id: {trace['task_id']!r}, expected {row.trace['task_id']!r}")
        problem = edit_problem(trace)
        if problem:
            raise InputError(f"{path.name}: {problem}")
        write_json(path, trace)
        return path

    def revert_edit(self, trace_id: str) -> None:
        self.row(trace_id)
        self.edit_path(trace_id).unlink(missing_ok=True)

    def planned_jobs(self) -> list[str]:
        """What the next `snakemake` would run, as 'rule' or 'rule:wildcards' (a dry run)."""
        snakemake = str(Path(sys.executable).with_name("snakemake"))
        args = [snakemake, "-n", "--cores", "1"]
        if self.config_path.name != "config.yaml":
            args += ["--configfile", str(self.config_path)]
        proc = subprocess.run(args, cwd=self.root, capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
            raise InputError(lines[-1] if lines else "snakemake -n failed")
        return parse_planned_jobs(proc.stdout)


def parse_planned_jobs(dry_run_output: str) -> list[str]:
    jobs, rule = [], None
    for line in dry_run_output.splitlines():
        line = line.strip()
        if line.startswith(("rule ", "localrule ")) and line.endswith(":"):
            rule = line.split()[1].rstrip(":")
            jobs.append(rule)
        elif line.startswith("wildcards:") and rule:
            jobs[-1] = f"{rule}:{line.split(':', 1)[1].strip()}"
    return jobs


# --- hand edits of one trace (each returns a new trace) ------------------------------------------

def _assistant(trace: dict, index: int) -> dict:
    messages = trace["messages"]
    if not 0 <= index < len(messages) or messages[index]["role"] != "assistant":
        raise InputError(f"messages[{index}]: not an assistant message")
    return messages[index]


def as_typed(submitted: str, original: str | None) -> str:
    """A textarea's text as the person typed it: browsers send every line break as CRLF, so line
    breaks are LF again, and a text the person left unchanged keeps its original bytes."""
    text = submitted.replace("\r\n", "\n")
    if original is not None and text == original.replace("\r\n", "\n"):
        return original
    return text


def set_text(trace: dict, index: int, content: str, reasoning: str | None) -> dict:
    """An assistant message's text (the final answer, for the last one) and reasoning."""
    trace = copy.deepcopy(trace)
    message = _assistant(trace, index)
    message["content"] = as_typed(content, message.get("content"))
    reasoning = as_typed(reasoning, message.get("reasoning_content")) if reasoning is not None else None
    if reasoning:
        message["reasoning_content"] = reasoning
    else:
        message.pop("reasoning_content", None)
    return trace


def set_arguments(trace: dict, index: int, call: int, arguments: str) -> dict:
    """A tool call's arguments, stored compact when they are JSON (as on the wire), else as typed
    (edit_problem then says why they cannot stay). The recorded result is left as it was."""
    trace = copy.deepcopy(trace)
    calls = _assistant(trace, index).get("tool_calls") or []
    if not 0 <= call < len(calls):
        raise InputError(f"messages[{index}].tool_calls[{call}]: no such call")
    original = calls[call]["function"]["arguments"]
    arguments = as_typed(arguments, original)
    try:
        if arguments != original:  # typed anew: stored compact, as on the wire
            arguments = json.dumps(json.loads(arguments), ensure_ascii=False)
    except json.JSONDecodeError:
        pass
    calls[call]["function"]["arguments"] = arguments
    return trace


def _turn_end(messages: list[dict], index: int) -> int:
    """The index after an assistant message and the tool results that answer it."""
    ids = {c["id"] for c in messages[index].get("tool_calls") or []}
    end = index + 1
    while end < len(messages) and messages[end]["role"] == "tool" and messages[end]["tool_call_id"] in ids:
        end += 1
    return end


def delete_turn(trace: dict, index: int) -> dict:
    """Delete a tool-calling assistant turn with its results (a turn pair)."""
    if not _assistant(trace, index).get("tool_calls"):
        raise InputError(f"messages[{index}]: makes no tool call (edit its text instead)")
    messages = trace["messages"]
    return refreshed(trace, messages[:index] + messages[_turn_end(messages, index):])


def truncate_after(trace: dict, index: int) -> dict:
    """Keep the trace up to an assistant turn (and its tool results)."""
    _assistant(trace, index)
    return refreshed(trace, trace["messages"][:_turn_end(trace["messages"], index)])


def refreshed(trace: dict, messages: list[dict]) -> dict:
    """The trace with new messages, its bookkeeping made to match: errors and invalid calls of
    calls still there, turns counted, and answered only if it ends on an answer."""
    messages = copy.deepcopy(messages)
    call_ids = {c["id"] for m in messages for c in m.get("tool_calls") or []}
    outcome = dict(trace.get("outcome") or {}) | trace_outcome(messages)
    if outcome["status"] != "answered":  # what went wrong still stands until the trace ends on an answer
        outcome["error"] = (trace.get("outcome") or {}).get("error")
    return trace | {
        "messages": messages, "outcome": outcome,
        "tool_errors": [i for i in trace.get("tool_errors") or [] if i in call_ids],
        "invalid_calls": [c for c in trace.get("invalid_calls") or [] if c.get("tool_call_id") in call_ids],
    }


def apply_action(project: Project, trace_id: str, form: dict[str, str]) -> str:
    """Carry out one action of the page; returns what was done, in words. Refusals are InputErrors."""
    action = form.get("action", "")
    if action in ("keep", "reject", "clear"):
        project.set_hand_verdict(trace_id, None if action == "clear" else action)
        return {"keep": "kept by hand", "reject": "rejected by hand", "clear": "left to curate's filters"}[action]
    if action == "revert":
        project.revert_edit(trace_id)
        return "hand edit removed"
    edit = EDITS.get(action)
    if edit is None:
        raise InputError(f"action: unknown action {action[:40]!r}")
    trace = edit(project.row(trace_id).trace, form)
    path = project.save_edit(trace)
    return f"saved {path.relative_to(project.root)}"


# The page's edit forms: action -> (trace, form) -> the edited trace.
EDITS = {
    "set_text": lambda t, f: set_text(t, _int(f, "index"), f.get("content", ""), f.get("reasoning")),
    "set_arguments": lambda t, f: set_arguments(t, _int(f, "index"), _int(f, "call"), f.get("arguments", "")),
    "delete_turn": lambda t, f: delete_turn(t, _int(f, "index")),
    "truncate": lambda t, f: truncate_after(t, _int(f, "index")),
}


def _int(form: dict, key: str) -> int:
    try:
        return int(form.get(key, ""))
    except ValueError:
        raise InputError(f"{key}: not a number") from None


# --- the pages ---------------------------------------------------------------------------------

FILTERS = ("task", "split", "source", "verdict")


def listing(project: Project, filters: dict[str, str]) -> dict:
    """What the index page shows: counts per task and split, and the rows that pass the filters
    (verdict: kept, dropped or a drop reason)."""
    states = project.states()
    counts, rows = [], []
    for task_id, state in states.items():
        split = project.taskfile.tasks[task_id]["split"]
        kept = sum(r.reason is None for r in state.rows)
        counts.append({"task": task_id, "split": split, "traces": len(state.rows), "kept": kept,
                       "dropped": len(state.rows) - kept, "error": state.error})
        for row in state.rows:
            values = {"task": task_id, "split": split, "source": row.trace.get("source") or "",
                      "verdict": (row.verdict, row.reason)}
            if all(not filters.get(k) or filters[k] == values[k] or (k == "verdict" and filters[k] in values[k])
                   for k in FILTERS):
                rows.append(row)
    splits = {}
    for c in counts:
        total = splits.setdefault(c["split"], {"traces": 0, "kept": 0, "dropped": 0})
        for key in total:
            total[key] += c[key]
    sources = sorted({r.trace.get("source") or "" for s in states.values() for r in s.rows})
    reasons = sorted({r.reason for s in states.values() for r in s.rows if r.reason})
    return {"counts": counts, "splits": splits, "rows": [row_view(r) for r in rows], "filters": filters,
            "options": {"task": list(states), "split": sorted(splits), "source": sources,
                        "verdict": ["kept", "dropped", *reasons]}}


def row_view(row: Row) -> dict:
    check = row.trace.get("check") or {}
    return {"trace_id": row.trace_id, "task": row.trace["task_id"], "split": row.split,
            "source": row.trace.get("source") or "", "verdict": row.verdict, "reason": row.reason,
            "hand": row.hand, "edited": row.edited, "passed": bool(check.get("passed")),
            "detail": check.get("detail", ""), "turns": (row.trace.get("outcome") or {}).get("turns"),
            "chars": sum(len(m.get("content") or "") + len(m.get("reasoning_content") or "")
                         for m in row.trace["messages"])}


def trace_page(row: Row) -> dict:
    view = transcript(row.trace)
    view["row"] = row_view(row)
    view["last_answer"] = max((i["index"] for i in view["items"]
                               if i["role"] == "assistant" and not i["calls"]), default=None)
    view["last_turn"] = max((i["index"] for i in view["items"] if i["role"] == "assistant"), default=None)
    return view


class ReviewServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a burst of connections waits in the listen queue instead of being refused

    def __init__(self, project: Project, port: int):
        super().__init__(("127.0.0.1", port), ReviewHandler)
        self.project = project
        self.token = secrets.token_urlsafe(16)
        self.templates = environment()
        self.write_lock = threading.Lock()  # one action at a time: each reads, then rewrites a file
        self.plan_lock = threading.Lock()  # one `snakemake -n` at a time; a second asker is told to wait

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/"


class ReviewHandler(BaseHTTPRequestHandler):
    server: ReviewServer
    timeout = REQUEST_TIMEOUT_S

    def log_message(self, format, *args):
        log.debug("review: " + format, *args)

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        return host in ("127.0.0.1", "localhost", "[::1]")

    def _token_ok(self, given: str | None) -> bool:
        return secrets.compare_digest(given or "", self.server.token)

    def _send(self, status: int, body: str, content_type: str = "text/html; charset=utf-8",
              headers: dict | None = None, nonce: str = "") -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        # Scripts run only with this response's nonce (no inline handlers, no injected <script>); no
        # other page may frame this one (a framed form is one click from being submitted).
        scripts = f"'nonce-{nonce}'" if nonce else "'none'"
        self.send_header("Content-Security-Policy", f"default-src 'self'; style-src 'unsafe-inline'; "
                                                    f"script-src {scripts}; form-action 'self'; frame-ancestors 'none'")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _render(self, status: int, template: str, **context) -> None:
        nonce = secrets.token_urlsafe(16)
        html = self.server.templates.get_template(template).render(token=self.server.token, nonce=nonce, **context)
        self._send(status, html, nonce=nonce)

    def do_GET(self):
        if not self._host_ok():
            return self._send(403, "loopback only", "text/plain")
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        if url.path == "/":
            return self._render(200, "review.html.j2", page="index",
                                **listing(self.server.project, {k: query.get(k, "") for k in FILTERS}))
        if url.path == "/plan":
            return self._plan()
        if url.path.startswith("/trace/"):
            return self._trace(urllib.parse.unquote(url.path[len("/trace/"):]), query.get("done"), None)
        self._send(404, "not found", "text/plain")

    def _plan(self) -> None:
        """The jobs the next snakemake would run: only for this page's own script (a custom header,
        which another origin cannot send without a CORS preflight this server never grants), and
        one dry run at a time."""
        if not self._token_ok(self.headers.get("X-Review-Token")):
            return self._send(403, "forbidden: this page's own script only", "text/plain")
        if not self.server.plan_lock.acquire(blocking=False):
            return self._send(429, json.dumps({"error": "a plan is being made; ask again"}), "application/json",
                              {"Retry-After": "5"})
        try:
            body = {"jobs": self.server.project.planned_jobs()}
        except (InputError, subprocess.TimeoutExpired) as e:
            body = {"error": str(e)}
        finally:
            self.server.plan_lock.release()
        self._send(200, json.dumps(body), "application/json")

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        if not self._host_ok():
            return self._send(403, "loopback only", "text/plain")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:  # refused before a byte of it is read
            self.close_connection = True
            return self._send(413, f"a form is at most {MAX_BODY} bytes", "text/plain")
        form = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"),
                                                           keep_blank_values=True).items()}
        if not self._token_ok(form.get("token")):
            return self._send(403, "forbidden: loopback and this page's own forms only", "text/plain")
        if not url.path.startswith("/trace/"):
            return self._send(404, "not found", "text/plain")
        trace_id = urllib.parse.unquote(url.path[len("/trace/"):])
        try:
            with self.server.write_lock:
                done = apply_action(self.server.project, trace_id, form)
        except InputError as e:
            return self._trace(trace_id, None, str(e), status=400)
        target = f"/trace/{urllib.parse.quote(trace_id)}?done={urllib.parse.quote(done)}"
        self._send(303, "", "text/plain", {"Location": target})

    def _trace(self, trace_id: str, done: str | None, error: str | None, status: int = 200) -> None:
        try:
            row = self.server.project.row(trace_id)
        except InputError as e:
            return self._render(404, "review.html.j2", page="missing", error=str(e))
        self._render(status, "review.html.j2", page="trace", t=trace_page(row), done=done, error=error)


def serve(root: str | Path = ".", config_path: str = "config.yaml", port: int = 8765) -> None:
    """Serve the review page until interrupted."""
    server = ReviewServer(Project(root, config_path), port)
    print(f"tracetune review: {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
