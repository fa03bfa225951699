"""Evaluate a model on the held-out (`split: eval`) tasks: agent traces scored by the tasks'
checks, tool-call validity, turns, errors and latency. (The held-out token loss is tracetune.heldout.)

The scoring functions are pure functions over trace dicts (DESIGN.md raw-trace schema)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import statistics
from collections import Counter

from tracetune.checks import verdict
from tracetune.jsonio import InputError, write_json, write_jsonl
from tracetune.parsing import tool_call_problem, tool_schemas
from tracetune.trace import check_error_budget

log = logging.getLogger(__name__)

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


# --- scoring (pure) --------------------------------------------------------------------------

def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n; (0, 1) when n is 0.
    Unlike the normal approximation it stays inside [0, 1] and is sensible at k=0 or k=n,
    which is exactly where small eval sets land."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k=0 or k=n the exact bound is p itself; float rounding can put it a hair inside.
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def rate(k: int, n: int) -> dict:
    lo, hi = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": [lo, hi]}


def tool_calls(trace: dict) -> list[dict]:
    return [call for m in trace.get("messages", []) if m.get("role") == "assistant"
            for call in m.get("tool_calls") or []]


def tool_call_validity(trace: dict) -> dict:
    """Counts of the trace's tool calls that parse, name a known tool, and match its schema
    (tracetune.parsing.tool_call_problem: the rule the agent and curation apply too). An unreadable
    <tool_call> block is stored as a call too (tracetune.parsing.split_tool_calls), so none is missed."""
    schemas = tool_schemas(trace.get("tools"))
    reasons = [getattr(tool_call_problem(call.get("function") or {}, schemas), "kind", None)
               for call in tool_calls(trace)]
    bad = Counter(r for r in reasons if r)
    n = len(reasons)
    return {
        "calls": n,
        "parsable": n - bad["bad_json"],
        "known_tool": n - bad["bad_json"] - bad["unknown_tool"],
        "valid": n - sum(bad.values()),
        "problems": dict(bad),
    }


def error_kind(trace: dict) -> str | None:
    """How a trace failed as a run (not as a task): None when it ended with an answer."""
    outcome = trace.get("outcome") or {}
    status = outcome.get("status")
    if status == "answered":
        return None
    if status == "error":
        # "APIConnectionError: ..." -> "error:APIConnectionError"
        return "error:" + (str(outcome.get("error") or "unknown").split(":", 1)[0].strip() or "unknown")
    return str(status)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100), as numpy's default."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def latency(traces: list[dict]) -> dict:
    # Failed runs (status error) record no meaningful time; they are counted under errors.
    times = [float(t.get("timings", {}).get("total_s") or 0.0) for t in traces
             if (t.get("outcome") or {}).get("status") != "error"]
    return {"mean_s": mean(times), "p50_s": percentile(times, 50), "p95_s": percentile(times, 95), "n": len(times)}


def passed(trace: dict) -> bool:
    return bool((trace.get("check") or {}).get("passed"))


def expected_tools(task: dict) -> list[str]:
    """The tools the task's reference plan calls, in order (none without a plan)."""
    return [step["tool"] for step in task.get("reference", []) if "tool" in step]


def tool_selection(trace: dict, expected: list[str]) -> dict:
    """Did the first call name the plan's first tool, and did the trace call every tool the plan
    calls (attempts count: a refused cancel still chose the right tool)."""
    called = [(call.get("function") or {}).get("name") for call in tool_calls(trace)]
    return {"first_call": bool(called) and called[0] == expected[0], "all_tools": set(expected) <= set(called)}


def capability(task: dict) -> str:
    return task.get("capability") or "general"


def task_row(task_id: str, traces: list[dict], task: dict | None = None) -> dict:
    task = task or {}
    expected = expected_tools(task)
    selection = [tool_selection(t, expected) for t in traces] if expected else []
    validity = [tool_call_validity(t) for t in traces]
    calls = sum(v["calls"] for v in validity)
    k = sum(passed(t) for t in traces)
    return {
        "task_id": task_id,
        "capability": capability(task),
        "expected_tools": expected,
        "first_call_right": sum(s["first_call"] for s in selection) if expected else None,
        "all_tools_called": sum(s["all_tools"] for s in selection) if expected else None,
        "samples": len(traces),
        "passed": k,
        "success_rate": k / len(traces) if traces else None,
        # A task counts as solved when at least half its samples pass (with one sample: that one).
        "solved": bool(traces) and 2 * k >= len(traces),
        "tool_calls": calls,
        "valid_calls": sum(v["valid"] for v in validity),
        "mean_turns": mean([(t.get("outcome") or {}).get("turns", 0) for t in traces]),
        "mean_latency_s": latency(traces)["mean_s"],
        "errors": dict(Counter(e for e in map(error_kind, traces) if e)),
    }


def per_capability(tasks: list[dict]) -> dict:
    """Tasks solved per capability (price, stock, site, …), capabilities in name order."""
    groups: dict[str, list[dict]] = {}
    for row in tasks:
        groups.setdefault(row["capability"], []).append(row)
    return {cap: rate(sum(r["solved"] for r in rows), len(rows)) for cap, rows in sorted(groups.items())}


