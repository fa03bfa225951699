"""`tracetune` command line: the stages outside Snakemake, for quick runs and imports."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from tracetune.jsonio import InputError
from tracetune.runtime.logs import quiet_libraries


def _collect(args) -> None:
    from tracetune.agent import Settings
    from tracetune.runtime.endpoint import Endpoint
    from tracetune.collect import acollect
    from tracetune.config import load_tasks, read_config
    from tracetune.jsonio import write_jsonl

    config = read_config(args.config)
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


def _review(args) -> None:
    from tracetune.review import serve

    serve(args.dir, args.config, args.port)


def _record(args) -> None:
    from tracetune.agent import Settings
    from tracetune.runtime.endpoint import EndpointError
    from tracetune.config import load_tasks, read_config
    from tracetune.runtime.mcp_connection import ServerStartError
    from tracetune.record import NothingSaved, plan, record

    try:
        config = read_config(args.config)
        taskfile = load_tasks(args.tasks or config["tasks"])
        flags = {"base_url": args.base_url, "model": args.model, "api_key_env": args.api_key_env}
        recording = plan(taskfile, config["endpoint"] | {k: v for k, v in flags.items() if v is not None},
                         args.out_dir, task_id=args.task, prompts=args.prompt, servers=args.servers, tools=args.tools,
                         new_id=args.task_id, save_task=args.save_task, model_dir=args.model_dir)
        record(recording, Settings.from_config(config["collect"]))
    except KeyboardInterrupt:  # anywhere: the files are written atomically, after the last question
        print("\ntracetune: interrupted: nothing saved", file=sys.stderr)
        sys.exit(130)
    except (NothingSaved, EndpointError, ServerStartError) as e:
        sys.exit(f"tracetune: {e}")


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
    review = sub.add_parser("review", help="review, keep, reject and edit traces on a local web page")
    review.add_argument("--dir", default=".", help="the workflow directory (default: the current one)")
    review.add_argument("--config", default="config.yaml", help="its config file, relative to --dir")
    review.add_argument("--port", type=int, default=8765, help="loopback port (0: any free one)")
    review.set_defaults(run=_review)
    rec = sub.add_parser("record", help="record a trace by hand: approve, edit or skip each tool call of the model")
    rec.add_argument("task", nargs="?", help="a task id of the task file (or --prompt for a new task)")
    rec.add_argument("--config", default="config.yaml")
    rec.add_argument("--tasks", help="task file (default: config's tasks)")
    rec.add_argument("--prompt", action="append", help="a new task's user message; repeat for more turns")
    rec.add_argument("--servers", help="the new task's servers, comma-separated (names in the task file's servers:)")
    rec.add_argument("--tools", help="the new task's tools allowlist, comma-separated (default: every tool)")
    rec.add_argument("--task-id", help="the new task's id (default: a slug of the prompt)")
    rec.add_argument("--save-task", action="store_true", help="add the new task to the task file (asks for its check)")
    served = rec.add_mutually_exclusive_group()
    served.add_argument("--base-url", help="OpenAI-compatible endpoint (default: the config's endpoint.base_url)")
    served.add_argument("--model-dir", help="a model directory or GGUF file to serve for the session")
    rec.add_argument("--model", help="the served model name (default: the config's endpoint.model)")
    rec.add_argument("--api-key-env", help="name of the variable holding the API key (default: the config's)")
    rec.add_argument("--out-dir", default="data/traces/recorded", help="where {task}.jsonl is appended to")
    rec.set_defaults(run=_record)
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
