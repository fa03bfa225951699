"""Training: merged-trace equivalence, outputs, resume after a kill, bad input before compute."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_fixtures import TOOLS, make_trace, render_rows, write_dataset  # noqa: E402

from tracetune import train as train_mod  # noqa: E402
from tracetune.jsonio import InputError  # noqa: E402
from tracetune.train import build_sequences, last_checkpoint, train  # noqa: E402

QWEN3_TEMPLATE = Path(__import__("trl").__file__).parent / "chat_templates" / "qwen3.jinja"
FAST = {"save_steps": 100, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def tokenizer(bundled_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_model)


def summed_loss(model, examples) -> float:
    """Sum of per-token cross-entropy over the loss tokens of `examples`."""
    import torch

    total = 0.0
    with torch.no_grad():
        for example in examples:
            ids = torch.tensor([example["input_ids"]])
            labels = torch.tensor(example["labels"][1:])
            logits = model(ids).logits[0, :-1].float()
            total += torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item()
    return total


def test_merged_traces_have_the_same_loss_as_their_rows(tokenizer, tiny_base):
    import torch
    from transformers import AutoModelForCausalLM

    rows = [row for i in range(3) for row in render_rows(tokenizer, make_trace(i, turns=2))]
    merged, merged_counts = build_sequences(rows, tokenizer, 4096, merge_traces=True)
    separate, separate_counts = build_sequences(rows, tokenizer, 4096, merge_traces=False)
    assert merged_counts["merged_sequences"] == 3 and len(merged) == 3 and len(separate) == len(rows) == 9
    assert merged_counts["loss_tokens"] == separate_counts["loss_tokens"]
    assert merged_counts["tokens"] < separate_counts["tokens"] / 1.8
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    with torch.no_grad():  # random LoRA-sized perturbation, so the weights are not just the init
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    assert summed_loss(model, merged) == pytest.approx(summed_loss(model, separate), rel=1e-5)



@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding-free"])
def test_the_lm_head_only_where_the_loss_is_gives_the_models_own_loss(tokenizer, tiny_base, padding_free):
    """rows.region_loss, what CPU training runs: the same loss and gradients as the model's own
    loss over every position's logits, on a LoRA model, in a padded and a padding-free batch."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from tracetune.rows import region_loss

    rows = [row for i in range(3) for row in render_rows(tokenizer, make_trace(i, turns=2))]
    examples, _ = build_sequences(rows, tokenizer, 4096, merge_traces=False)
    collate = DataCollatorForLanguageModeling(tokenizer.pad_token_id, padding_free=padding_free)
    batch = collate([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples[:4]])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    learned = (batch["labels"][:, 1:] != -100).sum()
    assert learned < batch["labels"].numel() / 2  # most positions are outside the loss region

    def loss_and_grads(compute):
        model.zero_grad()
        loss = compute()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    own, own_grads = loss_and_grads(lambda: model(**batch, num_items_in_batch=learned).loss)
    region, region_grads = loss_and_grads(lambda: region_loss(model, batch, learned)[0])
    assert region == pytest.approx(own, rel=1e-5)
    for a, b in zip(own_grads, region_grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)

def test_rows_that_render_differently_at_their_end_train_separately(tokenizer):
    # Qwen3's template drops reasoning of turns before the last user message: not a prefix.
    template = QWEN3_TEMPLATE.read_text()
    trace = make_trace(0, turns=1)
    trace["messages"] += [{"role": "user", "content": "Thanks. And in euros?"},
                          {"role": "assistant", "content": "About the same.", "reasoning_content": "Guess."}]
    qwen_rows = render_rows(tokenizer, trace, chat_template=template)
    assert not qwen_rows[-1]["text"].startswith(qwen_rows[0]["text"])
    examples, counts = build_sequences(qwen_rows, tokenizer, 4096)
    assert counts["merged_sequences"] == 0 and len(examples) == len(qwen_rows) == 3
    # the same trace under the bundled (prefix-preserving) template merges into one sequence
    examples, counts = build_sequences(render_rows(tokenizer, trace), tokenizer, 4096)
    assert counts["merged_sequences"] == 1 and len(examples) == 1


