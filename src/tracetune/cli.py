"""`tracetune` command line: the stages outside Snakemake, for quick runs and imports."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import yaml

from tracetune.jsonio import InputError
from tracetune.logs import quiet_libraries


def _collect(args) -> None:
    from tracetune.agent import Endpoint, Settings
    from tracetune.collect import acollect
    from tracetune.config import load_config, load_tasks
    from tracetune.jsonio import write_jsonl

    config = load_config(yaml.safe_load(Path(args.config).read_text()), args.config)
    taskfile = load_tasks(args.tasks or config["tasks"])
    ids = args.task or taskfile.ids(args.split)
    settings = Settings.from_config({**config["collect"], **({"concurrency": args.concurrency} if args.concurrency else {})})
    endpoint = None
    if args.base_url:
        endpoint = Endpoint(args.base_url, args.model, args.api_key_env, config["endpoint"]["timeout_s"],
                            config["endpoint"]["max_retries"])
    by_task = asyncio.run(acollect(taskfile, ids, endpoint, settings, default_samples=config["collect"]["samples"],
                                   samples=args.samples))
    for task_id, traces in by_task.items():
        write_jsonl(Path(args.out) / f"{task_id}.jsonl", traces)


def _import(args) -> None:
    from tracetune.importers import main_import

    main_import(args.rest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tracetune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    collect = sub.add_parser("collect", help="collect raw traces for tasks (all, a split, or --task ids)")
    collect.add_argument("--config", default="config.yaml")
    collect.add_argument("--tasks", help="task file (default: config's tasks)")
    collect.add_argument("--task", action="append", help="a task id; repeat for several")
    collect.add_argument("--split", choices=["train", "eval"])
    collect.add_argument("--samples", type=int, help="model samples per task (default: config)")
    collect.add_argument("--concurrency", type=int)
    collect.add_argument("--base-url", help="OpenAI-compatible endpoint for model samples")
    collect.add_argument("--model", default="default")
    collect.add_argument("--api-key-env", default="", help="name of the variable holding the API key")
    collect.add_argument("--out", default="data/traces/raw")
    collect.set_defaults(run=_collect)
    imp = sub.add_parser("import", help="import workshop-format or OpenAI chat logs as raw traces", add_help=False)
    imp.add_argument("rest", nargs=argparse.REMAINDER)
    imp.set_defaults(run=_import)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_libraries()
    try:
        args.run(args)
    except InputError as e:
        sys.exit(f"tracetune: {e}")


if __name__ == "__main__":
    main()
