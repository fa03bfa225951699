"""Unrolling and rendering: row counts, loss regions (bundled template and the Qwen3 stand-in),
lengths, splits, determinism, and a real TRL SFTTrainer built from the Parquet files."""

import json
from importlib import resources
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tracetune.curate import curate_to_files
from tracetune.dataset import RenderError, Renderer, build_dataset, count_tokens, unroll_trace
from tracetune.jsonio import InputError

FIXTURES = Path(__file__).parent / "fixtures"
SPLITS = {"price-total": "train", "store-hours": "eval"}
QWEN3 = (resources.files("trl") / "chat_templates" / "qwen3.jinja").read_text()


@pytest.fixture(scope="session")
def base_model_dir(bundled_model):
    return str(bundled_model)


@pytest.fixture(scope="session", params=["bundled", "qwen3"])
def renderer(request, base_model_dir):
    return Renderer.load(base_model_dir, QWEN3 if request.param == "qwen3" else None)


@pytest.fixture(scope="session")
def curated(tmp_path_factory):
    out = tmp_path_factory.mktemp("curated")
    for task in SPLITS:
        curate_to_files(task, str(FIXTURES / "raw" / f"{task}.jsonl"), str(out / f"{task}.jsonl"),
                        str(out / f"{task}.stats.json"), check={"contains": ["25"]} if task == "price-total" else None,
                        system_prompt="You are a helpful shop assistant. Use the tools.")
    return [str(out / f"{task}.jsonl") for task in SPLITS]


