"""Curation: filters, dedup, hand edits, rejects, system prompt, bad input."""

import json
from pathlib import Path

import pytest

from tracetune.curate import (
    curate_task,
    edit_paths,
    read_trace_ids,
    unrecovered_tool_errors,
    write_curation_report,
)
from tracetune.trace import validate_trace
from tracetune.jsonio import InputError

FIXTURES = Path(__file__).parent / "fixtures"
RAW = FIXTURES / "raw" / "price-total.jsonl"
SYSTEM = "You are a helpful shop assistant. Use the tools."
CHECK = {"contains": ["25"]}


def raw_traces():
    return [json.loads(line) for line in RAW.read_text().splitlines()]


def curate(**kw):
    kw = {"check": CHECK, "system_prompt": SYSTEM} | kw
    return curate_task("price-total", RAW, **kw)


def test_filters_and_dedup():
    kept, stats = curate()
    assert [t["trace_id"] for t in kept] == ["price-total--s0", "price-total--s6"]
    assert stats["dropped_traces"] == {
        "price-total--s1": "duplicate", "price-total--ref": "duplicate",  # s0 wins: it has reasoning
        "price-total--s2": "check_failed", "price-total--s3": "not_answered",
        "price-total--s4": "invalid_tool_call", "price-total--s5": "unrecovered_tool_error"}
    assert stats["raw"] == 8 and stats["kept"] == 2 and sum(stats["dropped"].values()) == 6


def test_check_is_rerun_not_trusted():
    kept, stats = curate(check={"contains": ["no such words"]})
    assert kept == [] and stats["dropped"]["check_failed"] == 7


def test_a_task_without_a_check_is_judged_by_the_other_filters():
    kept, stats = curate(check=None)
    assert "price-total--s2" in [t["trace_id"] for t in kept]  # its answer fails CHECK
    assert stats["dropped"]["check_failed"] == 0 and stats["dropped"]["not_answered"] == 1


def test_unrecovered_errors_optional():
    kept, _ = curate(drop_unrecovered_tool_errors=False)
    assert "price-total--s5" in [t["trace_id"] for t in kept]
    traces = {t["trace_id"]: t for t in raw_traces()}
    assert unrecovered_tool_errors(traces["price-total--s5"]) == ["c1"]
    assert unrecovered_tool_errors(traces["price-total--s6"]) == []


def test_system_prompt_removed_by_default():
    kept, _ = curate()
    assert all(m["role"] != "system" for t in kept for m in t["messages"])
    kept, _ = curate(keep_system_prompt=True)
    assert kept[0]["messages"][0] == {"role": "system", "content": SYSTEM}


def test_hand_edit_replaces_and_reject(tmp_path):
    edits = tmp_path / "edits"
    edits.mkdir()
    edited = raw_traces()[3]  # s2 failed its check; fix its answer by hand
    edited["messages"][-1]["content"] = "Two blue widgets cost $25.00 in total."
    (edits / "price-total--s2.json").write_text(json.dumps(edited))
    (edits / "other-task--s0.json").write_text("{}")  # another task's edit: not this job's input
    paths = edit_paths(edits, "price-total")
    assert paths == [str(edits / "price-total--s2.json")]
    kept, stats = curate(edits=paths, rejected=["price-total--s6"])
    assert [t["trace_id"] for t in kept] == ["price-total--s0", "price-total--s2"]
    assert kept[1]["messages"][-1]["content"] == "Two blue widgets cost $25.00 in total."
    assert stats["edited"] == ["price-total--s2"] and stats["dropped"]["rejected"] == 1


