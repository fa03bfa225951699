"""Benchmark the dataset build: 10,000 synthetic curated traces of about 5 assistant turns →
train/eval Parquet, end to end (reading, rendering, verifying, tokenising, writing).

    .venv/bin/python bench/dataset_build.py [--model-dir DIR] [--traces N] [--template qwen3]

Targets (2 cores): ≥ 1,000 rows/s, peak memory < 1 GB. Prints its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from tracetune.dataset import build_dataset

TOOLS = [{"type": "function", "function": {
    "name": name, "description": f"{name.replace('_', ' ')} in the shop catalogue.",
    "parameters": {"type": "object", "properties": {"item": {"type": "string"}, "qty": {"type": "integer"}},
                   "required": ["item"]}}} for name in ("get_price", "get_stock", "search_items", "get_hours")]
WORDS = "the a blue red widget gadget price stock shop order item costs dollars store open check look".split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def synthetic_trace(task_id: str, i: int, rng: random.Random) -> dict:
    """A user question, 4 tool-calling turns with results, a final answer: 5 assistant turns."""
    messages = [{"role": "user", "content": sentence(rng, 20)}]
    for k in range(rng.randint(3, 5)):
        call_id = f"call_{i}_{k}"
        tool = rng.choice(TOOLS)["function"]["name"]
        messages.append({"role": "assistant", "content": "", "reasoning_content": sentence(rng, 30),
                         "tool_calls": [{"id": call_id, "type": "function", "function": {
                             "name": tool, "arguments": json.dumps({"item": sentence(rng, 2), "qty": k})}}]})
        messages.append({"role": "tool", "tool_call_id": call_id, "name": tool, "content": sentence(rng, 60)})
    messages.append({"role": "assistant", "content": sentence(rng, 40), "reasoning_content": sentence(rng, 30)})
    return {"trace_id": f"{task_id}--s{i}", "task_id": task_id, "source": "model", "model": "bench",
            "tools": TOOLS, "messages": messages, "outcome": {"status": "answered"}, "check": {"passed": True}}


def write_curated(folder: Path, n_traces: int, n_tasks: int = 50) -> tuple[list[str], dict[str, str]]:
    rng = random.Random(0)
    paths, splits = [], {}
    for t in range(n_tasks):
        task_id = f"task-{t:03d}"
        splits[task_id] = "eval" if t % 10 == 0 else "train"
        path = folder / f"{task_id}.jsonl"
        with open(path, "w") as f:
            for i in range(n_traces // n_tasks):
                f.write(json.dumps(synthetic_trace(task_id, i, rng)) + "\n")
        paths.append(str(path))
    return paths, splits


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default="data/models/base", help="a prepared base model (tokenizer + template)")
    parser.add_argument("--traces", type=int, default=10_000)
    parser.add_argument("--template", choices=["own", "qwen3"], default="own")
    args = parser.parse_args(argv)
    template = None
    if args.template == "qwen3":
        template = (resources.files("trl") / "chat_templates" / "qwen3.jinja").read_text()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths, splits = write_curated(tmp, args.traces)
        start, cpu_start = time.perf_counter(), time.process_time()
        report = build_dataset(paths, splits, args.model_dir, train_path=str(tmp / "train.parquet"),
                               eval_path=str(tmp / "eval.parquet"), card_path=str(tmp / "README.md"),
                               report_path=str(tmp / "dataset.json"), max_seq_len=4096, chat_template=template)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        size = sum((tmp / f"{s}.parquet").stat().st_size for s in ("train", "eval"))
    rows = sum(report["splits"][s]["rows"] + report["splits"][s]["dropped_too_long"] for s in report["splits"])
    tokens = sum(report["splits"][s]["tokens"] for s in report["splits"])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(f"template: {args.template}  traces: {args.traces}  rows: {rows}  tokens: {tokens}  parquet: {size / 1e6:.1f} MB")
    print(f"time: {seconds:.1f} s  rows/s: {rows / seconds:.0f}  tokens/s: {tokens / seconds:.0f}  "
          f"peak memory (maxrss): {peak_mb:.0f} MB")
    # On a shared machine wall time depends on the neighbours; CPU time (both cores) does not.
    print(f"cpu: {cpu_seconds:.1f} s  rows per cpu-second: {rows / cpu_seconds:.0f}  load average: "
          f"{os.getloadavg()[0]:.1f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
