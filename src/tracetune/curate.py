"""Curate raw traces: validate, apply hand edits and rejects, filter, deduplicate.

A trace is kept when it is not rejected by hand, its check passes (judged here, so hand edits are
judged too, and a changed check reruns curation, not collection; a train task may have no check,
and then only the other filters and the hand verdicts judge it), it ended with an answer, every
tool call is valid (tracetune.parsing.tool_call_problem, the rule the agent and evaluation apply
too) and, optionally, no tool error went unrecovered.
Exact and near duplicates (same calls and arguments, same normalised text) are dropped.

A task's traces are its collected ones plus those brought in by `tracetune import` and `tracetune
record` (data/traces/{imported,recorded}/{task}.jsonl). Hand edits live in
`curation/edits/{trace_id}.json` (a full trace with the same trace_id; trace ids are `{task}--…`,
so the file name tells which task's curate job reads it); hand verdicts in `curation/reject.txt`
and `curation/keep.txt` (one trace id per line, `#` comments). `tracetune review` writes all three.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

from tracetune.checks import verdict
from tracetune.jsonio import InputError, read_json, read_jsonl, write_json, write_jsonl
from tracetune.parsing import call_arguments, tool_call_problem, tool_schemas
from tracetune.trace import task_of_trace_id, validate_trace

# Reasons a trace is dropped, in the order they are tested (a trace counts under its first reason).
REASONS = ("rejected", "not_answered", "check_failed", "invalid_tool_call", "unrecovered_tool_error", "duplicate")
# The filters a trace kept by hand skips: the reviewer read it. An invalid call it still fails,
# since training on it teaches the call; fix its arguments instead.
OVERRIDABLE = {"not_answered", "check_failed", "unrecovered_tool_error", "duplicate"}


# --- hand edits and hand verdicts ---------------------------------------------------------------

def edit_paths(edits_dir: str | Path, task_id: str) -> list[str]:
    """The edit files that belong to one task (what the curate rule lists as its inputs)."""
    paths = sorted(Path(edits_dir).glob("*.json")) if Path(edits_dir).is_dir() else []
    return [str(p) for p in paths if task_of_trace_id(p.stem) == task_id]


def read_trace_ids(path: str | Path, task_id: str | None = None) -> list[str]:
    """Trace ids listed in reject.txt or keep.txt (blank lines and `#` comments ignored), optionally
    one task's."""
    path = Path(path)
    if not path.is_file():
        return []
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        trace_id = line.split("#", 1)[0].strip()
        if trace_id and (task_id is None or task_of_trace_id(trace_id) == task_id):
            ids.append(trace_id)
    return sorted(set(ids))


def load_edit(path: str | Path, task_id: str, known_ids: set[str]) -> dict:
    path = Path(path)
    trace = read_json(path)
    if not isinstance(trace, dict):
        raise InputError(f"{path}: expected a JSON object (a full trace)")
    validate_trace(trace, str(path))
    if trace["trace_id"] != path.stem:
        raise InputError(f"{path}: trace_id: {trace['trace_id']!r} does not match the file name {path.stem!r}")
    if trace["task_id"] != task_id:
        raise InputError(f"{path}: task_id: {trace['task_id']!r}, expected {task_id!r}")
    if trace["trace_id"] not in known_ids:
        raise InputError(f"{path}: trace_id: unknown trace {trace['trace_id']!r} (not in the collected traces)")
    problem = edit_problem(trace)
    if problem:
        raise InputError(f"{path}: {problem}")
    return trace


def edit_problem(trace: dict) -> str | None:
    """Why a hand-edited trace is not one to train on, as `field: reason`, or None. An edit is the
    user's word, so what the model may get wrong is a mistake here: every call must be valid for
    the trace's tools (tracetune.parsing's rule) and answered by a tool message, and every tool
    message must answer an earlier call."""
    schemas = tool_schemas(trace.get("tools"))
    pending: dict[str, str] = {}
    for i, message in enumerate(trace["messages"]):
        if message["role"] == "tool":
            if pending.pop(message["tool_call_id"], None) is None:
                return f"messages[{i}].tool_call_id: {message['tool_call_id']!r} answers no earlier call"
            continue
        if pending:
            return f"{next(iter(pending.values()))}: call {next(iter(pending))!r} has no tool result"
        for j, call in enumerate(message.get("tool_calls") or []):
            problem = tool_call_problem(call["function"], schemas)
            field = f"messages[{i}].tool_calls[{j}]"
            if problem is not None:
                part = "name" if problem.kind == "unknown_tool" else "arguments"
                return f"{field}.function.{part}: {problem.message}"
            pending[call["id"]] = field
    if pending:
        return f"{next(iter(pending.values()))}: call {next(iter(pending))!r} has no tool result"
    return None