def test_each_rendering_of_a_trace_merges_into_its_own_sequence(tokenizer):
    """Two renderings (other tool lists) of one trace share a trace id but are not prefixes of
    each other: each must still merge into one sequence of its own."""
    trace = make_trace(2, turns=2)
    other = dict(trace, tools=TOOLS + [{"type": "function", "function": {"name": "refund", "parameters": {}}}])
    rows = render_rows(tokenizer, trace) + [row | {"rendering": 1} for row in render_rows(tokenizer, other)]
    examples, counts = build_sequences(rows, tokenizer, 4096)
    assert counts["merged_sequences"] == 2 and len(examples) == 2
    assert counts["loss_tokens"] == build_sequences(rows, tokenizer, 4096, merge_traces=False)[1]["loss_tokens"]


def test_loss_labels_cover_exactly_the_target_turns(tokenizer):
    rows = render_rows(tokenizer, make_trace(1, turns=2))
    [example], _ = build_sequences(rows, tokenizer, 4096)
    trained = tokenizer.decode([t for t in example["labels"] if t != -100])
    expected = "".join(row["text"][row["loss_start"]:row["loss_end"]] for row in rows)
    assert trained == expected


def test_train_writes_adapter_metrics_and_summary(tmp_path, tokenizer, tiny_base):
    write_dataset(tmp_path / "train.parquet", tokenizer, n_traces=2)
    out = tmp_path / "adapters" / "lora"
    summary = train(tmp_path / "train.parquet", tiny_base, out, {**FAST, "epochs": 2},
                    checkpoint_dir=tmp_path / "ckpt")
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "settings.json",
                 "metrics.jsonl", "summary.json", "loss.png"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # 2 merged traces × 2 epochs, batch size 1
    assert summary["sequences"] == 2 and summary["rows"] == 6 and summary["merged_sequences"] == 2
    assert 0 < summary["trainable_share"] < 0.2 and summary["tokens_per_s"] > 0
    assert summary["tokens_trained"] == 2 * summary["tokens"]
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 32 and adapter["use_rslora"] is True
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"}
    assert not list(out.parent.glob(".*.tmp"))


def test_padding_free_batches(tmp_path, tokenizer, tiny_base):
    write_dataset(tmp_path / "train.parquet", tokenizer, n_traces=4)
    summary = train(tmp_path / "train.parquet", tiny_base, tmp_path / "out", {**FAST, "batch_size": 2, "epochs": 1},
                    checkpoint_dir=tmp_path / "ckpt")
    assert summary["steps"] == 2 and summary["tokens_trained"] == summary["tokens"]


