"""Importing workshop-format traces and plain OpenAI chat logs into raw traces."""

import json
from pathlib import Path

import pytest

from tracetune.curate import curate_task
from tracetune.importers import import_traces, main_import
from tracetune.jsonio import InputError

WORKSHOP = Path(__file__).parent / "fixtures" / "workshop_trace.json"


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_workshop_trace(tmp_path):
    out = import_traces([WORKSHOP], tmp_path, "price-total")
    [trace] = read(out)
    assert trace["trace_id"] == "price-total--imp0" and trace["source"] == "imported"
    calls = [c for m in trace["messages"] for c in m.get("tool_calls") or []]
    assert [c["function"]["arguments"] for c in calls] == ['{"item": "blue widget"}', '{"a": 12.5, "b": 12.5}']
    assert calls[0]["id"] and calls[1]["id"] == "x2"
    results = [m for m in trace["messages"] if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["name"]) for m in results] == [(calls[0]["id"], "get_price"), ("x2", "add")]
    assert trace["messages"][2]["reasoning_content"] == "I need the price of one blue widget."
    assert trace["outcome"]["status"] == "answered"
    # an imported trace goes through curation like a collected one
    kept, stats = curate_task("price-total", out, check={"contains": ["25"]})
    assert stats["kept"] == 1 and kept[0]["messages"][0]["role"] == "system"


def test_openai_chat_log_jsonl(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"model": "gpt-x", "messages": [
        {"role": "user", "content": "Add 2 and 3"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "5"},
        {"role": "assistant", "content": "<think>2+3=5</think>\n\nIt is 5."}]}) + "\n")
    out = import_traces([log], tmp_path / "out", "adding", model=None)
    [trace] = read(out)
    assert trace["model"] == "gpt-x"
    assert trace["tools"][0]["function"]["name"] == "add"  # derived from the calls when absent
    assert trace["messages"][-1] == {"role": "assistant", "content": "It is 5.", "reasoning_content": "2+3=5"}


def test_bad_records(tmp_path):
    doc = json.loads(WORKSHOP.read_text())
    doc["messages"][2]["tool_calls"][0]["function"]["name"] = "nope"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([doc]))
    with pytest.raises(InputError, match=r"bad.json: \[0\]: messages\[2\].tool_calls\[0\].function.name: unknown tool 'nope'"):
        import_traces([bad], tmp_path / "out", "t")
    assert not (tmp_path / "out" / "t.jsonl").exists()


def test_cli(tmp_path, capsys):
    assert main_import([str(WORKSHOP), "--task", "price-total", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "price-total.jsonl").is_file()
    with pytest.raises(SystemExit) as e:
        main_import([str(WORKSHOP), "--task", "Bad Id", "--out", str(tmp_path)])
    assert e.value.code == 2 and "Bad Id" in capsys.readouterr().err


def test_missing_source_is_one_line(tmp_path):
    with pytest.raises(InputError, match=r"nope\.json: no such file$"):
        import_traces([tmp_path / "nope.json"], tmp_path / "out", "t")
    assert not (tmp_path / "out").exists()
