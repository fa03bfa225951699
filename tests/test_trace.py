"""The trace module: its id patterns are the schema's, and one newline never makes an id."""

import json
from pathlib import Path

import pytest

from tracetune.jsonio import InputError
from tracetune.trace import TASK_ID, is_trace_id, task_of_trace_id, trace_id, validate_trace

TRACE = json.loads((Path(__file__).parent / "fixtures/raw/price-total.jsonl").read_text().splitlines()[0])


@pytest.mark.parametrize("candidate", ["price-total--s0", "price-total--s0\n", "a/b", "Price-Total--s0", "x y",
                                       "price-total--ré", "", "price-total--s0\r", "A.b_c-1"])
def test_the_id_patterns_are_the_schema_s(candidate):
    def schema_takes(field, value):
        try:
            validate_trace(TRACE | {field: value}, "x")
            return True
        except InputError:
            return False

    assert schema_takes("trace_id", candidate) == is_trace_id(candidate)
    assert schema_takes("task_id", candidate) == (TASK_ID.fullmatch(candidate) is not None)


def test_ids_name_their_task():
    assert task_of_trace_id(trace_id("order--status", "rec2")) == "order--status"


def test_an_outcome_is_read_off_the_messages_unless_the_run_says():
    from tracetune.trace import trace_outcome

    call = {"role": "assistant", "content": "", "tool_calls": [{"id": "c0", "type": "function",
                                                                "function": {"name": "f", "arguments": "{}"}}]}
    result = {"role": "tool", "tool_call_id": "c0", "name": "f", "content": "ok"}
    answer = {"role": "assistant", "content": "done"}
    user = {"role": "user", "content": "hi"}
    assert trace_outcome([user, call, result, answer]) == {"status": "answered", "error": None, "turns": 2}
    assert trace_outcome([user, call, result]) == {"status": "max_turns", "error": None, "turns": 1}
    assert trace_outcome([user, call], error="server gone")["status"] == "error"
    assert trace_outcome([user, answer], status="max_turns")["status"] == "max_turns"  # the run's word stands
    assert trace_outcome([]) == {"status": "max_turns", "error": None, "turns": 0}
