"""Rejection-sampling rounds: a round samples the train tasks only, judges the samples as curation
judges traces, and trains on the curated train traces plus the kept samples."""

import itertools
import json

import polars as pl
import pytest
from fakes import FakeEndpoint, tool_then_answer
from test_evaluate import write_tasks

from tracetune.agent import Settings
from tracetune.config import checked_train_tasks
from tracetune.jsonio import InputError, read_jsonl
from tracetune.rounds import build_round_dataset, parse_round_run, round_run, sample_round, sampler
from tracetune.runtime.endpoint import Endpoint

CURATE = {"keep_system_prompt": False, "drop_unrecovered_tool_errors": False}


def test_a_rounds_run_names_its_round_and_what_it_samples_from():
    assert round_run("lora", 2) == "lora-round2" and parse_round_run("lora-round2") == ("lora", 2)
    assert parse_round_run("my-run-round12") == ("my-run", 12)
    assert parse_round_run("lora") is None and parse_round_run("lora-round0") is None
    assert sampler("lora", 1) == "lora" and sampler("lora", 3) == "lora-round2"


def every_other_trace_solves():
    """The first request of every second trace gets an answer with no tool call: it fails the check."""
    traces, solve = itertools.count(), tool_then_answer("search_products", {"query": "widget"}, "Here is a widget.")

    def policy(messages):
        if messages[-1]["role"] == "user" and next(traces) % 2:
            return {"role": "assistant", "content": "No idea."}
        return solve(messages)

    return policy


@pytest.fixture
def sampled(tmp_path):
    taskfile = write_tasks(tmp_path, splits=("train", "train", "eval"))
    tasks = checked_train_tasks(taskfile, [], "rounds")
    out = tmp_path / "rounds" / "lora" / "round1" / "samples.jsonl"
    with FakeEndpoint(every_other_trace_solves()) as fake:
        sample_round(taskfile, tasks, Endpoint(fake.base_url, "fake", timeout_s=10), Settings(concurrency=1),
                     samples=2, round_no=1, out_path=str(out))
    return taskfile, tasks, out


def test_a_round_samples_only_train_tasks_under_ids_of_its_own(sampled):
    taskfile, tasks, out = sampled
    assert [t["id"] for t in tasks] == ["t0", "t1"]  # t2 is an eval task
    traces = [t for _, t in read_jsonl(out)]
    assert [t["trace_id"] for t in traces] == ["t0--round1-s0", "t0--round1-s1", "t1--round1-s0", "t1--round1-s1"]
    assert {t["source"] for t in traces} == {"model"}


def test_a_rounds_dataset_is_the_curated_traces_plus_the_samples_that_pass(sampled, tmp_path, tiny_base):
    taskfile, tasks, samples = sampled
    curated = tmp_path / "curated" / "t0.jsonl"  # t0's curated trace: a solved sample under another id
    curated.parent.mkdir()
    first = next(t for _, t in read_jsonl(samples))
    curated.write_text(json.dumps(first | {"trace_id": "t0--ref", "source": "reference"}) + "\n")
    out = tmp_path / "rounds" / "lora" / "round1"
    summary = build_round_dataset(str(samples), [str(curated)], tasks, taskfile.ids("train"), str(tiny_base),
                                  run="lora", round_no=1, kept_dir=str(out / "kept"), train_path=str(out / "train.parquet"),
                                  card_path=str(out / "README.md"), summary_path=str(out / "round.json"),
                                  max_seq_len=2048, curate=CURATE, system_prompt=None)
    assert {k: summary[k] for k in ("run", "sampled_from", "sampled", "passed", "kept", "pass_rate")} == {
        "run": "lora-round1", "sampled_from": "lora", "sampled": 4, "passed": 2, "kept": 2, "pass_rate": 0.5}
    assert summary["tasks"]["t1"] == {"sampled": 2, "passed": 1, "kept": 1}
    assert sorted(p.name for p in (out / "kept").iterdir()) == ["t0.jsonl", "t1.jsonl"]
    rows = pl.read_parquet(out / "train.parquet")
    assert set(rows["trace_id"]) == {"t0--ref", "t0--round1-s0", "t1--round1-s0"}
    assert set(rows["split"]) == {"train"} and summary["train_rows"] == len(rows)
    assert json.loads((out / "round.json").read_text()) == summary


def test_an_eval_task_or_an_unknown_one_never_reaches_a_round(tmp_path):
    taskfile = write_tasks(tmp_path, splits=("train", "eval"))
    with pytest.raises(InputError, match="^config.yaml: rounds.tasks: 't1': an eval task never reaches training$"):
        checked_train_tasks(taskfile, ["t0", "t1"], "rounds")
    with pytest.raises(InputError, match="^config.yaml: rounds.tasks: 'nope': not a task of "):
        checked_train_tasks(taskfile, ["nope"], "rounds")
