# Validation of config.yaml and the task file, and the input functions of every stage.
import sys
from pathlib import Path

from tracetune.config import (cached_server_tools, check_reference_tools, endpoint_path, kept_truncate, load_config,
                              load_tasks, result_settings, task_hash)
from tracetune.curate import edit_paths, read_reject_ids
from tracetune.evaluate import eval_task_ids
from tracetune.fingerprint import code_fingerprint
from tracetune.jsonio import InputError
from tracetune.models import check_base_model
from tracetune.toolsets import ToolRendering, check_task_options


def _validated_inputs():
    """Validate before anything runs; a bad file stops the run with one line."""
    try:
        load_config(config, where="config.yaml")
        taskfile = load_tasks(config["tasks"])
        server_tools = cached_server_tools(taskfile, ".snakemake/tracetune")
        check_reference_tools(taskfile, server_tools)
        check_task_options(ToolRendering.from_config(config["dataset"]), taskfile, server_tools, "config.yaml")
        check_base_model(config["base_model"])
        if config["evaluate"]["models"]:
            eval_task_ids(taskfile)
    except InputError as e:
        sys.exit(f"tracetune: {e}")
    return taskfile


TASKFILE = _validated_inputs()
TASKS = TASKFILE.tasks


def task_ids(split=None):
    return TASKFILE.ids(split)


def code_of(script):
    """The fingerprint of the tracetune code a rule script runs, found from its imports
    (tracetune.fingerprint): passed as a param, so a change in behaviour reruns the rule and a
    comment, a docstring or a reformatting does not."""
    return code_fingerprint(str(Path(workflow.basedir) / "rules" / "scripts" / script))


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
                paths.append(str(Path("src", *arg.split(".")).with_suffix(".py")))
    return paths


def served_model(model):
    """The input of a job that needs `model` served by the workflow itself: the file its engine
    serves (built first; a rebuilt model reruns the job). The job then calls
    tracetune.serve.shared_endpoint on it."""
    if config["serve"]["engine"] == "llama.cpp":
        return f"data/gguf/{model}.gguf"
    return f"data/models/{model}"


def uses_local_endpoint():
    return not config["endpoint"]["base_url"]


# Params carry result settings only (tracetune.config.result_settings; the schemas mark the rest),
# and of those only what can change the job's output: changing a setting reruns the jobs it affects.


def task_samples(wildcards):
    """Model samples collected for this task (besides its reference plan)."""
    return TASKS[wildcards.task].get("samples", config["collect"]["samples"])


def collect_endpoint(wildcards):
    """The locally served base model, only when this task has model samples to collect."""
    return served_model("base") if task_samples(wildcards) and uses_local_endpoint() else []


def collect_endpoint_settings(wildcards):
    """base_url and model of a configured endpoint, only for tasks with model samples to collect."""
    path = endpoint_path(config)
    return result_settings(config, *path) if path and task_samples(wildcards) else {}


def agent_settings():
    """What the model is asked with (temperature, seed, max_turns, max_tokens)."""
    collect = result_settings(config, "collect")
    return {k: v for k, v in collect.items() if k not in ("samples", "truncate")}


def collect_agent_settings(wildcards):
    """The agent settings, only for tasks with model samples (reference plans do not use them)."""
    return agent_settings() if task_samples(wildcards) else {}


def collect_truncate(wildcards):
    """collect.truncate as this task's existing traces keep it: a new cut reruns the task only if
    one of its tool results is longer than the old or the new cut."""
    return kept_truncate([f"data/traces/raw/{wildcards.task}.jsonl"], config["collect"]["truncate"])



# --- curate and dataset ---------------------------------------------------------------------


def task_edits(wildcards):
    return edit_paths("curation/edits", wildcards.task)


def task_rejects(wildcards):
    return read_reject_ids("curation/reject.txt", wildcards.task)


def task_imports(wildcards):
    """Traces brought in with `tracetune import`, when there are any for this task."""
    path = Path(f"data/traces/imported/{wildcards.task}.jsonl")
    return [str(path)] if path.is_file() else []


def task_check(wildcards):
    return TASKS[wildcards.task].get("check")


def curated_traces(split=None):
    return expand("data/traces/curated/{task}.jsonl", task=task_ids(split))


def task_splits():
    return {task: TASKS[task]["split"] for task in task_ids()}


# --- evaluate and report --------------------------------------------------------------------


def eval_models():
    return config["evaluate"]["models"]


def tuned_models():
    return [m for m in eval_models() if m != config["report"]["baseline"]]


def eval_endpoint(wildcards):
    """The served model, unless this model has a configured endpoint (tracetune.config.endpoint_path:
    evaluate.endpoints.{model}; base is evaluated where it was collected from when endpoint.base_url is set)."""
    return [] if endpoint_path(config, wildcards.model) else served_model(wildcards.model)


def eval_endpoint_settings(wildcards):
    """base_url and model of this model's configured endpoint; {} for a served model."""
    path = endpoint_path(config, wildcards.model)
    return result_settings(config, *path) if path else {}


def reorder_check(wildcards):
    """The reversed-tool-list run checks tuned models; on the baseline it would only cost time."""
    return result_settings(config, "evaluate", "reorder_check") and wildcards.model != config["report"]["baseline"]


def eval_losses():
    """The held-out losses the report shows, when the loss is enabled."""
    return expand("data/eval/{model}/loss.json", model=eval_models()) if config["evaluate"]["loss"]["enabled"] else []


def eval_agent_settings():
    """The agent settings of collection, with the evaluation's own temperature."""
    return agent_settings() | {"temperature": config["evaluate"]["temperature"]}


def eval_truncate(wildcards):
    """collect.truncate as this model's existing eval traces keep it (see collect_truncate)."""
    paths = [f"data/eval/{wildcards.model}/{name}.jsonl" for name in ("results", "reordered")]
    return kept_truncate(paths, config["collect"]["truncate"])


def eval_spec():
    """Changes when an eval task or its servers change: then every model is evaluated again."""
    return {t: task_hash(TASKS[t], TASKFILE.servers, TASKFILE.system_prompt) for t in task_ids("eval")}


def report_targets():
    return ["data/reports/report.html", "data/reports/report.md"]


def all_targets():
    """The demo's end product: the report, with every stage before it."""
    return raw_traces() + ["data/reports/curation.json", "data/dataset/train.parquet"] + report_targets()