RUN_TRAIN = """
import sys
from tracetune.train import train
train(sys.argv[1], sys.argv[2], sys.argv[3], {"epochs": 3, "save_steps": 2, "learning_rate": 1e-3},
      checkpoint_dir=sys.argv[4])
"""


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, tokenizer, tiny_base):
    write_dataset(tmp_path / "train.parquet", tokenizer, n_traces=2)
    args = [str(tmp_path / "train.parquet"), str(tiny_base), str(tmp_path / "out"), str(tmp_path / "ckpt")]
    proc = subprocess.Popen([sys.executable, "-c", RUN_TRAIN, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "ckpt"
    deadline = time.monotonic() + 120
    while last_checkpoint(ckpt) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # at once: a later checkpoint may be half-written, which resume skips
    proc.wait()
    assert last_checkpoint(ckpt), "no checkpoint before the kill"
    assert not (tmp_path / "out").exists()  # nothing half-built in the output
    summary = train(*args[:3], {"epochs": 3, "save_steps": 2, "learning_rate": 1e-3}, checkpoint_dir=args[3])
    assert summary["resumed_from_step"] >= 2 and summary["steps"] == 6
    assert summary["tokens_trained"] < 3 * summary["tokens"]  # the steps before the checkpoint were not redone
    steps = [json.loads(line)["step"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_resume_passes_over_a_checkpoint_cut_short(tmp_path):
    for step, state in [(2, '{"global_step": 2}'), (4, '{"global_st'), (10, None)]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert last_checkpoint(tmp_path / "none") is None


@pytest.fixture
def no_compute(monkeypatch):
    import tracetune.backends as backends

    def refuse(*args, **kwargs):
        raise AssertionError("compute started")

    monkeypatch.setattr(backends, "run_trainer", refuse)


@pytest.mark.parametrize("case, message", [
    ("missing", "file not found"),
    ("empty", "train split: no rows"),
    ("short", "max_seq_len: 16 is smaller than every row"),
    ("no_base", "base model: not a model directory"),
    ("bad_module", "target_modules: 'c_attn'"),
    ("bad_backend", "train.backend: 'jax'"),
])
def test_bad_input_is_one_line_before_compute(case, message, tmp_path, tokenizer, tiny_base, no_compute):
    dataset, base, settings = tmp_path / "train.parquet", tiny_base, dict(FAST)
    write_dataset(dataset, tokenizer, n_traces=1, split="eval" if case == "empty" else "train")
    if case == "missing":
        dataset = tmp_path / "nope.parquet"
    settings |= {"short": {"max_seq_len": 16}, "bad_module": {"target_modules": ["q_proj", "c_attn"]},
                 "bad_backend": {"backend": "jax"}}.get(case, {})
    if case == "no_base":
        base = tmp_path / "no-model"
    with pytest.raises(InputError, match=message) as error:
        train(dataset, base, tmp_path / "out", settings, checkpoint_dir=tmp_path / "ckpt")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_unsloth_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(train_mod, "cuda_available", lambda: False)
    with pytest.raises(InputError, match="unsloth needs a CUDA device"):
        train_mod.resolve_backend("unsloth")


def test_auto_on_cpu_never_imports_unsloth(tmp_path, monkeypatch, tokenizer, tiny_base):
    # An importable "unsloth" that explodes if anything imports it.
    (tmp_path / "unsloth").mkdir()
    (tmp_path / "unsloth" / "__init__.py").write_text("raise RuntimeError('unsloth imported on CPU')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(train_mod, "cuda_available", lambda: False)
    assert train_mod.resolve_backend("auto") == "trl"
    write_dataset(tmp_path / "train.parquet", tokenizer, n_traces=1)
    summary = train(tmp_path / "train.parquet", tiny_base, tmp_path / "out", {**FAST, "max_steps": 1},
                    checkpoint_dir=tmp_path / "ckpt")
    assert summary["backend"] == "trl" and "unsloth" not in sys.modules


def test_rows_longer_than_max_seq_len_are_left_out(tokenizer):
    rows = render_rows(tokenizer, make_trace(0, turns=2))
    limit = rows[1]["n_tokens"]  # the merged trace and the last row are longer
    examples, counts = build_sequences(rows, tokenizer, limit)
    assert counts["merged_sequences"] == 0 and len(examples) == 2 and counts["rows_dropped_too_long"] == 1
    assert pl.DataFrame(rows).height == 3


UNSLOTH_FIRST = """
import sys
import tracetune.train as train_mod
train_mod.cuda_available = lambda: True
try:
    train_mod.train(sys.argv[1], sys.argv[2], sys.argv[3], {"backend": "unsloth"})
except SystemExit as stop:
    print(stop.code)
"""


def test_unsloth_is_imported_before_transformers(tmp_path):
    """unsloth patches transformers and TRL when it is imported: after them, its speed-ups are lost."""
    (tmp_path / "unsloth").mkdir()
    (tmp_path / "unsloth" / "__init__.py").write_text(
        "import sys\nraise SystemExit('transformers already imported' if 'transformers' in sys.modules else 'first')\n")
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{Path(__file__).parents[1] / 'src'}"}
    done = subprocess.run([sys.executable, "-c", UNSLOTH_FIRST, str(tmp_path / "none.parquet"), str(tmp_path),
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.strip() == "first", done.stderr[-2000:]
