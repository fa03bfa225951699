"""Logging for rule scripts: everything a job says goes to its Snakemake log file (tracetune.runtime:
where a job's words go never changes what it makes)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def log_to(path: str) -> None:
    """Send logging, stdout and stderr to `path` (the rule's `log:`): trainer progress and
    library chatter land in the job's log, not in Snakemake's own output."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", buffering=1, encoding="utf-8")
    sys.stdout = sys.stderr = stream
    logging.basicConfig(stream=stream, level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()


def quiet_libraries() -> None:
    """Per-request lines of the HTTP and MCP clients would bury the job's own progress lines."""
    for noisy in ("httpx", "httpx2", "mcp", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
