# Validation of config.yaml and the task file, and the input functions of every stage.
import sys
from pathlib import Path

from tracetune.config import cached_server_tools, check_reference_tools, load_config, load_tasks, task_hash
from tracetune.jsonio import InputError


def _validated_inputs():
    """Validate before anything runs; a bad file stops the run with one line."""
    try:
        load_config(config, where="config.yaml")
        taskfile = load_tasks(config["tasks"])
        check_reference_tools(taskfile, cached_server_tools(taskfile, ".snakemake/tracetune"))
    except InputError as e:
        sys.exit(f"tracetune: {e}")
    return taskfile


TASKFILE = _validated_inputs()
TASKS = TASKFILE.tasks


wildcard_constraints:
    task=r"[a-z0-9._-]+",
    model=r"[A-Za-z0-9._-]+",
    split=r"train|eval",


def task_ids(split=None):
    return TASKFILE.ids(split)


def src(*names):
    """The package files a rule runs: declared as inputs so that editing them reruns the rule."""
    return [f"src/tracetune/{name}" for name in names]


def raw_traces(split=None):
    return expand("data/traces/raw/{task}.jsonl", task=task_ids(split))


def task_spec_hash(wildcards):
    """Changes when anything that decides this task's traces changes: only that task reruns."""
    return task_hash(TASKS[wildcards.task], TASKFILE.servers, TASKFILE.system_prompt)


def task_server_sources(wildcards):
    """The demo servers' own code, for tasks that use them (third-party servers are not tracked)."""
    paths = []
    for name in TASKS[wildcards.task]["servers"]:
        spec = TASKFILE.servers[name]
        for arg in spec.get("args", []):
            if arg.startswith("tracetune.servers."):
                paths.append("src/" + arg.replace(".", "/") + ".py")
    return paths


def uses_local_endpoint():
    return not config["endpoint"]["base_url"]


def collect_endpoint(wildcards):
    """The locally served base model, only when this task has model samples to collect."""
    task = TASKS[wildcards.task]
    samples = task.get("samples", config["collect"]["samples"])
    return served_model_url("base") if samples and uses_local_endpoint() else []


def all_targets():
    return raw_traces()
