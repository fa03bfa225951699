"""The trace: one conversation of an agent with a task's tools, as every stage makes and reads it
(collected, imported, recorded by hand, rolled out by RL, edited in review). Its schema is
schemas/trace.schema.yaml; its ids are `{task}--{suffix}`. The one home of what a trace is:
stages build headers with `trace_header`, name traces with `trace_id`, and check them with
`validate_trace`, and judge a job's traces against its error budget with `check_error_budget`.
"""

from __future__ import annotations

import datetime
import re
import urllib.parse
from functools import cache

from tracetune.config import TaskFile, load_schema, task_hash, validate
from tracetune.jsonio import InputError

# The schema's id patterns, for code that checks an id outside a trace: always fullmatch()ed
# (a `$` would also match before a final newline).
TRACE_ID = re.compile(r"[A-Za-z0-9._-]+")
TASK_ID = re.compile(r"[a-z0-9._-]+")


def is_trace_id(text: str) -> bool:
    return TRACE_ID.fullmatch(text) is not None and set(text) != {"."}


def is_task_id(text: str) -> bool:
    """As tasks.schema.yaml has it: the pattern, and not only dots."""
    return TASK_ID.fullmatch(text) is not None and set(text) != {"."}


def trace_id(task_id: str, suffix: str) -> str:
    """`{task}--{suffix}`: ref, s{n} (collected), imp{n}, rec{n}, rl… Stable across reruns, so hand
    edits and verdicts keyed by trace id keep applying."""
    return f"{task_id}--{suffix}"


def task_of_trace_id(trace_id: str) -> str:
    """The task is everything before the last `--`."""
    return trace_id.rsplit("--", 1)[0]


def public_url(url: str) -> str:
    """An endpoint as recorded in traces: no credentials, no query string."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def trace_header(task: dict, taskfile: TaskFile, truncate: int, model: str | None, base_url: str | None, *,
                 trace_id: str, sample: int, source: str) -> dict:
    """What a trace records before its run (a model's traces name the model and its endpoint);
    the stage that opens the task's tools adds them."""
    return {
        "trace_id": trace_id, "task_id": task["id"], "sample": sample, "source": source,
        "model": model,
        "endpoint": public_url(base_url) if base_url else None,
        "spec_hash": task_hash(task, taskfile.servers, taskfile.system_prompt),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "truncate": truncate,  # the cut of tool results (longest_tool_result: before it)
        "tools": [],
    }


def trace_outcome(messages: list[dict], *, status: str | None = None, error: str | None = None) -> dict:
    """A trace's outcome: its status (an error when `error` says the run failed; else, unless the
    run says, answered when it ends on the model's answer and max_turns when not) and its model turns."""
    last = messages[-1] if messages else {}
    answered = last.get("role") == "assistant" and not last.get("tool_calls")
    status = status or ("error" if error else "answered" if answered else "max_turns")
    return {"status": status, "error": error, "turns": sum(m["role"] == "assistant" for m in messages)}


@cache
def _trace_schema() -> dict:
    return load_schema("trace.schema.yaml")


def validate_trace(trace: dict, where: str) -> None:
    """Schema check of one trace; `where` names the file and line."""
    validate(trace, _trace_schema(), where)
    where = f"{where}: trace {trace['trace_id']!r}"
    for i, message in enumerate(trace["messages"]):
        for j, call in enumerate(message.get("tool_calls") or []):
            if not isinstance(call["function"]["arguments"], str):
                raise InputError(f"{where}: messages[{i}].tool_calls[{j}].function.arguments: must be a JSON string")


def check_error_budget(traces: list[dict], max_error_rate: float, job: str, setting: str) -> None:
    """A dead server or endpoint turns every trace into an error: that is a failed job (nothing
    written, rerun when it is up), not a task with no good trace or a 0 % model."""
    errors = [t for t in traces if (t.get("outcome") or {}).get("status") == "error"]
    if traces and len(errors) / len(traces) > max_error_rate:
        first = (errors[0].get("outcome") or {}).get("error")
        raise RuntimeError(f"{job} failed: {len(errors)}/{len(traces)} traces ended in an error "
                           f"(more than {setting}={max_error_rate}); first: {first}")
