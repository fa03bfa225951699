"""Training throughput: the train rule's code path (merged traces, TRL SFTTrainer + PEFT, or unsloth on
CUDA) against a plain transformers + PEFT loop that trains each unrolled row as its own sequence,
over the same rows, in one run. Each variant runs in its own process so peak memory is its own.

    .venv/bin/python bench/train_throughput.py [--dataset data/dataset/train.parquet] [--base data/models/base]
                                               [--traces 8] [--gpu]

"Row tokens/s" counts the tokens of the unrolled rows (the work both variants stand for); the
speed-up is the ratio of wall times over the same rows. Without a dataset, demo-like traces are
synthesised with tests/train_fixtures.py (4 tool calls per trace).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]


def rows_for(dataset: str | None, base: str, traces: int, path: Path) -> Path:
    import polars as pl

    if dataset and Path(dataset).is_file():
        frame = pl.read_parquet(dataset).filter(pl.col("split") == "train")
        keep = frame["trace_id"].unique(maintain_order=True).head(traces)
        frame.filter(pl.col("trace_id").is_in(keep.implode())).write_parquet(path)
    else:
        from train_fixtures import write_dataset
        from transformers import AutoTokenizer

        write_dataset(path, AutoTokenizer.from_pretrained(base), n_traces=traces, turns=4, filler=3)
    return path


def peak_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_rule_path(data: Path, base: str, backend: str) -> dict:
    from tracetune.train import train

    with tempfile.TemporaryDirectory() as tmp:
        summary = train(data, base, Path(tmp) / "out", {"epochs": 1, "save_steps": 10**6, "backend": backend},
                        checkpoint_dir=Path(tmp) / "ckpt")
    return {"train_s": summary["train_s"], "tokens_processed": summary["tokens_trained"],
            "sequences": summary["sequences"], "peak_mb": summary["peak_memory_mb"], "device": summary["device"]}


def run_plain_peft(data: Path, base: str) -> dict:
    """The usual loop: every unrolled row is its own sequence, loss on its target turn."""
    import polars as pl
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tracetune.backends.peft_lora import lora_config
    from tracetune.models import weights_dtype
    from tracetune.config import section_settings
    from tracetune.train import build_sequences

    settings = section_settings("train")  # the schema's defaults

    rows = pl.read_parquet(data).to_dicts()
    tokenizer = AutoTokenizer.from_pretrained(base)
    examples, _ = build_sequences(rows, tokenizer, settings["max_seq_len"], merge_traces=False)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=weights_dtype(device)).to(device)  # as the rule loads it
    torch.manual_seed(0)
    model = get_peft_model(model, lora_config(settings))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings["learning_rate"])
    started = time.perf_counter()
    for example in examples:
        ids = torch.tensor([example["input_ids"]], device=device)
        labels = torch.tensor([example["labels"]], device=device)
        model(input_ids=ids, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    train_s = time.perf_counter() - started
    return {"train_s": train_s, "tokens_processed": sum(len(e["input_ids"]) for e in examples),
            "sequences": len(examples), "peak_mb": peak_mb(device), "device": device}


def in_child(variant: str, data: Path, base: str, backend: str = "trl") -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--data", str(data), "--base", base,
                          "--backend", backend], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def qwen3_model(path: Path, tokenizer_from: str) -> str:
    """A Qwen3-architecture model (~0.6B shape) built from its config, random weights."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    Qwen3ForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def report(name: str, result: dict, row_tokens: int) -> None:
    print(f"{name:28s} {result['device']:4s} sequences={result['sequences']:4d} "
          f"processed={result['tokens_processed']:7d} tok  wall={result['train_s']:8.1f} s  "
          f"row tokens/s={row_tokens / result['train_s']:8.1f}  processed tok/s="
          f"{result['tokens_processed'] / result['train_s']:8.1f}  peak={result['peak_mb']:7.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default=str(ROOT / "data/dataset/train.parquet"))
    parser.add_argument("--base", default=str(ROOT / "data/models/base"), help="a prepared base model")
    parser.add_argument("--traces", type=int, default=8)
    parser.add_argument("--child"), parser.add_argument("--data"), parser.add_argument("--backend", default="trl")
    args = parser.parse_args()
    if args.child:
        run = run_plain_peft(Path(args.data), args.base) if args.child == "plain" else \
            run_rule_path(Path(args.data), args.base, args.backend)
        print(json.dumps(run))
        return

    import polars as pl
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        data = rows_for(args.dataset, args.base, args.traces, Path(tmp) / "rows.parquet")
        rows = pl.read_parquet(data)
        row_tokens = int(rows["n_tokens"].sum())
        print(f"{rows.height} rows of {rows['trace_id'].n_unique()} traces, {row_tokens} row tokens, base {args.base}")
        plain = in_child("plain", data, args.base)
        rule = in_child("rule", data, args.base, "trl")
        report("plain transformers+PEFT", plain, row_tokens)
        report("train rule (trl)", rule, row_tokens)
        print(f"speed-up (same rows, wall time): {plain['train_s'] / rule['train_s']:.2f}x  (CPU target >= 1.5x)")
        if torch.cuda.is_available():
            gpu_bench(Path(tmp), args.base, args.traces)


def gpu_bench(tmp: Path, tokenizer_from: str, traces: int) -> None:
    import importlib.util

    import polars as pl
    import torch

    model = qwen3_model(tmp / "qwen3", tokenizer_from)
    data = rows_for(None, model, traces * 4, tmp / "gpu_rows.parquet")
    rows = pl.read_parquet(data)
    row_tokens = int(rows["n_tokens"].sum())
    n_params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(model).parameters())
    peak_flops = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
    name = torch.cuda.get_device_name()
    flops = next((v for k, v in peak_flops.items() if k in name), None)
    plain = in_child("plain", data, model)
    report("plain PEFT (qwen3 cfg)", plain, row_tokens)
    backends = ["trl"] + (["unsloth"] if importlib.util.find_spec("unsloth") else [])
    for backend in backends:
        result = in_child("rule", data, model, backend)
        report(f"train rule ({backend})", result, row_tokens)
        mfu = 6 * n_params * result["tokens_processed"] / result["train_s"] / flops if flops else float("nan")
        print(f"  {backend}: {plain['train_s'] / result['train_s']:.2f}x plain PEFT; MFU {mfu:.1%} on {name} "
              f"({n_params / 1e6:.0f}M params)")
    if "unsloth" not in backends:
        print("  unsloth not installed: no unsloth figures (pip install 'tracetune[gpu]')")


if __name__ == "__main__":
    main()
