"""Collection: a job whose traces mostly ended in an error fails and writes nothing."""

import pytest
from test_evaluate import write_tasks

from tracetune.agent import Settings
from tracetune.runtime.endpoint import Endpoint
from tracetune.collect import collect_to_file
from tracetune.runtime.serving import free_port


def test_a_collect_job_over_its_error_budget_fails_and_writes_nothing(tmp_path):
    taskfile = write_tasks(tmp_path, splits=("train",))  # no reference plan: only model samples
    endpoint = Endpoint(f"http://127.0.0.1:{free_port()}/v1", "gone", timeout_s=2, max_retries=0)
    out = tmp_path / "raw" / "t0.jsonl"
    with pytest.raises(RuntimeError, match=r"collecting 't0' failed: 2/2 traces ended in an error "
                                           r"\(more than collect.max_error_rate=0.5\)"):
        collect_to_file(taskfile, "t0", str(out), endpoint, Settings(), default_samples=2, max_error_rate=0.5)
    assert not out.exists() and not any(tmp_path.glob("raw/*"))
    collect_to_file(taskfile, "t0", str(out), endpoint, Settings(), default_samples=2, max_error_rate=1.0)
    assert len(out.read_text().splitlines()) == 2  # a budget of 1.0 keeps what it got
