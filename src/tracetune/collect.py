"""Collect raw traces for tasks: model samples and replayed reference plans, many at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from tracetune.agent import Settings, replay_reference, run_agent
from tracetune.config import TaskFile
from tracetune.jsonio import write_jsonl
from tracetune.mcp_client import ToolBox
from tracetune.runtime.endpoint import Endpoint, request_timeout
from tracetune.trace import check_error_budget, trace_header, trace_id

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def task_toolbox(task: dict, taskfile: TaskFile, settings: Settings, header: dict, reverse_tools: bool = False):
    """A fresh ToolBox of the task's servers (stateful tools, like orders, start from the same
    state every trace), the tools it offers written into `header`."""
    servers = {name: taskfile.servers[name] for name in task["servers"]}
    async with ToolBox(servers, truncate=settings.truncate, tool_timeout_s=settings.tool_timeout_s) as toolbox:
        # Every tool of the task's servers, for training rows that offer the full list.
        header["server_tools"] = toolbox.openai_tools(task["servers"])
        tools = toolbox.openai_tools(task["servers"], task.get("tools"))
        header["tools"] = tools[::-1] if reverse_tools else tools
        yield toolbox


async def run_one(task: dict, taskfile: TaskFile, endpoint: Endpoint | None, settings: Settings,
                  sample: int | None, client=None, reverse_tools: bool = False) -> dict:
    """One trace: the reference plan when sample is None, else one model sample, offered the
    tools in reverse order with `reverse_tools` (evaluation's robustness check). Never raises."""
    asked = None if sample is None else endpoint  # a reference plan asks no model
    header = trace_header(task, taskfile, settings.truncate, asked.model if asked else None,
                          asked.base_url if asked else None,
                          trace_id=trace_id(task["id"], "ref" if sample is None else f"s{sample}"),
                          sample=sample or 0, source="reference" if sample is None else "model")
    try:
        async with task_toolbox(task, taskfile, settings, header, reverse_tools) as toolbox:
            tools = header["tools"]
            if sample is None:
                body = await replay_reference(toolbox, task, tools, taskfile.system_prompt)
            else:
                body = await run_agent(client, endpoint, toolbox, task, tools, settings, sample, taskfile.system_prompt)
    except Exception as e:  # a server that cannot start must not stop the other traces
        log.exception("trace %s failed", header["trace_id"])
        body = {"messages": [], "tool_errors": [], "invalid_calls": [],
                "outcome": {"status": "error", "error": f"{type(e).__name__}: {e}"[:500], "turns": 0},
                "usage": {"prompt_tokens": 0, "completion_tokens": 0}, "longest_tool_result": 0,
                "timings": {"total_s": 0.0, "tools_s": 0.0}}
    return header | body


def planned_samples(task: dict, default_samples: int, reference: bool, samples: int | None) -> list[int | None]:
    n = samples if samples is not None else task.get("samples", default_samples)
    return ([None] if reference and task.get("reference") else []) + list(range(n))


class Progress:
    """Counts of traces done, failed and running, logged as they change."""

    def __init__(self, total: int):
        self.total, self.done, self.failed, self.running = total, 0, 0, 0

    def finished(self, trace: dict) -> None:
        self.running -= 1
        self.done += 1
        self.failed += trace["outcome"]["status"] == "error"
        log.info("traces: %d/%d done, %d failed, %d running (%s: %s)", self.done, self.total, self.failed,
                 self.running, trace["trace_id"], trace["outcome"]["status"])


async def acollect(taskfile: TaskFile, task_ids: Iterable[str], endpoint: Endpoint | None, settings: Settings, *,
                   default_samples: int = 0, reference: bool = True, samples: int | None = None,
                   reverse_tools: bool = False) -> dict[str, list[dict]]:
    """Collect every planned trace of the given tasks, `settings.concurrency` at a time."""
    jobs = [(taskfile.tasks[t], s) for t in task_ids
            for s in planned_samples(taskfile.tasks[t], default_samples, reference, samples)]
    needs_model = any(s is not None for _, s in jobs)
    if needs_model and endpoint is None:
        raise ValueError("model samples were asked for but no endpoint was given")
    limit, progress = asyncio.Semaphore(settings.concurrency), Progress(len(jobs))

    async def guarded(task, sample, client):
        async with limit:
            progress.running += 1
            trace = await run_one(task, taskfile, endpoint, settings, sample, client, reverse_tools)
            progress.finished(trace)
            return trace

    # Closed inside the loop: a client left to the garbage collector closes on a dead loop.
    async with endpoint.client() if needs_model else contextlib.nullcontext() as client:
        if needs_model:  # a dead server stops here, in one line
            client = client.with_options(timeout=await request_timeout(client, endpoint, settings))
        traces = await asyncio.gather(*(guarded(task, s, client) for task, s in jobs))
    by_task: dict[str, list[dict]] = {t: [] for t in task_ids}
    for trace in traces:
        by_task[trace["task_id"]].append(trace)
    return by_task


def collect_task(taskfile: TaskFile, task_id: str, endpoint: Endpoint | None, settings: Settings, **kwargs) -> list[dict]:
    return asyncio.run(acollect(taskfile, [task_id], endpoint, settings, **kwargs))[task_id]


def collect_to_file(taskfile: TaskFile, task_id: str, out_path: str, endpoint: Endpoint | None,
                    settings: Settings, default_samples: int, max_error_rate: float = 0.5) -> list[dict]:
    """The collect rule: all traces of one task, written atomically as JSONL, unless more of them
    than `max_error_rate` ended in an error."""
    traces = collect_task(taskfile, task_id, endpoint, settings, default_samples=default_samples)
    check_error_budget(traces, max_error_rate, f"collecting {task_id!r}", "collect.max_error_rate")
    write_jsonl(out_path, traces)
    return traces