def test_reject_file(tmp_path):
    path = tmp_path / "reject.txt"
    path.write_text("# bad ones\nprice-total--s0  # wrong\n\nother--s1\n")
    assert read_trace_ids(path, "price-total") == ["price-total--s0"]
    assert read_trace_ids(path) == ["other--s1", "price-total--s0"]
    assert read_trace_ids(tmp_path / "missing.txt") == []


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update(trace_id="price-total--s99"), "file name"),
    (lambda t: t["messages"].append({"role": "bogus"}), r"messages\[7\]\.role"),
    (lambda t: t["messages"][2]["tool_calls"][0]["function"].update(name="nope"),
     r"messages\[2\]\.tool_calls\[0\]\.function\.name: unknown tool 'nope'"),
    (lambda t: t["messages"][2]["tool_calls"][0]["function"].update(arguments='{"item": 3}'),
     r"messages\[2\]\.tool_calls\[0\]\.function\.arguments: arguments do not match the schema"),
    (lambda t: t["messages"].pop(3), r"messages\[2\]\.tool_calls\[0\]: call 'c1' has no tool result"),
    (lambda t: t["messages"].pop(5), r"messages\[4\]\.tool_calls\[0\]: call 'c2' has no tool result"),
    (lambda t: t["messages"][3].update(tool_call_id="c9"), r"messages\[3\]\.tool_call_id: 'c9' answers no earlier call"),
])
def test_bad_edits(tmp_path, change, message):
    trace = raw_traces()[0]
    change(trace)
    path = tmp_path / "price-total--s0.json"
    path.write_text(json.dumps(trace))
    with pytest.raises(InputError, match=message) as e:
        curate(edits=[str(path)])
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_unknown_trace_id_edit(tmp_path):
    trace = raw_traces()[0] | {"trace_id": "price-total--s42"}
    path = tmp_path / "price-total--s42.json"
    path.write_text(json.dumps(trace))
    with pytest.raises(InputError, match="unknown trace 'price-total--s42'"):
        curate(edits=[str(path)])


def test_bad_raw_line(tmp_path):
    lines = RAW.read_text().splitlines()
    bad = json.loads(lines[1])
    del bad["messages"]
    path = tmp_path / "price-total.jsonl"
    path.write_text("\n".join([lines[0], json.dumps(bad)]) + "\n")
    with pytest.raises(InputError, match=r"price-total.jsonl:2: .*messages"):
        curate_task("price-total", path, check=CHECK)
    path.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(InputError, match=r"price-total.jsonl:2: not valid JSON"):
        curate_task("price-total", path, check=CHECK)


def test_report(tmp_path):
    from tracetune.curate import curate_to_files
    stats_paths = []
    for task in ("price-total", "store-hours"):
        stats_paths.append(str(tmp_path / f"{task}.json"))
        curate_to_files(task, str(FIXTURES / "raw" / f"{task}.jsonl"), str(tmp_path / f"{task}.jsonl"),
                        stats_paths[-1], check=CHECK if task == "price-total" else None)
    report = write_curation_report(stats_paths, str(tmp_path / "curation.json"))
    assert report["totals"]["raw"] == 9 and report["totals"]["kept"] == 3
    assert report["tasks"]["price-total"]["dropped"]["duplicate"] == 2
    assert json.loads((tmp_path / "curation.json").read_text()) == report


def test_hand_kept_traces_skip_the_filters_but_not_call_validity():
    kept, stats = curate(kept=["price-total--s2", "price-total--s1", "price-total--s4"])
    ids = [t["trace_id"] for t in kept]
    assert "price-total--s2" in ids and "price-total--s1" in ids  # failed check; a duplicate
    assert stats["dropped_traces"]["price-total--s4"] == "invalid_tool_call"
    kept, stats = curate(kept=["price-total--s2"], rejected=["price-total--s2"])  # in both: rejected
    assert stats["dropped_traces"]["price-total--s2"] == "rejected"


def test_recorded_and_imported_traces_are_curated_beside_collected_ones(tmp_path):
    recorded = tmp_path / "recorded.jsonl"
    trace = raw_traces()[0] | {"trace_id": "price-total--rec0", "source": "recorded"}
    recorded.write_text(json.dumps(trace) + "\n")
    kept, stats = curate(added=[str(recorded)], kept=["price-total--rec0"])
    assert stats["raw"] == 9 and "price-total--rec0" in [t["trace_id"] for t in kept]
    recorded.write_text(json.dumps(raw_traces()[0]) + "\n")
    with pytest.raises(InputError, match=r"recorded.jsonl: trace_id: 'price-total--s0' appears in .*price-total.jsonl too"):
        curate(added=[str(recorded)])


@pytest.mark.parametrize("field, value", [("trace_id", "price-total--s0\n"), ("task_id", "price-total\n")])
def test_an_id_ending_in_a_newline_is_not_a_trace(field, value):
    """`$` in a pattern also matches before a final newline: the schema's patterns exclude it."""
    trace = json.loads((Path(__file__).parent / "fixtures/raw/price-total.jsonl").read_text().splitlines()[0])
    with pytest.raises(InputError, match=f"{field}: "):
        validate_trace(trace | {field: value}, "x.jsonl")