def traces(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def build(out: Path, curated, model_dir, **kw):
    kw = {"max_seq_len": 4096} | kw
    return build_dataset(curated, SPLITS, model_dir, train_path=str(out / "train.parquet"),
                         eval_path=str(out / "eval.parquet"), card_path=str(out / "README.md"),
                         report_path=str(out / "dataset.json"), base_model="bundled:smollm2-135m", **kw)


def test_three_turns_give_three_rows(renderer, curated):
    trace = traces(curated[0])[0]  # user, call, tool, call, tool, answer
    rows = unroll_trace(renderer, trace, "train")
    assert [r["id"] for r in rows] == [f"{trace['trace_id']}:{k}" for k in range(3)]
    assert [len(json.loads(r["messages"])) for r in rows] == [2, 4, 6]
    assert json.loads(rows[-1]["messages"])[-1] == trace["messages"][-1]


def test_loss_region_is_exactly_the_target_turn(renderer, curated):
    tokenizer = renderer.tokenizer
    for trace in traces(curated[0]) + traces(curated[1]):
        rows = unroll_trace(renderer, trace, "train")
        count_tokens(renderer, rows)
        targets = [m for m in trace["messages"] if m["role"] == "assistant"]
        for row, message in zip(rows, targets):
            history = json.loads(row["messages"])
            # text is the template's own rendering, cut after the target turn's end-of-turn token
            full = tokenizer.apply_chat_template(history, tools=trace["tools"], tokenize=False,
                                                 chat_template=renderer.chat_template)
            prompt = tokenizer.apply_chat_template(history[:-1], tools=trace["tools"], tokenize=False,
                                                   add_generation_prompt=True, chat_template=renderer.chat_template)
            assert row["prompt"] == prompt and full.startswith(row["text"])
            assert full[len(row["text"]):] == "\n"
            assert row["text"] == row["prompt"] + row["completion"]
            assert row["text"][row["loss_start"]:row["loss_end"]] == row["completion"]
            assert row["completion"].endswith("<|im_end|>") and row["completion"].count("<|im_end|>") == 1
            # reasoning of every turn is trained, even where Qwen3 drops it from later histories
            assert message["reasoning_content"].strip() in row["completion"]
            assert (message.get("content") or "") in row["completion"]
            assert "<|im_start|>" not in row["completion"]
            ids = tokenizer(row["text"])["input_ids"]
            assert row["n_tokens"] == len(ids)
            assert row["n_loss_tokens"] == len(ids) - len(tokenizer(row["prompt"])["input_ids"])


def test_qwen3_drops_earlier_reasoning_but_rows_keep_it(base_model_dir, curated):
    renderer = Renderer.load(base_model_dir, QWEN3)
    rows = unroll_trace(renderer, traces(curated[1])[0], "eval")  # two user turns
    assert "It says 9-17." in rows[1]["completion"]
    assert "It says 9-17." not in rows[2]["text"]  # history before the last user turn loses it
    assert not rows[2]["text"].startswith(rows[1]["text"])


def test_template_that_drops_target_reasoning_is_an_error(base_model_dir, curated):
    no_reasoning = QWEN3.replace("reasoning_content.strip('\\n')", "''")
    renderer = Renderer.load(base_model_dir, no_reasoning)
    with pytest.raises(RenderError, match=r"trace 'price-total--s0': turn 0 .*reasoning_content"):
        unroll_trace(renderer, traces(curated[0])[0], "train")


def test_build_splits_lengths_determinism(base_model_dir, curated, tmp_path):
    report = build(tmp_path / "a", curated, base_model_dir)
    train = pq.read_table(tmp_path / "a" / "train.parquet").to_pylist()
    evals = pq.read_table(tmp_path / "a" / "eval.parquet").to_pylist()
    assert {r["task_id"] for r in train} == {"price-total"} and {r["task_id"] for r in evals} == {"store-hours"}
    assert len(train) == 6 and len(evals) == 3
    assert report["splits"]["train"]["rows"] == 6 and report["splits"]["eval"]["dropped_too_long"] == 0
    assert "| train | 6 |" in (tmp_path / "a" / "README.md").read_text()
    # determinism: a second build gives the same bytes
    build(tmp_path / "b", curated, base_model_dir)
    for name in ("train.parquet", "eval.parquet", "README.md", "dataset.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # lengths: rows over max_seq_len are dropped and counted, never truncated
    limit = sorted(r["n_tokens"] for r in train)[3]
    report = build(tmp_path / "c", curated, base_model_dir, max_seq_len=limit)
    short = pq.read_table(tmp_path / "c" / "train.parquet").to_pylist()
    assert all(r["n_tokens"] <= limit for r in short)
    assert len(short) + report["splits"]["train"]["dropped_too_long"] == 6
    assert {r["id"]: r["text"] for r in short}.items() <= {r["id"]: r["text"] for r in train}.items()


def test_unknown_task_and_leakage_are_errors(base_model_dir, curated, tmp_path):
    outputs = dict(train_path=str(tmp_path / "t.parquet"), eval_path=str(tmp_path / "e.parquet"),
                   card_path=str(tmp_path / "R.md"), report_path=str(tmp_path / "r.json"), max_seq_len=4096)
    with pytest.raises(InputError, match="task 'store-hours' is not in the task file"):
        build_dataset(curated, {"price-total": "train"}, base_model_dir, **outputs)
    # the same trace under a train task and an eval task
    leaked = traces(curated[1])[0] | {"task_id": "price-total"}
    mixed = tmp_path / "price-total.jsonl"
    mixed.write_text(Path(curated[0]).read_text() + json.dumps(leaked) + "\n")
    with pytest.raises(InputError, match="'store-hours--s0' is in both"):
        build_dataset([str(mixed), curated[1]], SPLITS, base_model_dir, **outputs)
    assert not (tmp_path / "t.parquet").exists()


@pytest.mark.slow
def test_sft_trainer_trains_only_the_completion(base_model_dir, curated, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    build(tmp_path, curated, base_model_dir)
    dataset = datasets.load_dataset("parquet", data_files={"train": str(tmp_path / "train.parquet")})["train"]
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2,
                     report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, max_length=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    assert trainer.completion_only_loss
    examples = [trainer.train_dataset[i] for i in range(len(dataset))]
    batch = trainer.data_collator(examples)
    for i, row in enumerate(dataset):
        labels = batch["labels"][i]
        input_ids = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        assert tokenizer.decode(input_ids) == row["text"]  # nothing added, nothing cut
        trained = labels[labels != -100]
        assert len(trained) == row["n_loss_tokens"]
        assert tokenizer.decode(trained) == row["completion"]
    trainer.train()
