# Validation of config.yaml and the task file, and the input functions of every stage.
import os
import sys
from pathlib import Path

from tracetune.benchmarks import BENCHMARKS
from tracetune.config import checked_train_tasks, section_settings, task_hash
from tracetune.curate import edit_paths, read_trace_ids
from tracetune.fingerprint import code_fingerprint
from tracetune.jsonio import InputError
from tracetune.preflight import check_inputs
from tracetune.rl import rl_tasks
from tracetune.rounds import parse_round_run, round_run, sampler
from tracetune.runtime.settings import endpoint_path, kept_truncate, result_settings

# Preflight's cache of listed server tools and model module names; keyed by what they are read
# from, so several workflow copies can share one (TRACETUNE_PREFLIGHT_CACHE, as the tests do).
PREFLIGHT_CACHE = os.environ.get("TRACETUNE_PREFLIGHT_CACHE", ".snakemake/tracetune")

try:  # before anything runs: a bad input stops the run with one line
    TASKFILE = check_inputs(config, PREFLIGHT_CACHE)
except InputError as e:
    sys.exit(f"tracetune: {e}")
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
    """Changes when anything that decides this task's traces changes (not its check: curation
    judges that): only that task reruns."""
    return task_hash(TASKS[wildcards.task], TASKFILE.servers, TASKFILE.system_prompt)


def task_server_sources(wildcards):
    return server_sources(wildcards.task)


def server_sources(task_id):
    """The demo servers' own code, for tasks that use them (third-party servers are not tracked)."""
    paths = []
    for name in TASKS[task_id]["servers"]:
        spec = TASKFILE.servers[name]
        for arg in spec.get("args", []):
            if arg.startswith("tracetune.servers."):
                paths.append(str(Path("src", *arg.split(".")).with_suffix(".py")))
    return paths


# --- the model a job asks: served by the workflow, or at a configured endpoint ----------------
# `model` is the model a job asks: None for collection (the base model, or endpoint.*), a model name
# for evaluation (evaluate.endpoints.{model}, or the base model at endpoint.*). tracetune.config.
# endpoint_path says which configured endpoint, if any, answers for it.


def served_file(model):
    """The file the workflow's own server loads for `model`: the GGUF for llama.cpp, the model
    directory for `transformers serve`. A rebuilt model reruns the jobs that ask it."""
    if config["serve"]["engine"] == "llama.cpp":
        return f"data/gguf/{model}.gguf"
    return f"data/models/{model}"


def model_server(model, asks=True):
    """Input of a job that asks `model` (when it `asks` at all): the served file, unless a configured
    endpoint answers for it. The job's script passes it to tracetune.runtime.endpoint.resolve_endpoint."""
    return served_file(model or "base") if asks and endpoint_path(config, model) is None else []


def endpoint_settings(model, asks=True):
    """Params of a job that asks `model` at a configured endpoint: its base_url and model name."""
    path = endpoint_path(config, model)
    return result_settings(config, *path) if asks and path else {}


# Params carry result settings only (tracetune.runtime.settings.result_settings; the schemas mark the rest),
# and of those only what can change the job's output: changing a setting reruns the jobs it affects.


def task_samples(wildcards):
    """Model samples collected for this task (besides its reference plan)."""
    return TASKS[wildcards.task].get("samples", config["collect"]["samples"])


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
    return read_trace_ids("curation/reject.txt", wildcards.task)


def task_keeps(wildcards):
    return read_trace_ids("curation/keep.txt", wildcards.task)


def task_added_traces(wildcards):
    """Traces brought in with `tracetune import` or `tracetune record`, where this task has any."""
    paths = [Path(f"data/traces/{kind}/{wildcards.task}.jsonl") for kind in ("imported", "recorded")]
    return [str(path) for path in paths if path.is_file()]


def task_check(wildcards):
    return TASKS[wildcards.task].get("check")


def curated_traces(split=None):
    return expand("data/traces/curated/{task}.jsonl", task=task_ids(split))


def task_splits():
    return {task: TASKS[task]["split"] for task in task_ids()}


# --- evaluate and report --------------------------------------------------------------------


def eval_models():
    return config["evaluate"]["models"]


def trained_runs():
    """The evaluated models that are training runs: all but the prepared base model."""
    return [m for m in eval_models() if m != "base"]


def reorder_check(wildcards):
    """The reversed-tool-list run checks tuned models; on the baseline it would only cost time."""
    return result_settings(config, "evaluate", "reorder_check") and wildcards.model != config["report"]["baseline"]