# --- filters ------------------------------------------------------------------------------------

def invalid_tool_call(trace: dict) -> str | None:
    """Why the first invalid tool call is invalid (tracetune.parsing's rule), or None when all are valid."""
    schemas = tool_schemas(trace.get("tools"))
    for message in trace["messages"]:
        for call in message.get("tool_calls") or []:
            problem = tool_call_problem(call["function"], schemas)
            if problem is not None:
                return f"{call['id']}: {call['function']['name']}: {problem.message}"
    return None


def unrecovered_tool_errors(trace: dict) -> list[str]:
    """Ids of failed calls not followed by a successful call of the same tool."""
    errors = set(trace.get("tool_errors") or [])
    calls = [(c["id"], c["function"]["name"]) for m in trace["messages"] for c in m.get("tool_calls") or []]
    answered = {m.get("tool_call_id") for m in trace["messages"] if m["role"] == "tool"}
    unrecovered = []
    for i, (call_id, name) in enumerate(calls):
        if call_id in errors and not any(
                later_name == name and later_id not in errors and later_id in answered
                for later_id, later_name in calls[i + 1:]):
            unrecovered.append(call_id)
    return unrecovered


def drop_reason(trace: dict, rejected: set[str], drop_unrecovered: bool) -> str | None:
    """Why curation's filters drop a trace (its check verdict already in trace["check"]), or None;
    duplicates are found later, among the traces that pass."""
    if trace["trace_id"] in rejected:
        return "rejected"
    if (trace.get("outcome") or {}).get("status") != "answered":
        return "not_answered"
    if not (trace.get("check") or {}).get("passed", False):
        return "check_failed"
    if invalid_tool_call(trace):
        return "invalid_tool_call"
    if drop_unrecovered and unrecovered_tool_errors(trace):
        return "unrecovered_tool_error"
    return None


# --- duplicates ---------------------------------------------------------------------------------

def normalise_text(text: str | None) -> str:
    """Case, accents, punctuation and spacing do not make two traces different."""
    text = unicodedata.normalize("NFKC", text or "").casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def dedup_key(trace: dict) -> str:
    """Same task, same calls with the same arguments (key order ignored), same normalised text
    of user and assistant turns. Reasoning is left out: two runs that say and do the same differ
    only in wording nobody sees."""
    steps = []
    for message in trace["messages"]:
        if message["role"] in ("user", "assistant"):
            steps.append([message["role"], normalise_text(message.get("content"))])
        for call in message.get("tool_calls") or []:
            arguments = call_arguments(call["function"]["arguments"])
            arguments = call["function"]["arguments"] if arguments is None else arguments
            steps.append(["call", call["function"]["name"], json.dumps(arguments, sort_keys=True)])
    return json.dumps([trace["task_id"], steps])


def reasoning_chars(trace: dict) -> int:
    return sum(len(m.get("reasoning_content") or "") for m in trace["messages"])


def drop_duplicates(traces: list[dict]) -> tuple[list[dict], list[dict]]:
    """Keep one trace per key: the one with the most reasoning (more to learn from), then the
    smallest trace id; kept traces stay in their input order."""
    best: dict[str, dict] = {}
    for trace in traces:
        key = dedup_key(trace)
        current = best.get(key)
        if current is None or (-reasoning_chars(trace), trace["trace_id"]) < (
                -reasoning_chars(current), current["trace_id"]):
            best[key] = trace
    winners = {id(t) for t in best.values()}
    return [t for t in traces if id(t) in winners], [t for t in traces if id(t) not in winners]


# --- one task -----------------------------------------------------------------------------------

def strip_system_prompt(trace: dict, system_prompt: str | None) -> dict:
    """Drop the guiding system prompt used while collecting (the leading system message that
    equals tasks.yaml's `system_prompt`); other system messages are the trace's own."""
    messages = trace["messages"]
    if system_prompt and messages and messages[0]["role"] == "system" and messages[0]["content"] == system_prompt:
        return trace | {"messages": messages[1:]}
    return trace


def read_raw_traces(path: str | Path, task_id: str) -> list[dict]:
    traces, seen = [], set()
    for lineno, trace in read_jsonl(path):
        where = f"{path}:{lineno}"
        validate_trace(trace, where)
        if trace["task_id"] != task_id:
            raise InputError(f"{where}: task_id: {trace['task_id']!r}, expected {task_id!r}")
        if trace["trace_id"] in seen:
            raise InputError(f"{where}: trace_id: duplicate trace id {trace['trace_id']!r}")
        seen.add(trace["trace_id"])
        traces.append(trace)
    return traces