def selection_rates(tasks: list[dict]) -> dict:
    """Tool selection over the samples of tasks with a reference plan."""
    planned = [r for r in tasks if r["expected_tools"]]
    n = sum(r["samples"] for r in planned)
    return {"first_call": rate(sum(r["first_call_right"] for r in planned), n),
            "all_tools": rate(sum(r["all_tools_called"] for r in planned), n)}


def score_traces(traces: list[dict], tasks_by_id: dict[str, dict] | None = None) -> dict:
    """The summary of one model's eval traces (everything but the held-out loss); with the task
    specs, also tool selection against the reference plans and success per capability."""
    by_task: dict[str, list[dict]] = {}
    for trace in traces:
        by_task.setdefault(trace["task_id"], []).append(trace)
    tasks_by_id = tasks_by_id or {}
    tasks = [task_row(task_id, ts, tasks_by_id.get(task_id)) for task_id, ts in by_task.items()]
    validity = [tool_call_validity(t) for t in traces]
    calls = sum(v["calls"] for v in validity)
    problems = Counter()
    for v in validity:
        problems.update(v["problems"])
    errors = Counter(e for e in map(error_kind, traces) if e)
    errors["tool_error"] = sum(len(t.get("tool_errors") or []) for t in traces)
    return {
        "n_tasks": len(by_task),
        "n_traces": len(traces),
        "success": {
            "per_sample": rate(sum(passed(t) for t in traces), len(traces)),
            "per_task": rate(sum(row["solved"] for row in tasks), len(tasks)),
        },
        "tool_selection": selection_rates(tasks),
        "capabilities": per_capability(tasks),
        "tool_calls": {
            "calls": calls,
            "traces_with_calls": sum(v["calls"] > 0 for v in validity),
            "parsable": rate(sum(v["parsable"] for v in validity), calls),
            "known_tool": rate(sum(v["known_tool"] for v in validity), calls),
            "valid": rate(sum(v["valid"] for v in validity), calls),
            "problems": dict(problems),
        },
        "mean_turns": mean([(t.get("outcome") or {}).get("turns", 0) for t in traces]),
        "status": dict(Counter((t.get("outcome") or {}).get("status", "unknown") for t in traces)),
        "errors": {k: v for k, v in errors.items() if v},
        "latency": latency(traces),
        "tasks": tasks,
    }


# --- running the eval tasks ----------------------------------------------------------------------

def eval_task_ids(taskfile) -> list[str]:
    ids = taskfile.ids("eval")
    if not ids:
        raise InputError(f"{taskfile.path}: tasks: no task has split: eval; evaluation needs held-out tasks")
    return ids


def run_eval_tasks(taskfile, endpoint, settings, samples: int, reorder: bool = False) -> tuple[list[dict], list[dict]]:
    """One agent trace per eval task and sample, run concurrently by the collector; with
    `reorder`, the same runs again with each tool list reversed, side by side."""
    from tracetune.collect import acollect

    async def run() -> list[dict[str, list[dict]]]:
        orders = (False, True) if reorder else (False,)
        return await asyncio.gather(*(acollect(taskfile, eval_task_ids(taskfile), endpoint, settings, reference=False,
                                               samples=samples, reverse_tools=r) for r in orders))

    runs = [[trace | {"check": verdict(taskfile.tasks[trace["task_id"]]["check"], trace)}
             for traces in by_task.values() for trace in traces] for by_task in asyncio.run(run())]
    return runs[0], (runs[1] if reorder else [])


def reorder_effect(given: dict, reordered: dict) -> dict:
    """How much reversing the tool lists moved the verdicts: tasks solved either way, the
    difference in points, and the tasks whose verdict flipped."""
    solved = {r["task_id"]: r["solved"] for r in given["tasks"]}
    solved_reordered = {r["task_id"]: r["solved"] for r in reordered["tasks"]}
    flipped = sorted(t for t in solved if solved[t] != solved_reordered.get(t))
    a, b = given["success"]["per_task"], reordered["success"]["per_task"]
    delta = 100 * ((b["rate"] or 0) - (a["rate"] or 0))
    return {"per_task": b, "first_call": reordered["tool_selection"]["first_call"],
            "delta_points": round(delta, 1), "flipped": flipped}


def evaluate_to_files(taskfile, endpoint, settings, *, samples: int, max_error_rate: float,
                      model: str, results_path: str, summary_path: str,
                      reordered_path: str, reorder: bool = False, system_prompt: bool = True) -> dict:
    """The evaluate rule: traces to results.jsonl (and, with `reorder`, the reversed-tool-list
    runs to reordered_path), scores to summary.json (the held-out loss is a job of its own,
    tracetune.evaluate.heldout_loss, so the two run side by side). Files are written only
    after everything succeeded. Without `system_prompt` the tasks are put as training rows put
    them when curation drops the collection's guiding system prompt."""
    if not system_prompt:
        taskfile = dataclasses.replace(taskfile, system_prompt=None)
    traces, reordered = run_eval_tasks(taskfile, endpoint, settings, samples, reorder)
    check_error_budget(traces + reordered, max_error_rate, "evaluation", "evaluate.max_error_rate")
    summary = {"model": model, "served_model": endpoint.model, "samples": samples} | score_traces(traces, taskfile.tasks)
    summary["reordered"] = reorder_effect(summary, score_traces(reordered, taskfile.tasks)) if reorder else None
    write_jsonl(results_path, traces)
    write_jsonl(reordered_path, reordered)
    write_json(summary_path, summary)
    return summary