def eval_losses(models=None):
    """The held-out losses a report shows, when the loss is enabled."""
    if not config["evaluate"]["loss"]["enabled"]:
        return []
    return expand("data/eval/{model}/loss.json", model=models or eval_models())


def eval_agent_settings():
    """The agent settings of collection, with the evaluation's own temperature."""
    return agent_settings() | {"temperature": config["evaluate"]["temperature"]}


def benchmark_agent_settings():
    """What a benchmark request is asked with: one answer, so no turns, tool results or samples."""
    return {k: v for k, v in eval_agent_settings().items() if k in ("temperature", "seed", "max_tokens")}


def benchmark_summaries(models=None):
    """Each configured benchmark's summary for each evaluated model (evaluate.benchmarks)."""
    return expand("data/eval/{model}/{benchmark}.json", model=models or eval_models(),
                  benchmark=config["evaluate"]["benchmarks"])


def eval_truncate(wildcards):
    """collect.truncate as this model's existing eval traces keep it (see collect_truncate)."""
    paths = [f"data/eval/{wildcards.model}/{name}.jsonl" for name in ("results", "reordered")]
    return kept_truncate(paths, config["collect"]["truncate"])


def eval_spec():
    """Changes when an eval task (its check included) or its servers change: then every model is
    evaluated again."""
    return {t: task_hash(TASKS[t], TASKFILE.servers, TASKFILE.system_prompt, judged=True) for t in task_ids("eval")}


def report_targets():
    return ["data/reports/report.html", "data/reports/report.md"]


def all_targets():
    """The demo's end product: the report, with every stage before it."""
    return raw_traces() + ["data/reports/curation.json", "data/dataset/train.parquet"] + report_targets()


# --- rl -------------------------------------------------------------------------------------


def rl_settings():
    return section_settings("rl", config.get("rl"))


def rl_spec():
    """The tasks RL rolls out, their checks included, and their servers: a change reruns it. Bad
    RL input stops the run in one line, but only when an rl job is planned."""
    try:
        tasks = rl_tasks(TASKFILE, rl_settings())
    except InputError as e:
        sys.exit(f"tracetune: {e}")
    return {t["id"]: task_hash(t, TASKFILE.servers, TASKFILE.system_prompt, judged=True) for t in tasks}


def rl_init_adapter(wildcards):
    """The SFT adapter RL continues (rl.init: sft), or none (a fresh LoRA on the base model)."""
    return f"data/adapters/{wildcards.run}" if rl_settings()["init"] == "sft" else []


def rl_server_sources(wildcards):
    """The demo servers' code of the tasks RL rolls out (as collection tracks it)."""
    return sorted({path for task in rl_spec() for path in server_sources(task)})


def rl_report_models():
    """base, the SFT run and its RL run: the report of `snakemake rl`."""
    run = config["train"]["run"]
    return ["base", run, f"{run}-rl"]


# --- rounds ---------------------------------------------------------------------------------


def rounds_settings():
    return section_settings("rounds", config.get("rounds"))


def rounds_tasks():
    """The train tasks a round samples; bad input stops the run in one line, only when a rounds
    job is planned."""
    try:
        return checked_train_tasks(TASKFILE, rounds_settings()["tasks"], "rounds")
    except InputError as e:
        sys.exit(f"tracetune: {e}")


def rounds_spec():
    """The sampled tasks, their checks included, and their servers: a change reruns every round."""
    return {t["id"]: task_hash(t, TASKFILE.servers, TASKFILE.system_prompt, judged=True) for t in rounds_tasks()}


def rounds_server_sources(wildcards):
    return sorted({path for task in rounds_spec() for path in server_sources(task)})


def rounds_agent_settings(wildcards):
    """The agent settings of collection, with the rounds' own sampling temperature."""
    return agent_settings() | {"temperature": rounds_settings()["temperature"]}


def train_dataset(wildcards):
    """The rows a run trains on: a round's own (tracetune.rounds), else the SFT dataset."""
    parsed = parse_round_run(wildcards.run)
    if parsed is None:
        return "data/dataset/train.parquet"
    return "data/rounds/{}/round{}/train.parquet".format(*parsed)


def rounds_report_models():
    """base, the SFT run and each of its rounds: the report of `snakemake rounds`."""
    run = config["train"]["run"]
    return ["base", run] + [round_run(run, r) for r in range(1, rounds_settings()["rounds"] + 1)]


def rounds_summaries():
    run = config["train"]["run"]
    return expand("data/rounds/{run}/round{r}/round.json", run=run, r=range(1, rounds_settings()["rounds"] + 1))
