"""Which tools a training row offers the model, so that tool choice transfers beyond the lists
tasks were collected with.

A trace collected under a `tools:` allowlist only calls tools it was allowed, so it stays a
correct trace under the full tool list of its servers (`server_tools`, recorded by collect). The
dataset stage renders each trace with that list, shuffled per rendering, optionally with
distractor tools of other servers, and possibly several times. Everything is seeded by the
trace id, so a build is deterministic for a seed and differs across seeds."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from tracetune.checks import attempted_tool_names
from tracetune.jsonio import InputError

TOOL_LISTS = ("servers", "recorded")


@dataclass(frozen=True)
class ToolRendering:
    tool_list: str = "servers"  # servers: every tool of the task's servers; recorded: the list collection offered
    shuffle: bool = True
    distractors: int = 0  # tools of other servers added to each list
    renderings: int = 1  # distinct tool lists per training trace (eval traces get one)
    seed: int = 0

    @classmethod
    def from_config(cls, dataset: dict) -> ToolRendering:
        return cls(dataset["tool_list"], dataset["shuffle_tools"], dataset["distractor_tools"],
                   dataset["renderings"], dataset["seed"])


def tool_name(tool: dict) -> str:
    return (tool.get("function") or tool)["name"]


def possible_lists(n_tools: int, n_others: int, opts: ToolRendering) -> int:
    """How many distinct tool lists the options can make for a trace."""
    orders = math.factorial(n_tools + opts.distractors) if opts.shuffle else 1
    return math.comb(n_others, opts.distractors) * orders


def check_options(opts: ToolRendering, n_tools: int, n_others: int, where: str, count: int | None = None) -> None:
    """One line naming the setting when a trace cannot get `count` (default: renderings) lists."""
    count = opts.renderings if count is None else count
    if opts.distractors > n_others:
        raise InputError(f"{where}: dataset.distractor_tools: {opts.distractors} asked for, but only "
                         f"{n_others} tool(s) of other servers exist")
    possible = possible_lists(n_tools, n_others, opts)
    if count > possible:
        raise InputError(f"{where}: dataset.renderings: {count} asked for, but its {n_tools} tool(s) "
                         f"with these options allow only {possible} distinct tool list(s)")


def check_task_options(opts: ToolRendering, taskfile, server_tools: dict[str, list[str]], where: str) -> None:
    """Before anything runs: every training task can be rendered as asked. Servers whose tools are
    not known yet (no reference plan uses them) are checked by the build itself."""
    if any(s not in server_tools for s in taskfile.servers):
        return
    for task_id in taskfile.ids("train"):
        task = taskfile.tasks[task_id]
        own = {t for s in task["servers"] for t in server_tools[s]}
        others = {t for s, names in server_tools.items() if s not in task["servers"] for t in names} - own
        n_tools = len(task["tools"]) if opts.tool_list == "recorded" and task.get("tools") else len(own)
        check_options(opts, n_tools, len(others), f"{where}: task {task_id!r}")


def distractor_pool(traces) -> dict[str, dict]:
    """Every tool the traces' servers offer, by name (first seen wins), for distractors."""
    pool: dict[str, dict] = {}
    for trace in traces:
        for tool in trace.get("server_tools") or trace.get("tools") or []:
            pool.setdefault(tool_name(tool), tool)
    return dict(sorted(pool.items()))


def tool_lists(trace: dict, opts: ToolRendering, pool: dict[str, dict], count: int) -> list[list[dict]]:
    """`count` distinct tool lists to render the trace with (the recorded list, unshuffled, when
    the options ask for nothing else)."""
    where = f"trace {trace['trace_id']!r}"
    base = list(trace.get("server_tools") or trace["tools"]) if opts.tool_list == "servers" else list(trace["tools"])
    names = {tool_name(t) for t in base}
    missing = attempted_tool_names(trace) - names
    if missing:
        raise InputError(f"{where}: tools: calls {sorted(missing)} that its tool list does not offer")
    others = [tool for name, tool in pool.items() if name not in names]
    check_options(opts, len(base), len(others), where, count)
    rng = random.Random(f"{opts.seed}:{trace['trace_id']}")  # str seeds hash with SHA-512: stable across runs
    lists, seen = [], set()
    while len(lists) < count:
        tools = base + rng.sample(others, opts.distractors)
        if opts.shuffle:
            rng.shuffle(tools)
        key = tuple(tool_name(t) for t in tools)
        if key not in seen:
            seen.add(key)
            lists.append(tools)
    return lists
