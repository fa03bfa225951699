"""Training speed as a fraction of this machine's matmul peak, and what the LM head costs.

    .venv/bin/python bench/train_mfu.py [--dataset .smoke/data/dataset/train.parquet] [--base .smoke/data/models/base] [--rows N]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 .venv/bin/python bench/train_mfu.py   # a plain AVX2 CPU

1. The peak: torch matmuls at the model's own shapes (a sequence of tokens against each projection
   and the LM head), in float32 and, where the CPU has it natively, bf16; the best GFLOP/s is the peak.
2. Training: the train rule's code path (tracetune.train) over the same rows twice, each in its own
   process: with the LM head only at loss positions (tracetune.rows.region_loss, what the rule runs)
   and with the model's own loss over every position's logits (before). FLOPs are counted as the
   work a LoRA step must do: 2 x forward (forward, and the activation gradients of backward; frozen
   weights get none) of every projection per token, the LM head per position it runs at, attention
   scores. The fraction of peak is those FLOPs per second over the peak.
3. The loss of both ways on the rows, which must agree to 1e-5.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
THREADS = len(os.sched_getaffinity(0))


def cpu_kind() -> str:
    import torch

    from tracetune.models import bf16_native

    return (f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
            f"bf16 native: {bf16_native('cpu')}, {THREADS} threads, ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '-')}, "
            f"MKL_ENABLE_INSTRUCTIONS={os.environ.get('MKL_ENABLE_INSTRUCTIONS', '-')}")


def shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) of each matmul a token goes through, per layer, and the LM head."""
    h, i, heads, kv = config.hidden_size, config.intermediate_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    return {"q_proj": (h, heads * head_dim), "k_proj": (h, kv * head_dim), "v_proj": (h, kv * head_dim),
            "o_proj": (heads * head_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
            "lm_head": (h, config.vocab_size)}


def matmul_peak(config, dtype, tokens: int = 1024, seconds: float = 1.0) -> dict[str, float]:
    """GFLOP/s of [tokens, in] @ [in, out] at each shape (weights as nn.Linear keeps them)."""
    import torch

    results = {}
    for name, (n_in, n_out) in shapes(config).items():
        x = torch.randn(tokens, n_in, dtype=dtype)
        w = torch.randn(n_out, n_in, dtype=dtype)
        for _ in range(3):
            torch.nn.functional.linear(x, w)
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            torch.nn.functional.linear(x, w)
            runs += 1
        results[name] = 2 * tokens * n_in * n_out * runs / (time.perf_counter() - started) / 1e9
    return results


def step_flops(config, sequences: list[list[int]], labels: list[list[int]], head_everywhere: bool) -> float:
    """FLOPs a LoRA training pass over these sequences needs (see the module's docstring)."""
    per_token = sum(a * b for name, (a, b) in shapes(config).items() if name != "lm_head") * config.num_hidden_layers
    h, vocab = config.hidden_size, config.vocab_size
    total = 0.0
    for ids, labs in zip(sequences, labels):
        n = len(ids)
        head_positions = n if head_everywhere else sum(1 for label in labs[1:] if label != -100)
        attention = 2 * n * n * h * config.num_hidden_layers  # QK^T and AV, causal half of n^2 each x2
        total += 2 * (2 * per_token * n + 2 * h * vocab * head_positions + attention)
    return total


def train_child(data: str, base: str, way: str) -> dict:
    """One training pass of the rule's code path; `full` swaps in the model's own loss over every position."""
    import resource

    import tracetune.rows
    from tracetune.train import train

    if way == "full":
        def own_loss(model, inputs, num_items=None):
            outputs = model(**inputs, num_items_in_batch=num_items)
            return outputs.loss, outputs
        tracetune.rows.region_loss = own_loss
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(data, base, Path(tmp) / "out", {"epochs": 1, "save_steps": 10**6, "seed": 0},
                        checkpoint_dir=Path(tmp) / "ckpt")
    return {"train_s": summary["train_s"], "tokens": summary["tokens_trained"], "final_loss": summary["final_loss"],
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def losses_agree(data: str, base: str) -> tuple[float, float]:
    """The summed loss over every sequence, both ways, with the base model."""
    import polars as pl
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tracetune.rows import region_loss
    from tracetune.train import build_sequences

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    examples, _ = build_sequences(pl.read_parquet(data).to_dicts(), tokenizer, 4096)
    region = full = 0.0
    with torch.no_grad():
        for e in examples:
            inputs = {"input_ids": torch.tensor([e["input_ids"]]), "labels": torch.tensor([e["labels"]])}
            region += float(region_loss(model, inputs, num_items=1)[0])
            full += float(model(**inputs, num_items_in_batch=1).loss)
    return region, full


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default=str(ROOT / ".smoke/data/dataset/train.parquet"))
    parser.add_argument("--base", default=str(ROOT / ".smoke/data/models/base"), help="a prepared base model")
    parser.add_argument("--rows", type=int, help="the first N rows only (the demo's dataset takes minutes a pass)")
    parser.add_argument("--child"), parser.add_argument("--data")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_child(args.data, args.base, args.child)))
        return

    import polars as pl
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from tracetune.models import bf16_native, weights_dtype
    from tracetune.train import build_sequences

    print(cpu_kind())
    config = AutoConfig.from_pretrained(args.base)
    peaks = {"float32": matmul_peak(config, torch.float32)}
    if bf16_native("cpu"):
        peaks["bfloat16"] = matmul_peak(config, torch.bfloat16)
    for dtype, result in peaks.items():
        print(f"matmul {dtype:8s} " + "  ".join(f"{k} {v:6.1f}" for k, v in result.items()) + "  GFLOP/s")
    train_dtype = str(weights_dtype("cpu")).removeprefix("torch.")
    peak = max(peaks[train_dtype].values())
    print(f"peak at the model's shapes, {train_dtype} (what training runs in here): {peak:.1f} GFLOP/s")

    if args.rows:
        subset = Path(tempfile.mkdtemp()) / "train.parquet"
        pl.read_parquet(args.dataset).head(args.rows).write_parquet(subset)
        args.dataset = str(subset)
    rows = pl.read_parquet(args.dataset).to_dicts()
    examples, counts = build_sequences(rows, AutoTokenizer.from_pretrained(args.base), 4096)
    ids, labels = [e["input_ids"] for e in examples], [e["labels"] for e in examples]
    tokens = sum(map(len, ids))
    learned = sum(1 for lab in labels for x in lab[1:] if x != -100)
    print(f"{len(rows)} rows → {len(examples)} sequences, {tokens} tokens, {learned} in the loss region "
          f"({learned / tokens:.1%}); LM head positions cut by {1 - learned / tokens:.1%}")
    results = {}
    for way in ("full", "region"):
        out = subprocess.run([sys.executable, __file__, "--child", way, "--data", args.dataset, "--base", args.base],
                             capture_output=True, text=True, check=True)
        results[way] = json.loads(out.stdout.strip().splitlines()[-1])
    needed = step_flops(config, ids, labels, head_everywhere=False)
    for way, result in results.items():
        done = step_flops(config, ids, labels, head_everywhere=way == "full")
        print(f"train ({'LM head everywhere' if way == 'full' else 'LM head at loss positions'}): "
              f"{result['train_s']:.1f} s, {result['tokens'] / result['train_s']:.1f} tokens/s, "
              f"{done / result['train_s'] / 1e9:.1f} GFLOP/s executed = {done / result['train_s'] / 1e9 / peak:.0%} of peak; "
              f"needed work {needed / result['train_s'] / 1e9:.1f} GFLOP/s = {needed / result['train_s'] / 1e9 / peak:.0%} "
              f"of peak; final loss {result['final_loss']:.5f}; peak RSS {result['peak_mb']:.0f} MiB")
    print(f"speed-up of the loss-region head: {results['full']['train_s'] / results['region']['train_s']:.2f}x")
    region, full = losses_agree(args.dataset, args.base)
    print(f"summed loss over the rows, base model: region {region:.6f}, full {full:.6f}, "
          f"relative difference {abs(region - full) / abs(full):.2e} (must be < 1e-5)")


if __name__ == "__main__":
    main()
