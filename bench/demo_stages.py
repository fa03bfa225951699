"""The demo's wall time per stage: runs the main command (`snakemake --cores N`, what `make demo`
runs after installing) from an empty data/ and prints each stage's wall time, the CPU's kind,
the collect jobs' cost and the evaluation figures of the run.

    .venv/bin/python bench/demo_stages.py [--cores 2] [--clean]

--clean deletes what data/ holds besides the shipped data/site/, logs/ and benchmarks/ first
(without it, built files in data/ stop the bench).
To stand in for a plain AVX2 CPU on an AVX-512 machine, pin the engines before running it:

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 .venv/bin/python bench/demo_stages.py --clean

(llama.cpp is built for AVX2 without AVX-512 on every machine: scripts/install-llama-cpp.sh.)
A stage's span runs from its first job's start to its last job's end (Snakemake's log, 1 s
resolution), beside the sum of its jobs' own wall times; stages overlap where the DAG lets them
(the base model is evaluated while the tuned one trains).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

STAGES = {  # rule → stage, in pipeline order
    "prepare_base_model": "prepare base model", "collect": "collect", "curate": "curate",
    "curation_report": "curate", "build_dataset": "dataset", "train": "train", "merge": "merge",
    "gguf": "gguf export", "eval_loss": "held-out loss", "evaluate": "evaluate", "report": "report",
}
SHIPPED = {"site"}  # data/site/ is an input kept in the repository
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^(?:local)?rule (\w+):$")
FINISH = re.compile(r"^Finished jobid: \d+ \(Rule: (\w+)\)$")


def cpu_kind() -> dict:
    import torch

    from tracetune.models import bf16_native

    flags = set(Path("/proc/cpuinfo").read_text().split("flags\t\t:", 1)[1].split("\n", 1)[0].split())
    return {"model": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name")), "?"),
            "avx512_bf16 (cpu flag)": "avx512_bf16" in flags,
            "torch capability": torch.backends.cpu.get_cpu_capability(),
            "bf16 native (tracetune)": bf16_native("cpu"),
            "pins": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS") if k in os.environ}}


def own_cpu_until_exit(proc: subprocess.Popen) -> float:
    """CPU seconds of the Snakemake process itself (scheduling, DAG, bookkeeping), its jobs not
    counted, sampled until it exits."""
    import psutil

    snakemake, cpu_s = psutil.Process(proc.pid), 0.0
    while proc.poll() is None:
        try:
            times = snakemake.cpu_times()
            cpu_s = times.user + times.system
        except psutil.Error:
            pass
        time.sleep(0.5)
    return cpu_s


def job_spans(log_path: Path) -> dict[str, list[tuple[float, float]]]:
    """(start, end) of every finished job per rule, from Snakemake's log (1 s resolution)."""
    stamp, open_jobs, spans = None, defaultdict(list), defaultdict(list)
    for line in log_path.read_text().splitlines():
        if m := STAMP.match(line):
            stamp = datetime.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y").timestamp()
        elif (m := START.match(line)) and stamp is not None:
            open_jobs[m.group(1)].append(stamp)
        elif (m := FINISH.match(line)) and open_jobs[m.group(1)]:
            spans[m.group(1)].append((open_jobs[m.group(1)].pop(0), stamp))
    return spans


def collect_cost(bench_dir: Path) -> dict | None:
    """Wall and CPU seconds per collect job (Snakemake's benchmark files: the job's whole process
    tree, MCP servers included) and the time its tool calls took (the traces' own timings)."""
    files = sorted(bench_dir.glob("*.tsv"))
    if not files:
        return None
    rows = [next(csv.DictReader(f.open(), delimiter="\t")) for f in files]
    tools_s = [sum(json.loads(line)["timings"]["tools_s"] for line in p.open())
               for p in Path("data/traces/raw").glob("*.jsonl")]
    return {"jobs": len(rows), "wall_s_mean": statistics.mean(float(r["s"]) for r in rows),
            "cpu_s_mean": statistics.mean(float(r["cpu_time"]) for r in rows),
            "tool_calls_s_mean": statistics.mean(tools_s) if tools_s else None}


def eval_figures() -> dict:
    out = {}
    for summary_path in sorted(Path("data/eval").glob("*/summary.json")):
        s = json.loads(summary_path.read_text())
        per_task, first = s["success"]["per_task"], s["tool_selection"]["first_call"]
        out[s["model"]] = {"solved": "{k}/{n}".format(**per_task), "first_call": "{k}/{n}".format(**first),
                           "status": s["status"], "latency": s["latency"],
                           "reordered": s["reordered"] and {"solved": "{k}/{n}".format(**s["reordered"]["per_task"]),
                                                            "delta_points": s["reordered"]["delta_points"]}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--clean", action="store_true", help="delete built data/, logs/ and benchmarks/ first")
    args = parser.parse_args()
    os.chdir(ROOT)
    built = [p for p in Path("data").glob("*") if p.name not in SHIPPED]
    if args.clean:
        for path in [*built, Path("logs"), Path("benchmarks")]:
            shutil.rmtree(path, ignore_errors=True)
    elif built:
        sys.exit("demo_stages: data/ holds built files (--clean deletes them, with logs/ and benchmarks/)")
    before = set(Path(".snakemake/log").glob("*.log")) if Path(".snakemake/log").is_dir() else set()
    started = time.monotonic()
    run = subprocess.Popen([str(Path(sys.executable).parent / "snakemake"), "--cores", str(args.cores)])
    snakemake_cpu_s = own_cpu_until_exit(run)
    total_s = time.monotonic() - started
    log_path = max(set(Path(".snakemake/log").glob("*.log")) - before, key=lambda p: p.stat().st_mtime)
    spans = job_spans(log_path)
    stages: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for rule, rule_spans in spans.items():
        stages[STAGES.get(rule, rule)] += rule_spans
    print(json.dumps({"cpu": cpu_kind(), "exit_status": run.returncode, "total_s": round(total_s),
                      "snakemake_own_cpu_s": round(snakemake_cpu_s)}, indent=1))
    # span: first start to last end (base and tuned model jobs of a stage lie far apart);
    # jobs s: the stage's jobs' own wall times, added up.
    print(f"{'stage':<20} {'jobs':>5} {'span s':>8} {'jobs s':>8}")
    for stage in dict.fromkeys(STAGES.values()):
        if stage in stages:
            s = stages[stage]
            print(f"{stage:<20} {len(s):>5} {max(e for _, e in s) - min(b for b, _ in s):>8.0f} "
                  f"{sum(e - b for b, e in s):>8.0f}")
    print("collect per job:", json.dumps(collect_cost(Path("benchmarks/collect"))))
    print("evaluation:", json.dumps(eval_figures(), indent=1))
    sys.exit(run.returncode)


if __name__ == "__main__":
    main()