def read_task_traces(task_id: str, paths: list[str | Path], edits: list[str] = ()) -> tuple[list[dict], list[str]]:
    """A task's traces from every file (collected, imported, recorded), each replaced by its hand
    edit when it has one; and the ids of the edited ones."""
    traces, where = [], {}
    for path in paths:
        for trace in read_raw_traces(path, task_id):
            if trace["trace_id"] in where:
                raise InputError(f"{path}: trace_id: {trace['trace_id']!r} appears in {where[trace['trace_id']]} too")
            where[trace["trace_id"]] = path
            traces.append(trace)
    edited = {t["trace_id"]: t for t in (load_edit(path, task_id, set(where)) for path in edits)}
    return [edited.get(t["trace_id"], t) for t in traces], sorted(edited)


def judge_task(traces: list[dict], *, check: dict | None, rejected: list[str] = (), kept: list[str] = (),
               drop_unrecovered_tool_errors: bool = True) -> list[tuple[dict, str | None]]:
    """Every trace with its check verdict judged (`check` None: the task has none, so every trace
    passes it) and why curation drops it (None: kept), in input order. Hand verdicts win: a
    rejected trace is dropped, a kept one skips the OVERRIDABLE filters."""
    no_check = {"passed": True, "detail": "the task has no check"}
    traces = [t | {"check": no_check if check is None else verdict(check, t)} for t in traces]
    rejected, kept = set(rejected), set(kept) - set(rejected)
    reasons = {}
    for trace in traces:
        reason = drop_reason(trace, rejected, drop_unrecovered_tool_errors)
        reasons[trace["trace_id"]] = None if trace["trace_id"] in kept and reason in OVERRIDABLE else reason
    passing = [t for t in traces if reasons[t["trace_id"]] is None and t["trace_id"] not in kept]
    for duplicate in drop_duplicates(passing)[1]:
        reasons[duplicate["trace_id"]] = "duplicate"
    return [(t, reasons[t["trace_id"]]) for t in traces]


def curate_task(task_id: str, raw_path: str | Path, *, check: dict | None, edits: list[str] = (),
                added: list[str] = (), rejected: list[str] = (), kept: list[str] = (),
                system_prompt: str | None = None, keep_system_prompt: bool = False,
                drop_unrecovered_tool_errors: bool = True) -> tuple[list[dict], dict]:
    """Return (kept traces, stats) for one task. `check` is the task's check spec, judged here on
    every trace, hand-edited ones included (None: the task has no check); `added` are
    traces brought in by `tracetune import` or `tracetune record`."""
    traces, edited = read_task_traces(task_id, [raw_path, *added], edits)
    judged = judge_task(traces, check=check, rejected=rejected, kept=kept,
                        drop_unrecovered_tool_errors=drop_unrecovered_tool_errors)
    dropped = {t["trace_id"]: reason for t, reason in judged if reason}
    kept_traces = [t for t, reason in judged if not reason]
    if not keep_system_prompt:
        kept_traces = [strip_system_prompt(t, system_prompt) for t in kept_traces]
    reasons = Counter(dropped.values())
    stats = {
        "task_id": task_id, "raw": len(traces), "kept": len(kept_traces), "edited": edited,
        "dropped": {reason: reasons[reason] for reason in REASONS}, "dropped_traces": dropped,
    }
    return kept_traces, stats


def curate_to_files(task_id: str, raw_path: str, out_path: str, stats_path: str, **settings) -> dict:
    kept, stats = curate_task(task_id, raw_path, **settings)
    write_jsonl(out_path, kept)
    write_json(stats_path, stats)
    return stats


def write_curation_report(stats_paths: list[str], out_path: str) -> dict:
    """Aggregate per-task stats: counts per task and per reason."""
    per_task = {}
    for path in stats_paths:
        stats = read_json(path)
        per_task[stats["task_id"]] = {k: stats[k] for k in ("raw", "kept", "dropped", "edited")}
    totals = {
        "raw": sum(s["raw"] for s in per_task.values()),
        "kept": sum(s["kept"] for s in per_task.values()),
        "dropped": {r: sum(s["dropped"].get(r, 0) for s in per_task.values()) for r in REASONS},
    }
    report = {"totals": totals, "tasks": dict(sorted(per_task.items()))}
    write_json(out_path, report)
    return report
