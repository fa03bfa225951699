"""The jobs `snakemake -n` would plan, found in-process through Snakemake's Python API.

A `snakemake -n` subprocess pays for Python, Snakemake and tracetune's imports each time (about
5 s on 2 cores); the rerun matrix asks for over a hundred plans. Here the workflow is parsed and its
DAG built in this process, once per plan, and the jobs are read from the dry run's own structured
log events (the JOB_INFO records logger plugins receive), not from its printed text.
"""

from __future__ import annotations

import logging
from pathlib import Path

from snakemake.api import SnakemakeApi
from snakemake.logging import logger as snakemake_logger
from snakemake.settings.enums import Quietness
from snakemake.settings.types import DAGSettings, OutputSettings, ResourceSettings
from snakemake_interface_logger_plugins.common import LogEvent


class _JobInfo(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.jobs: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == LogEvent.JOB_INFO:
            wildcards = getattr(record, "wildcards", None) or {}
            suffix = ", ".join(f"{k}={v}" for k, v in wildcards.items())
            self.jobs.append(f"{record.rule_name}:{suffix}" if suffix else record.rule_name)


def planned_jobs(wf: Path, *targets: str) -> list[str]:
    """'rule:wildcards' of every job a dry run of `targets` (the default target if none) plans,
    in the order a dry run prints them. A bad input's `sys.exit` reaches the caller as SystemExit."""
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        handler = _JobInfo()
        snakemake_logger.addHandler(handler)
        try:
            workflow = api.workflow(resource_settings=ResourceSettings(cores=2),
                                    snakefile=Path(wf) / "Snakefile", workdir=Path(wf))
            workflow.dag(DAGSettings(targets=set(targets))).execute_workflow(executor="dryrun")
        finally:
            snakemake_logger.removeHandler(handler)
    return handler.jobs
