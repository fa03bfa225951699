"""Rejection-sampling rounds (opt-in: `snakemake rounds`). Round r samples `rounds.samples` traces
per train task from the model of round r-1 (round 1: the SFT run), keeps those that pass the
task's check and curation's filters, and trains a fresh LoRA on the curated train traces plus the
kept samples: data/adapters/{run}-round{r}/, merged and evaluated like any run. Eval tasks never
reach a round (tracetune.config.checked_train_tasks)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import tempfile
from collections import defaultdict
from pathlib import Path

from tracetune.agent import Settings
from tracetune.collect import acollect
from tracetune.config import TaskFile
from tracetune.curate import judge_task, strip_system_prompt
from tracetune.dataset import build_dataset
from tracetune.jsonio import atomic_dir, read_jsonl, write_json, write_jsonl
from tracetune.runtime.endpoint import Endpoint
from tracetune.toolsets import ToolRendering
from tracetune.trace import check_error_budget, trace_id

ROUND_RUN = re.compile(r"(?P<run>[A-Za-z0-9._-]+)-round(?P<round>[1-9][0-9]*)")


def round_run(run: str, round_no: int) -> str:
    """The training run that round `round_no` of `run` makes: {run}-round{r}."""
    return f"{run}-round{round_no}"


def parse_round_run(name: str) -> tuple[str, int] | None:
    """(run, round) of a round's run name, or None for any other run."""
    match = ROUND_RUN.fullmatch(name)
    return (match["run"], int(match["round"])) if match else None


def sampler(run: str, round_no: int) -> str:
    """The model a round samples from: the SFT run for round 1, else the previous round's."""
    return run if round_no == 1 else round_run(run, round_no - 1)


def sample_round(taskfile: TaskFile, tasks: list[dict], endpoint: Endpoint, settings: Settings, *,
                 samples: int, round_no: int, out_path: str, system_prompt: bool = True,
                 max_error_rate: float = 0.5) -> list[dict]:
    """The rounds_sample rule: `samples` traces of every task from the round's sampler, written
    atomically as one JSONL, unless more than `max_error_rate` of them ended in an error. Without
    `system_prompt` the sampler is asked as it was trained: without the task file's system prompt."""
    if not system_prompt:
        taskfile = dataclasses.replace(taskfile, system_prompt=None)
    by_task = asyncio.run(acollect(taskfile, [t["id"] for t in tasks], endpoint, settings,
                                   reference=False, samples=samples))
    # Ids of their own, so a round's samples never clash with collected ones ({task}--s{n}).
    traces = [trace | {"trace_id": trace_id(task, f"round{round_no}-s{trace['sample']}")}
              for task, task_traces in by_task.items() for trace in task_traces]
    check_error_budget(traces, max_error_rate, f"sampling round {round_no}", "rounds.max_error_rate")
    write_jsonl(out_path, traces)
    return traces


def keep_samples(traces: list[dict], tasks: list[dict], *, system_prompt: str | None = None,
                 keep_system_prompt: bool = False, drop_unrecovered_tool_errors: bool = False,
                 ) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Judge each task's samples as curation judges collected traces (its check, invalid calls,
    duplicates): the kept traces by task, and per task the counts sampled, passed (the check) and kept."""
    by_task = defaultdict(list)
    for trace in traces:
        by_task[trace["task_id"]].append(trace)
    kept, stats = {}, {}
    for task in tasks:
        judged = judge_task(by_task[task["id"]], check=task["check"],
                            drop_unrecovered_tool_errors=drop_unrecovered_tool_errors)
        kept[task["id"]] = [t if keep_system_prompt else strip_system_prompt(t, system_prompt)
                            for t, reason in judged if reason is None]
        stats[task["id"]] = {"sampled": len(judged), "passed": sum(t["check"]["passed"] for t, _ in judged),
                             "kept": len(kept[task["id"]])}
    return kept, stats


def round_summary(run: str, round_no: int, stats: dict[str, dict], dataset_report: dict) -> dict:
    total = {key: sum(s[key] for s in stats.values()) for key in ("sampled", "passed", "kept")}
    return {"run": round_run(run, round_no), "round": round_no, "sampled_from": sampler(run, round_no),
            **total, "pass_rate": total["passed"] / total["sampled"] if total["sampled"] else 0.0,
            "train_rows": dataset_report["splits"]["train"]["rows"], "tasks": stats}


def build_round_dataset(samples_path: str, curated_paths: list[str], tasks: list[dict], train_ids: list[str],
                        model_dir: str, *, run: str, round_no: int, kept_dir: str, train_path: str,
                        card_path: str, summary_path: str, max_seq_len: int, curate: dict,
                        system_prompt: str | None, tool_rendering: ToolRendering = ToolRendering(),
                        base_model: str = "") -> dict:
    """The rounds_dataset rule: the kept samples (one JSONL per task in `kept_dir`) and the train
    Parquet of the curated train traces plus them, rendered as the SFT dataset is; the round's
    pass rate on its tasks in `summary_path`."""
    traces = [trace for _, trace in read_jsonl(samples_path)]
    kept, stats = keep_samples(traces, tasks, system_prompt=system_prompt, **curate)
    with atomic_dir(kept_dir) as tmp:
        for task_id, task_traces in kept.items():
            if task_traces:
                write_jsonl(Path(tmp) / f"{task_id}.jsonl", task_traces)
    kept_paths = sorted(str(p) for p in Path(kept_dir).glob("*.jsonl"))
    with tempfile.TemporaryDirectory() as scratch:  # no eval task reaches a round: its eval split is empty
        report = build_dataset([*curated_paths, *kept_paths], dict.fromkeys(train_ids, "train"), model_dir,
                               train_path=train_path, eval_path=f"{scratch}/eval.parquet", card_path=card_path,
                               report_path=f"{scratch}/dataset.json", max_seq_len=max_seq_len,
                               tool_rendering=tool_rendering, base_model=base_model)
    summary = round_summary(run, round_no, stats, report)
    write_json(summary_path, summary)
    return summary
