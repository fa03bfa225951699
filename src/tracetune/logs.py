"""Logging for rule scripts: everything a job says goes to its Snakemake log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def log_to(path: str) -> None:
    """Send logging and stderr to `path` (the rule's `log:`), keeping one line per record."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", buffering=1, encoding="utf-8")
    sys.stderr = stream
    logging.basicConfig(stream=stream, level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Library chatter that would bury the job's own progress lines.
    for noisy in ("httpx", "mcp", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
