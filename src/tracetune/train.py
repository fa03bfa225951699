"""LoRA training on the unrolled dataset: TRL's SFTTrainer + PEFT on CPU, unsloth on CUDA.

Rows of one trace share their prefix. Where the chat template renders earlier turns exactly as they
were at their own end (checked per trace, on the rendered text and on its tokens), the trace trains
as ONE sequence with a loss region on every target turn: the same summed loss as its rows trained
separately, for a fraction of the compute. Other traces train row by row.

Checkpoints live outside the output directory (Snakemake clears a job's outputs before it reruns),
keyed by a fingerprint of the data and settings, so a killed job run again resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import resource
import shutil
import time
from collections import defaultdict
from pathlib import Path

from tracetune.config import section_settings
from tracetune.jsonio import InputError, atomic_dir, write_json, write_jsonl
from tracetune.models import check_model_dir, check_target_modules, module_names
from tracetune.runtime.settings import split_settings
from tracetune.rows import IGNORE, check_rows, prefix_owners, tokenize_for_loss

log = logging.getLogger(__name__)

BACKENDS = ("auto", "trl", "unsloth")

# --- checks before any compute -------------------------------------------------------------------

def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_backend(name: str) -> str:
    """auto → unsloth on CUDA when it is installed, else trl. Never imports unsloth."""
    if name not in BACKENDS:
        raise InputError(f"config.yaml: train.backend: {name!r} is not one of {', '.join(BACKENDS)}")
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if name == "unsloth":
        if not cuda_available():
            raise InputError("config.yaml: train.backend: unsloth needs a CUDA device and none is present "
                             "(use backend: trl or auto on this machine)")
        if not has_unsloth:
            raise InputError("config.yaml: train.backend: unsloth is not installed (pip install 'tracetune[gpu]')")
        return "unsloth"
    if name == "auto":
        return "unsloth" if has_unsloth and cuda_available() else "trl"
    return "trl"


def load_rows(path: str | os.PathLike, split: str = "train") -> list[dict]:
    """The rows of `split`, checked for the columns training needs."""
    import polars as pl

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: train split: file not found")
    frame = pl.read_parquet(path)
    if "split" in frame.columns:
        frame = frame.filter(pl.col("split") == split)
    if frame.height == 0:
        raise InputError(f"{path}: train split: no rows")
    rows = frame.to_dicts()
    check_rows(rows, str(path))
    return rows


# --- sequences: merged traces or separate rows ---------------------------------------------------

def _row_example(tokenizer, row: dict) -> dict:
    ids, labels = tokenize_for_loss(tokenizer, row["text"], [(row["loss_start"], row["loss_end"])])
    return {"input_ids": ids, "labels": labels, "trace_id": row["trace_id"], "rows": 1, "merged": False}


def _merged_example(tokenizer, rows: list[dict], row_examples: list[dict]) -> dict | None:
    """One sequence for the trace when every row is a prefix of the last (tracetune.rows), in
    text AND in tokens."""
    if len(set(prefix_owners(rows))) != 1:
        return None
    longest = rows[-1]
    ids, labels = tokenize_for_loss(tokenizer, longest["text"], [(r["loss_start"], r["loss_end"]) for r in rows])
    # A prefix in text can still tokenize differently at its end (BPE merges across the cut).
    for example in row_examples:
        n = len(example["input_ids"])
        if ids[:n] != example["input_ids"] or any(
                lab != IGNORE and labels[i] != lab for i, lab in enumerate(example["labels"])):
            return None
    return {"input_ids": ids, "labels": labels, "trace_id": longest["trace_id"], "rows": len(rows), "merged": True}


def build_sequences(rows: list[dict], tokenizer, max_seq_len: int, merge_traces: bool = True,
                    where: str = "dataset") -> tuple[list[dict], dict]:
    """Training examples (input_ids, labels) and counts; merged per trace where the rendering allows."""
    by_trace: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:  # each rendering of a trace is its own sequence (its tool list differs)
        by_trace[row["trace_id"], row.get("rendering") or 0].append(row)
    examples, dropped, shortest = [], 0, None
    for trace_rows in by_trace.values():
        row_examples = [_row_example(tokenizer, row) for row in trace_rows]
        merged = _merged_example(tokenizer, trace_rows, row_examples) if merge_traces and len(trace_rows) > 1 else None
        if merged is not None and len(merged["input_ids"]) <= max_seq_len:
            examples.append(merged)
            continue
        for example in row_examples:
            n = len(example["input_ids"])
            shortest = n if shortest is None else min(shortest, n)
            if n > max_seq_len:
                dropped += 1  # truncating would cut the target turn: the row is left out instead
            else:
                examples.append(example)
    if not examples:
        raise InputError(f"{where}: train.max_seq_len: {max_seq_len} is smaller than every row "
                         f"(the shortest has {shortest} tokens)")
    counts = {
        "rows": len(rows),
        "rows_dropped_too_long": dropped,
        "traces": len(by_trace),
        "sequences": len(examples),
        "merged_sequences": sum(e["merged"] for e in examples),
        "rows_in_merged_sequences": sum(e["rows"] for e in examples if e["merged"]),
        "tokens": sum(len(e["input_ids"]) for e in examples),
        "loss_tokens": sum(sum(lab != IGNORE for lab in e["labels"]) for e in examples),
    }
    return examples, counts


# --- the run ---------------------------------------------------------------------------------------

def fingerprint(examples: list[dict], settings: dict, base_model: str | os.PathLike) -> str:
    """Changes with the data, the settings that shape training (its result settings), or the base
    model: a checkpoint made under another fingerprint is never resumed."""
    result, _ = split_settings(settings, "train")
    digest = hashlib.sha256()
    digest.update(json.dumps(result, sort_keys=True).encode())
    digest.update(str(Path(base_model).resolve()).encode())
    for example in examples:
        digest.update(json.dumps([example["input_ids"], example["labels"]]).encode())
    return digest.hexdigest()[:16]


def prepare_checkpoint_dir(path: Path, print_: str) -> Path:
    stamp = path / "fingerprint"
    if path.exists() and (not stamp.is_file() or stamp.read_text() != print_):
        log.info("checkpoints in %s belong to other data or settings: starting afresh", path)
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    stamp.write_text(print_)
    return path


def last_checkpoint(path: Path) -> str | None:
    """The newest complete checkpoint. The Trainer writes trainer_state.json last, so a run killed
    while saving leaves a folder without it (or with it cut short): that one is passed over."""
    steps = sorted((int(m.group(1)), d) for d in path.glob("checkpoint-*")
                   if (m := re.fullmatch(r"checkpoint-(\d+)", d.name)) and d.is_dir())
    for _, folder in reversed(steps):
        try:
            json.loads((folder / "trainer_state.json").read_text())
            return str(folder)
        except (OSError, ValueError):
            log.warning("%s: incomplete checkpoint (killed while saving?), passed over", folder)
    return None


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train(dataset: str | os.PathLike, base_model: str | os.PathLike, out_dir: str | os.PathLike,
          config: dict | None = None, *, checkpoint_dir: str | os.PathLike | None = None) -> dict:
    """Train a LoRA adapter on the train rows of `dataset` into `out_dir`; returns the summary."""
    settings = section_settings("train", config)
    backend = resolve_backend(settings["backend"])
    if backend == "unsloth":
        import unsloth  # noqa: F401  (it patches transformers and TRL: before they are first imported)
    base_model = check_model_dir(base_model, "base model")
    rows = load_rows(dataset)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    examples, counts = build_sequences(rows, tokenizer, settings["max_seq_len"], settings["merge_traces"],
                                       where=str(dataset))
    check_target_modules(settings["target_modules"], module_names(base_model), base_model)
    log.info("backend %s: %d rows of %d traces → %d sequences (%d merged), %d tokens, %d loss tokens",
             backend, counts["rows"], counts["traces"], counts["sequences"], counts["merged_sequences"],
             counts["tokens"], counts["loss_tokens"])

    out_dir = Path(out_dir)
    checkpoint_dir = Path(checkpoint_dir or Path("data/checkpoints") / out_dir.name)
    prepare_checkpoint_dir(checkpoint_dir, fingerprint(examples, settings, base_model))
    resume_from = last_checkpoint(checkpoint_dir)
    if resume_from:
        log.info("resuming from %s", resume_from)

    from tracetune.backends import run_trainer

    started = time.perf_counter()
    result = run_trainer(backend, examples, tokenizer, base_model, checkpoint_dir, settings, resume_from)
    wall_s = time.perf_counter() - started

    summary = {
        "backend": backend,
        "device": result["device"],
        "base_model": str(base_model),
        **counts,
        "trainable_params": result["trainable_params"],
        "total_params": result["total_params"],
        "trainable_share": result["trainable_params"] / result["total_params"],
        "steps": result["global_step"],
        "epochs": settings["epochs"],
        "resumed_from_step": result["resumed_from_step"],
        "tokens_trained": result["tokens_trained"],
        "tokens_per_s": result["tokens_trained"] / max(result["train_s"], 1e-9),
        "train_s": result["train_s"],
        "wall_s": wall_s,
        "peak_memory_mb": peak_memory_mb(result["device"]),
        "final_loss": result["final_loss"],
    }
    write_outputs(out_dir, result, tokenizer, settings, summary)
    return summary


def write_outputs(out_dir: Path, result: dict, tokenizer, settings: dict, summary: dict) -> None:
    """Everything goes to a temporary sibling first; it replaces out_dir only when complete."""
    metrics = [entry for entry in result["log_history"] if "loss" in entry]
    with atomic_dir(out_dir) as tmp:
        result["model"].save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_jsonl(tmp / "metrics.jsonl", metrics)
        write_json(tmp / "settings.json", {**settings, "backend_resolved": summary["backend"]})
        write_json(tmp / "summary.json", summary)
        write_tensorboard(metrics, tmp / "tensorboard")
        plot_metric(metrics, tmp / "loss.png", "loss", "training loss (target turns)", f"training loss — {out_dir.name}")


def write_tensorboard(metrics: list[dict], path: Path) -> None:
    """From the trainer's log history (restored on resume), so a resumed run has one clean curve."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(path))
    for entry in metrics:
        for key in ("loss", "learning_rate", "grad_norm"):
            if isinstance(entry.get(key), (int, float)) and math.isfinite(entry[key]):
                writer.add_scalar(f"train/{key}", entry[key], entry["step"])
    writer.close()


def plot_metric(metrics: list[dict], path: Path, key: str, ylabel: str, title: str) -> None:
    """One logged metric against the step (training loss here, RL's mean reward in tracetune.rl)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(m["step"], m[key]) for m in metrics
              if isinstance(m.get(key), (int, float)) and math.isfinite(m[key])]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
