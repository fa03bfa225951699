"""Verifiable task outcomes: a task's `check` spec evaluated against a trace.

Checks are judged where a verdict is used (curation, evaluation), never stored by collection:
editing a check, or this module, reruns no collection."""

from __future__ import annotations

import re



def final_answer(trace: dict) -> str:
    """The content of the last assistant message, the answer the user sees."""
    for message in reversed(trace.get("messages", [])):
        if message.get("role") == "assistant":
            return message.get("content") or ""
    return ""


def successful_tool_names(trace: dict) -> set[str]:
    """Names of tools whose call got a result that is not an error (the trace's
    `tool_errors` lists the ids of calls whose result was an error)."""
    errors = set(trace.get("tool_errors") or [])
    names_by_id = {
        call["id"]: call["function"]["name"]
        for message in trace.get("messages", [])
        for call in message.get("tool_calls") or []
    }
    return {
        names_by_id.get(m.get("tool_call_id"), m.get("name"))
        for m in trace.get("messages", [])
        if m.get("role") == "tool" and m.get("tool_call_id") not in errors
    }


def attempted_tool_names(trace: dict) -> set[str]:
    """Names of every tool the trace called, whether or not the call succeeded (a refused
    cancel still shows the right tool was chosen)."""
    return {call["function"]["name"] for message in trace.get("messages", [])
            for call in message.get("tool_calls") or []}


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def run_check(check: dict, trace: dict) -> tuple[bool, str]:
    """Return (passed, detail); every kind named in `check` must hold."""
    answer = final_answer(trace).lower()
    failures = []
    for kind, spec in check.items():
        if kind == "contains":
            missing = [s for s in _as_list(spec) if str(s).lower() not in answer]
            if missing:
                failures.append(f"answer lacks {missing}")
        elif kind == "regex":
            if not re.search(spec, final_answer(trace), re.IGNORECASE):
                failures.append(f"answer does not match /{spec}/")
        elif kind == "tool_called":
            called = successful_tool_names(trace)
            missing = [t for t in _as_list(spec) if t not in called]
            if missing:
                failures.append(f"tools not called successfully: {missing}")
        elif kind == "tool_attempted":
            attempted = attempted_tool_names(trace)
            missing = [t for t in _as_list(spec) if t not in attempted]
            if missing:
                failures.append(f"tools not called: {missing}")
        elif kind == "no_tool_call":  # small talk, or a question no tool answers: calling one is wrong
            attempted = attempted_tool_names(trace)
            if spec and attempted:
                failures.append(f"tools called where none fits: {sorted(attempted)}")
        elif kind == "all":
            results = [run_check(sub, trace) for sub in spec]
            failures += [detail for ok, detail in results if not ok]
        elif kind == "any":
            results = [run_check(sub, trace) for sub in spec]
            if not any(ok for ok, _ in results):
                failures.append("none of: " + "; ".join(detail for _, detail in results))
        else:
            raise ValueError(f"unknown check kind {kind!r}")
    return (not failures, "; ".join(failures) or "ok")


def verdict(check: dict, trace: dict) -> dict:
    """A trace's verdict as stored in curated and eval traces: a run that failed passes nothing."""
    if (trace.get("outcome") or {}).get("status") == "error":
        return {"passed": False, "detail": "error"}
    passed, detail = run_check(check, trace)
    return {"passed": passed, "detail": detail}
