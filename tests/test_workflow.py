"""The workflow as its users drive it: snakemake on a copy of this repository."""

import copy
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
DEMO = yaml.safe_load((ROOT / "tasks.yaml").read_text())
DEMO_TASKS = {t["id"]: t for t in DEMO["tasks"]}


def make_workflow(tmp_path: Path, task_ids: list[str], config: dict | None = None) -> Path:
    """A copy of the workflow with a subset of the demo tasks and config overrides."""
    wf = tmp_path / "wf"
    for name in ("rules", "profiles", "curation", "report", "envs"):
        shutil.copytree(ROOT / name, wf / name)
    shutil.copy(ROOT / "Snakefile", wf / "Snakefile")
    shutil.copytree(ROOT / "data" / "site", wf / "data" / "site")
    (wf / "src").symlink_to(ROOT / "src")
    settings = yaml.safe_load((ROOT / "config.yaml").read_text())
    for section, values in (config or {}).items():
        if isinstance(values, dict):
            settings.setdefault(section, {}).update(values)
        else:
            settings[section] = values
    (wf / "config.yaml").write_text(yaml.safe_dump(settings))
    write_tasks(wf, [copy.deepcopy(DEMO_TASKS[t]) for t in task_ids])
    return wf


HELD_OUT = "eval-order-status-1009"


def write_tasks(wf: Path, tasks: list[dict], held_out: bool = True) -> None:
    """The task file of a workflow copy; the workflow refuses to start without an eval task, so
    one is added when `tasks` has none (unless `held_out` is False)."""
    if held_out and not any(t.get("split") == "eval" for t in tasks):
        tasks = tasks + [copy.deepcopy(DEMO_TASKS[HELD_OUT])]
    doc = {k: v for k, v in DEMO.items() if k != "tasks"} | {"tasks": tasks}
    (wf / "tasks.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def snakemake(wf: Path, *args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not (wf / "src").is_symlink():  # a copy of the package, for tests that edit its code
        env["PYTHONPATH"] = str(wf / "src")
    proc = subprocess.run([SNAKEMAKE, "--cores", "2", *args], cwd=wf, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def planned_jobs_of_snakemake_n(wf: Path, *targets: str) -> list[str]:
    """'rule:wildcards' of every job `snakemake -n` plans, read from its printed output as
    `tracetune review` reads it: the wiring that the in-process plans (tests/dryrun.py) stand for."""
    from tracetune.review import parse_planned_jobs

    return parse_planned_jobs(snakemake(wf, "-n", *targets).stdout)


def planned_jobs(wf: Path, *targets: str) -> list[str]:
    """'rule:wildcards' of every job a dry run plans, found in this process (tests/dryrun.py). A
    workflow copy with its own `src/` is fingerprinted from that copy, as its snakemake would be."""
    import tracetune.fingerprint
    from dryrun import planned_jobs as planned_in_process

    package = wf / "src" / "tracetune"
    if (wf / "src").is_symlink():
        return planned_in_process(wf, *targets)
    original, tracetune.fingerprint.PACKAGE = tracetune.fingerprint.PACKAGE, package.resolve()
    try:
        return planned_in_process(wf, *targets)
    finally:
        tracetune.fingerprint.PACKAGE = original


def served_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "transformers" in cmd and " serve" in cmd or "tracetune.runtime.serving" in cmd or "llama-server" in cmd:
            found.append(proc)
    return found


TRAIN3 = ["price-kettle", "stock-teapot", "order-status-1001"]


@pytest.mark.slow  # real snakemake subprocesses
def test_edit_one_task_recollects_only_that_task(tmp_path):
    wf = make_workflow(tmp_path, TRAIN3)
    targets = [f"data/traces/raw/{t}.jsonl" for t in TRAIN3]
    snakemake(wf, *targets)
    assert planned_jobs(wf, *targets) == []
    tasks = [copy.deepcopy(DEMO_TASKS[t]) for t in TRAIN3]
    tasks[1]["prompt"] = "How many teapots are in stock, in total?"
    write_tasks(wf, tasks)
    assert planned_jobs(wf, *targets) == ["collect:task=stock-teapot"]
    assert planned_jobs_of_snakemake_n(wf, *targets) == ["collect:task=stock-teapot"]  # as a user sees it


@pytest.mark.slow  # real snakemake subprocesses
def test_bad_task_file_stops_the_run_with_one_line(tmp_path):
    wf = make_workflow(tmp_path, TRAIN3)
    tasks = [copy.deepcopy(DEMO_TASKS[t]) for t in TRAIN3]
    tasks[2]["servers"] = ["shop", "warehouse"]
    write_tasks(wf, tasks)
    proc = snakemake(wf, "-n", check=False)
    assert proc.returncode != 0
    line = "tracetune: tasks.yaml: task 'order-status-1001': servers: unknown server 'warehouse'"
    assert any(err.startswith(line) for err in proc.stderr.splitlines()), proc.stderr
    assert not (wf / "data" / "traces").exists()


@pytest.mark.slow  # real snakemake subprocesses
def test_reference_step_with_a_tool_the_server_lacks(tmp_path):
    wf = make_workflow(tmp_path, TRAIN3)
    tasks = [copy.deepcopy(DEMO_TASKS[t]) for t in TRAIN3]
    tasks[0]["reference"][0]["tool"] = "teleport"
    tasks[0].pop("tools", None)
    write_tasks(wf, tasks)
    proc = snakemake(wf, "-n", check=False)
    assert proc.returncode != 0
    assert "task 'price-kettle': reference[0].tool: 'teleport' is not a tool of server(s) shop" in proc.stderr


@pytest.mark.parametrize("config, held_out, line", [
    ({}, False, "tracetune: tasks.yaml: tasks: no task has split: eval; evaluation needs held-out tasks"),
    ({"endpoint": {"base_url": "not a url"}}, True, "tracetune: config.yaml: endpoint.base_url: 'not a url' does not match"),
    ({"evaluate": {"endpoints": {"lora": {"base_url": "gpu-node:8000"}}}}, True,
     "tracetune: config.yaml: evaluate.endpoints.lora.base_url: 'gpu-node:8000' does not match"),
    ({"base_model": "bundled:nope"}, True, "tracetune: config.yaml: base_model: unknown bundled model 'nope'"),
    ({"base_model": "/nonexistent/model"}, True, "tracetune: config.yaml: base_model: /nonexistent/model does not exist"),
    ({"dataset": {"distractor_tools": 9}}, True,
     "tracetune: config.yaml: task 'price-kettle': dataset.distractor_tools: 9 asked for, but only 1 tool(s) of other servers exist"),
    ({"dataset": {"shuffle_tools": False, "renderings": 2}}, True,
     "tracetune: config.yaml: task 'price-kettle': dataset.renderings: 2 asked for, but its 7 tool(s)"),
    ({"rounds": {"rounds": 0}}, True, "tracetune: config.yaml: rounds.rounds: 0 is less than the minimum of 1"),
    ({"evaluate": {"benchmarks": ["mmlu"]}}, True, "tracetune: config.yaml: evaluate.benchmarks[0]: 'mmlu' is not one of"),
])
def test_bad_input_stops_the_run_before_any_job_with_one_line(tmp_path, config, held_out, line):
    """Planned in-process: the Snakefile's exit carries the line (the two tests above see it on a
    real snakemake's stderr)."""
    wf = make_workflow(tmp_path, [], config)
    tasks = [copy.deepcopy(DEMO_TASKS[t]) for t in TRAIN3] + [copy.deepcopy(DEMO_TASKS["site-home-{slug}"])]
    write_tasks(wf, tasks, held_out=held_out)
    with pytest.raises(SystemExit) as stopped:
        planned_jobs(wf)
    message = str(stopped.value.code)
    assert message.startswith(line) and "\n" not in message, message
    assert not (wf / "data" / "traces").exists()


@pytest.mark.slow
def test_collects_with_a_really_served_model_and_leaves_no_process(tmp_path, bundled_model):
    """No endpoint configured: the workflow serves the base model itself, once, for both jobs."""
    wf = make_workflow(tmp_path, TRAIN3[:2], {"base_model": str(bundled_model),
                                              "collect": {"samples": 1, "max_turns": 2, "max_tokens": 48}})
    snakemake(wf, "data/traces/raw/price-kettle.jsonl", "data/traces/raw/stock-teapot.jsonl", timeout=900)
    for task in TRAIN3[:2]:
        lines = (wf / "data" / "traces" / "raw" / f"{task}.jsonl").read_text().splitlines()
        traces = [yaml.safe_load(line) for line in lines]
        model = [t for t in traces if t["source"] == "model"]
        assert len(model) == 1 and model[0]["outcome"]["status"] in ("answered", "max_turns")
        assert model[0]["model"] == "data/gguf/base.gguf" and model[0]["endpoint"].startswith("http://127.0.0.1:")
        assert model[0]["messages"][-1]["role"] == "assistant" and model[0]["usage"]["completion_tokens"] > 0
    assert served_processes() == []


@pytest.mark.slow
@pytest.mark.e2e
def test_smoke_run_on_a_tiny_model_ends_with_both_reports(tmp_path, tiny_base):
    """`make smoke` (scripts/smoke.sh, configs/smoke.yaml) as a contributor runs it, on a 2-layer
    random model: collection to report and the rl stage, every stage's artifact appears, each model
    is evaluated by its own served endpoint, nothing is left running, and a rerun plans nothing."""
    base = tiny_base
    wf = tmp_path / "smoke"
    env = {**os.environ, "SMOKE_DIR": str(wf), "SNAKEMAKE": SNAKEMAKE, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "smoke.sh"), "--config", f"base_model={base}"],
                          capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    data = wf / "data"
    for path in ["dataset/train.parquet", "dataset/eval.parquet", "adapters/lora/adapter_config.json",
                 "adapters/lora/metrics.jsonl", "models/lora/model.safetensors", "reports/curation.json",
                 "adapters/lora-rl/adapter_config.json", "reports/report.md", "reports/rl/report.md"]:
        assert (data / path).is_file(), path
    eval_tasks = {t["id"] for t in yaml.safe_load((ROOT / "configs/smoke-tasks.yaml").read_text())["tasks"]
                  if t.get("split") == "eval"}
    for model in ("base", "lora", "lora-rl"):
        summary = yaml.safe_load((data / "eval" / model / "summary.json").read_text())
        assert summary["served_model"] == f"data/gguf/{model}.gguf"
        results = [yaml.safe_load(line) for line in (data / "eval" / model / "results.jsonl").read_text().splitlines()]
        assert {r["task_id"] for r in results} == eval_tasks  # one sample each; no train task
    html = (data / "reports" / "rl" / "report.html").read_text()
    assert all(task in html for task in eval_tasks) and "lora-rl" in html and "<details" in html
    assert served_processes() == []
    rerun = subprocess.run(["bash", str(ROOT / "scripts" / "smoke.sh"), "-n", "--config", f"base_model={base}"],
                           capture_output=True, text=True, timeout=600, env=env)
    assert "Nothing to be done" in rerun.stdout + rerun.stderr, rerun.stdout[-3000:]


# --- which settings rerun what --------------------------------------------------------------
# A finished workflow of four tasks: a plain one, one with a model sample (from a scripted
# endpoint), a site task whose page is 409 characters long, and an eval task. Collection, curation
# and the dataset are real; train, merge and evaluation are stand-ins that only write their outputs
# (the evaluation's traces with their cut, as run_one records it), so that the whole `all` target is
# finished in seconds and dry runs show exactly which jobs a setting reruns.

STAND_IN = '''
import json
from pathlib import Path

for path in map(Path, snakemake.output):
    if not path.suffix:  # a directory: an adapter, a merged model, a round's kept samples
        path.mkdir(parents=True, exist_ok=True)
        (path / "stand-in").write_text("")
    elif path.suffix == ".jsonl":
        path.write_text(json.dumps({"truncate": getattr(snakemake.params, "truncate", None),
                                    "longest_tool_result": 0}) + "\\n")
    else:
        path.write_text("{}")
'''
SITE_TASK = "site-sunday-open"  # the first variant of site-{slug}: its page is 409 characters long
RERUN_TASKS = ["price-kettle", "stock-teapot", SITE_TASK, "eval-price-chefs-knife"]
# Dry runs plan `all` and `rl` (GRPO from the SFT run, merged, evaluated and reported beside it).
REPORTS = {"report", "all", "report_rl", "rl"}


def bfcl(*models: str) -> set[str]:
    """The benchmark jobs of `models` (the finished workflow runs evaluate.benchmarks: [bfcl])."""
    return {f"benchmark:model={m}, benchmark=bfcl" for m in models}


RL_AFTER_MERGE = {"merge:run=lora-rl", "gguf:model=lora-rl", "eval_loss:model=lora-rl", "evaluate:model=lora-rl",
                  "report_rl", "rl"} | bfcl("lora-rl")
RL_CHAIN = {"grpo:run=lora"} | RL_AFTER_MERGE
SERVED = {"evaluate:model=lora", "evaluate:model=lora-rl"} | REPORTS  # how the tuned models are served
SERVED_FILE = SERVED | bfcl("lora", "lora-rl")  # what asks the served file (base is asked at the endpoint)
SERVED_GGUF = {"gguf:model=lora", "gguf:model=lora-rl"} | SERVED_FILE
EVALUATE_BOTH = {"evaluate:model=base", "evaluate:model=lora", "evaluate:model=lora-rl"} | REPORTS
BFCL_ALL = bfcl("base", "lora", "lora-rl") | REPORTS
AFTER_MERGE = {"merge:run=lora", "gguf:model=lora", "eval_loss:model=lora", "evaluate:model=lora"} | bfcl("lora") | REPORTS
AFTER_DATASET = ({"build_dataset", "train:run=lora", "eval_loss:model=base"}  # base is evaluated as before
                 | AFTER_MERGE | RL_CHAIN)  # RL continues the retrained SFT adapter
AFTER_CURATE = {"curation_report"} | AFTER_DATASET
CURATE_ALL = {f"curate:task={t}" for t in RERUN_TASKS} | AFTER_CURATE


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_base):
    from fakes import FakeEndpoint

    tmp = tmp_path_factory.mktemp("rerun")
    base = tiny_base
    tasks = [copy.deepcopy(DEMO_TASKS[t]) for t in ("price-kettle", "stock-teapot", "site-{slug}",
                                                     "eval-price-chefs-knife")]
    tasks[1]["samples"] = 1
    tasks[2]["vary"] = tasks[2]["vary"][:1]
    with FakeEndpoint(lambda messages: {"role": "assistant", "content": "There are 7 teapots."}) as fake:
        wf = make_workflow(tmp, [], {"base_model": str(base), "endpoint": {"base_url": fake.base_url, "model": "fake"},
                                     "evaluate": {"benchmarks": ["bfcl"]}})
        (wf / "src").unlink()  # its own copy of the package: the code-change cases edit it
        shutil.copytree(ROOT / "src", wf / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        write_tasks(wf, tasks)
        for rule in ("train", "merge", "gguf", "eval_loss", "evaluate", "benchmark", "report", "grpo", "rounds"):
            script = wf / "rules" / "scripts" / f"{rule}.py"
            # The real script's imports, never run, keep its code fingerprint the real one.
            imports = [line for line in script.read_text().splitlines() if line.startswith("from tracetune.")]
            script.write_text("if False:\n" + "".join(f"    {line}\n" for line in imports) + STAND_IN)
        snakemake(wf, "all", "rl", "rounds")
    raw = [yaml.safe_load(line) for line in (wf / f"data/traces/raw/{SITE_TASK}.jsonl").read_text().splitlines()]
    assert [(t["truncate"], t["longest_tool_result"]) for t in raw] == [(4000, 409)]
    assert planned_jobs(wf, "all", "rl", "rounds") == []  # a finished run plans nothing
    return wf


def planned_after(wf: Path, changes: dict, targets=("all", "rl"), plan=planned_jobs) -> set[str]:
    """The jobs a dry run of `targets` plans with config.yaml changed (dotted keys); the file is restored."""
    path = wf / "config.yaml"
    original = path.read_text()
    settings = yaml.safe_load(original)
    for dotted, value in changes.items():
        *sections, key = dotted.split(".")
        node = settings
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    path.write_text(yaml.safe_dump(settings))
    try:
        return set(plan(wf, *targets))
    finally:
        path.write_text(original)


OPERATIONAL = {"endpoint.api_key_env": "SHOP_KEY", "endpoint.timeout_s": 300, "endpoint.max_retries": 1,
               "collect.concurrency": 4, "collect.tool_timeout_s": 60, "collect.max_error_rate": 0.2, "train.save_steps": 25,
               "train.save_total_limit": 5, "train.gradient_checkpointing": True, "evaluate.max_error_rate": 0.4, "rl.max_error_rate": 0.3, "rl.micro_batch": 2,
               "rl.save_steps": 2, "rounds.max_error_rate": 0.3}


def test_the_rerun_matrix_covers_every_operational_setting():
    from tracetune.runtime.settings import setting_kinds

    marked = {path for path, kind in setting_kinds().items() if kind == "operational"}
    assert set(OPERATIONAL) == {path for path in marked if "*" not in path}  # evaluate.endpoints.* share code


@pytest.mark.parametrize("key", sorted(OPERATIONAL))
def test_operational_setting_reruns_nothing(finished, key):
    assert planned_after(finished, {key: OPERATIONAL[key]}, targets=("all", "rl", "rounds")) == set()


def planned_after_task_edit(wf: Path, task_id: str, edit) -> set[str]:
    """The jobs a dry run plans with one task of tasks.yaml edited; the file is restored."""
    path = wf / "tasks.yaml"
    original = path.read_text()
    doc = yaml.safe_load(original)
    edit(next(t for t in doc["tasks"] if t["id"] == task_id))
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        return set(planned_jobs(wf, "all", "rl"))
    finally:
        path.write_text(original)


def test_a_changed_check_is_judged_again_not_collected_again(finished):
    def stricter(task):
        task["check"]["contains"] = [*task["check"].get("contains", []), "teapot"]

    assert planned_after_task_edit(finished, "stock-teapot", stricter) == {"curate:task=stock-teapot"} | AFTER_CURATE
    # (RL judges the check itself: its job is in AFTER_CURATE, through the retrained SFT adapter, too)
    assert planned_after_task_edit(finished, "eval-price-chefs-knife", stricter) == (
        {"curate:task=eval-price-chefs-knife", "evaluate:model=base"} | AFTER_CURATE)


def test_target_settings_rerun_nothing_already_built(finished):
    shutil.copy(finished / "tasks.yaml", finished / "tasks-copy.yaml")
    assert planned_after(finished, {"tasks": "tasks-copy.yaml"}) == set()
    assert planned_after(finished, {"train.run": "another"}, targets=("all",)) == set()  # only push_model pushes it
    # A benchmark more or less: its files are built or left, and only the reports (their inputs) change.
    assert planned_after(finished, {"evaluate.benchmarks": []}) == REPORTS


@pytest.mark.parametrize("changes, planned", [
    # Agent settings reach the task with a model sample and the evaluation, not the reference plans.
    ({"collect.max_tokens": 128}, {"collect:task=stock-teapot", "curate:task=stock-teapot", "evaluate:model=base"}
     | bfcl("base") | AFTER_CURATE),
    ({"collect.truncate": 1000}, RL_CHAIN),  # no collected result is that long; RL's own results may be
    ({"collect.truncate": 300}, {f"collect:task={SITE_TASK}", f"curate:task={SITE_TASK}"} | AFTER_CURATE),
    ({"curate.keep_system_prompt": True}, {f"curate:task={t}" for t in RERUN_TASKS} | {"evaluate:model=base"}
     | AFTER_CURATE),  # the evaluation asks as the model was trained
    ({"dataset.max_seq_len": 1024}, AFTER_DATASET),
    ({"train.lora_r": 8}, {"train:run=lora"} | AFTER_MERGE | RL_CHAIN),  # RL continues the SFT adapter
    ({"serve.gguf_type": "q8_0"}, SERVED_GGUF),
    ({"serve.engine": "transformers"}, SERVED_FILE),  # serves the merged directory
    ({"evaluate.temperature": 0.5}, EVALUATE_BOTH | BFCL_ALL),
    ({"report.title": "Shop agent"}, REPORTS),
], ids=lambda value: ",".join(value) if isinstance(value, dict) else None)
def test_result_setting_reruns_exactly_what_it_changes(finished, changes, planned):
    assert planned_after(finished, changes) == planned


# Every result setting of config.yaml, changed alone: the exact jobs it reruns. (The cases above
# say why for the subtle ones; evaluate.endpoints.* is covered by the endpoint's own keys.)
TRAIN = {"train:run=lora"} | AFTER_MERGE | RL_CHAIN
EVAL_LOSS_BOTH = {"eval_loss:model=base", "eval_loss:model=lora", "eval_loss:model=lora-rl"} | REPORTS
SAMPLED = {"collect:task=stock-teapot", "curate:task=stock-teapot"} | AFTER_CURATE  # the task with a model sample
EVERY_RESULT_SETTING = {
    "endpoint.base_url": ("http://127.0.0.1:9/v1", SAMPLED | {"evaluate:model=base"} | bfcl("base")),
    "endpoint.model": ("another", SAMPLED | {"evaluate:model=base"} | bfcl("base")),
    "collect.samples": (1, {f"{rule}:task={t}" for rule in ("collect", "curate") for t in RERUN_TASKS
                            if t != "stock-teapot"} | AFTER_CURATE),  # stock-teapot has its own samples
    "collect.temperature": (0.2, SAMPLED),  # the evaluation has its own
    "collect.seed": (1, SAMPLED | {"evaluate:model=base"} | bfcl("base")),
    "collect.max_turns": (3, SAMPLED | {"evaluate:model=base"}),
    "collect.max_tokens": (128, SAMPLED | {"evaluate:model=base"} | bfcl("base")),
    "collect.truncate": (300, {f"collect:task={SITE_TASK}", f"curate:task={SITE_TASK}"} | AFTER_CURATE),
    "curate.keep_system_prompt": (True, CURATE_ALL | {"evaluate:model=base"}),
    "curate.drop_unrecovered_tool_errors": (True, CURATE_ALL),
    "dataset.max_seq_len": (1024, AFTER_DATASET),
    "dataset.tool_list": ("recorded", AFTER_DATASET),
    "dataset.shuffle_tools": (False, AFTER_DATASET),
    "dataset.distractor_tools": (1, AFTER_DATASET),
    "dataset.renderings": (2, AFTER_DATASET),  # with a distractor: the site task has one tool of its own
    "dataset.seed": (1, AFTER_DATASET),
    "hub.dataset_repo": ("me/shop-traces", set()),  # only push_dataset and push_model
    "hub.model_repo": ("me/shop-agent", set()),
    "hub.private": (False, set()),
    "train.backend": ("trl", TRAIN),
    "train.lora_r": (8, TRAIN),
    "train.lora_alpha": (16, TRAIN),
    "train.lora_dropout": (0.1, TRAIN),
    "train.use_rslora": (False, TRAIN),
    "train.target_modules": (["q_proj", "v_proj"], TRAIN),
    "train.learning_rate": (1e-4, TRAIN),
    "train.lr_scheduler": ("linear", TRAIN),
    "train.warmup_steps": (3, TRAIN),
    "train.epochs": (1, TRAIN),
    "train.max_steps": (5, TRAIN),
    "train.batch_size": (2, TRAIN),
    "train.grad_accum": (2, TRAIN),
    "train.padding_free": (False, TRAIN),
    "train.packing": (True, TRAIN),
    "train.merge_traces": (False, TRAIN),
    "train.max_seq_len": (1024, TRAIN),
    "train.load_in_4bit": (True, TRAIN),
    "train.weight_decay": (0.01, TRAIN),
    "train.max_grad_norm": (0.5, TRAIN),
    "train.seed": (1, TRAIN),
    "merge.dtype": ("float16", AFTER_MERGE | RL_AFTER_MERGE),
    "serve.engine": ("transformers", SERVED_FILE),
    "serve.gguf_type": ("q8_0", SERVED_GGUF),
    "evaluate.samples": (2, EVALUATE_BOTH),
    "evaluate.temperature": (0.5, EVALUATE_BOTH | BFCL_ALL),
    "evaluate.bfcl.categories": (["irrelevance"], BFCL_ALL),
    "evaluate.bfcl.entries": (5, BFCL_ALL),
    "evaluate.reorder_check": (False, SERVED),  # only tuned models run it
    "evaluate.loss.enabled": (False, REPORTS),
    "evaluate.loss.max_rows": (5, EVAL_LOSS_BOTH),
    "evaluate.loss.device": ("cuda", EVAL_LOSS_BOTH),
    "evaluate.loss.max_len": (1024, EVAL_LOSS_BOTH),
    "report.baseline": ("lora", {"evaluate:model=base", "evaluate:model=lora"} | REPORTS),  # the reversed-list
    "report.title": ("Shop agent", REPORTS),                                 # run follows the tuned models
    "rl.init": ("base", RL_CHAIN),
    "rl.tasks": (["stock-teapot"], RL_CHAIN),
    "rl.group_size": (2, RL_CHAIN),
    "rl.tasks_per_step": (1, RL_CHAIN),
    "rl.max_steps": (3, RL_CHAIN),
    "rl.learning_rate": (1e-4, RL_CHAIN),
    "rl.temperature": (0.7, RL_CHAIN),
    "rl.max_completion_length": (128, RL_CHAIN),
    "rl.max_tool_calls": (2, RL_CHAIN),
    "rl.beta": (0.04, RL_CHAIN),
    "rl.reward.check": (2.0, RL_CHAIN),
    "rl.reward.valid_calls": (0.5, RL_CHAIN),
    "rl.reward.recovered_errors": (0.5, RL_CHAIN),
    "rl.reward.turns": (0.1, RL_CHAIN),
    "rl.vllm": (False, RL_CHAIN),
    "rl.seed": (1, RL_CHAIN),
    # rounds: opt-in, so `all` and `rl` plan nothing (test_rounds_are_planned_as_files plans them)
    "rounds.tasks": (["price-kettle"], set()),
    "rounds.samples": (2, set()),
    "rounds.temperature": (0.5, set()),
}


def test_the_matrix_covers_every_result_setting():
    from tracetune.runtime.settings import setting_kinds

    leaves = {path for path, kind in setting_kinds().items()
              if kind == "result" and "." in path and "*" not in path}
    assert set(EVERY_RESULT_SETTING) | {"base_model"} == leaves | {"base_model"}


@pytest.mark.parametrize("key", sorted(EVERY_RESULT_SETTING))
def test_every_result_setting_reruns_exactly_what_it_changes(finished, key):
    value, planned = EVERY_RESULT_SETTING[key]
    companion = {"dataset.distractor_tools": 1} if key == "dataset.renderings" else {}
    assert planned_after(finished, {key: value} | companion) == planned


def test_another_base_model_reruns_what_it_feeds(finished, tmp_path):
    other = tmp_path / "other-base"
    shutil.copytree(yaml.safe_load((finished / "config.yaml").read_text())["base_model"], other)
    assert planned_after(finished, {"base_model": str(other)}) == (
        {"prepare_base_model", "eval_loss:model=base"} | AFTER_DATASET)  # base is evaluated at the endpoint


# A code change reruns the rules whose scripts reach the module through imports
# (tracetune.fingerprint), and only when behaviour changes: comments and docstrings rerun nothing.
ALL_TASKS = {f"{rule}:task={t}" for rule in ("collect", "curate") for t in RERUN_TASKS}
EVALUATE = EVALUATE_BOTH


def planned_after_code_change(wf: Path, module: str, edit, plan=planned_jobs) -> set[str]:
    """The jobs a dry run plans with `edit(source)` as the module's source; the file is restored."""
    path = wf / "src" / "tracetune" / module
    original = path.read_text()
    path.write_text(edit(original))
    try:
        return set(plan(wf, "all", "rl"))
    finally:
        path.write_text(original)


@pytest.mark.parametrize("module", ["checks.py", "parsing.py", "rows.py", "report.py", "train.py", "gguf.py",
                                    "dataset.py", "merge.py"])
def test_a_comment_or_docstring_reruns_nothing(finished, module):
    assert planned_after_code_change(finished, module, lambda source: source + "\n# a note for readers\n") == set()
    assert planned_after_code_change(finished, module, lambda source: source.replace('"""', '"""Reworded. ', 1)) == set()


@pytest.mark.parametrize("module, planned", [
    ("checks.py", CURATE_ALL | EVALUATE),  # verdicts are judged where they are used: no collection
    ("parsing.py", ALL_TASKS | AFTER_CURATE | EVALUATE | bfcl("base")),  # the agent's parser and every stage's call rule
    ("rows.py", AFTER_DATASET),  # the loss region of the dataset, training and held-out loss
    ("heldout.py", EVAL_LOSS_BOTH),
    ("mcp_client.py", ALL_TASKS | AFTER_CURATE | EVALUATE),
    ("agent.py", ALL_TASKS | AFTER_CURATE | EVALUATE | bfcl("base")),
    ("collect.py", ALL_TASKS | AFTER_CURATE | EVALUATE),
    ("trace.py", ALL_TASKS | AFTER_CURATE | EVALUATE | bfcl("base")),  # every stage that makes or reads a trace
    ("config.py", ALL_TASKS | AFTER_CURATE | EVALUATE | bfcl("base")),
    ("toolsets.py", AFTER_DATASET),
    ("preflight.py", set()),  # checks before the run: no job's output depends on it
    ("fingerprint.py", set()),
    ("importers.py", set()),  # `tracetune import`: its traces are inputs of their own
    ("cli.py", set()),
    ("report.py", REPORTS),
    ("dataset.py", AFTER_DATASET),
    ("train.py", TRAIN),
    ("merge.py", AFTER_MERGE | RL_AFTER_MERGE),
    ("gguf.py", {"gguf:model=lora", "gguf:model=lora-rl"} | SERVED_FILE),
    # tracetune.runtime: how jobs run (serving, reaching the endpoint, MCP server processes, logs,
    # which settings are params) is outside every fingerprint
    ("runtime/serving.py", set()),
    ("runtime/endpoint.py", set()),
    ("runtime/mcp_connection.py", set()),
    ("runtime/logs.py", set()),
    ("runtime/settings.py", set()),
    ("curate.py", CURATE_ALL),
    ("evaluate.py", EVALUATE),
    ("rl.py", RL_CHAIN),
    ("rounds.py", set()),  # opt-in: only `snakemake rounds` reaches it
    ("benchmarks.py", BFCL_ALL),
], ids=lambda value: value if isinstance(value, str) else None)
def test_a_behaviour_change_reruns_the_rules_that_import_it(finished, module, planned):
    assert planned_after_code_change(finished, module, lambda source: source + "\n\nCHANGED = True\n") == planned


def round_jobs(n: int) -> set[str]:
    run = f"lora-round{n}"
    return ({f"rounds_sample:run=lora, round={n}", f"rounds_dataset:run=lora, round={n}", f"train:run={run}",
             f"merge:run={run}", f"gguf:model={run}", f"eval_loss:model={run}", f"evaluate:model={run}"} | bfcl(run)
            | {"report_rounds", "rounds"})


def test_rounds_are_planned_as_files(finished):
    """Each round is its own files: a second round plans only itself (the first is never redone), a
    sampling setting redoes every round, a retrained SFT run redoes the rounds it starts."""
    plan = functools.partial(planned_after, finished, targets=("rounds",))
    assert plan({"rounds.rounds": 2}) == round_jobs(2)
    assert plan({"rounds.samples": 2}) == round_jobs(1)
    assert plan({"rounds.temperature": 0.5}) == round_jobs(1)
    assert plan({"train.lora_r": 8}) == ({"train:run=lora", "merge:run=lora", "gguf:model=lora", "eval_loss:model=lora",
                                          "evaluate:model=lora"} | bfcl("lora") | round_jobs(1))
    with pytest.raises(SystemExit, match="^tracetune: config.yaml: rounds.tasks: 'eval-price-chefs-knife': an eval task never reaches training$"):
        plan({"rounds.tasks": ["eval-price-chefs-knife"]})


# The matrix above plans in this process (tests/dryrun.py). These cases plan both ways, the second
# by a real `snakemake -n` subprocess, so the in-process plans stand for what users run.
@pytest.mark.slow  # real snakemake subprocesses
@pytest.mark.parametrize("change, planned", [
    (lambda wf, plan: planned_after(wf, {"train.lora_r": 8}, plan=plan), TRAIN),
    (lambda wf, plan: planned_after(wf, {"collect.concurrency": 4}, plan=plan), set()),
    (lambda wf, plan: planned_after_code_change(wf, "rows.py", lambda s: s + "\nCHANGED = True\n", plan=plan),
     AFTER_DATASET),
    (lambda wf, plan: planned_after_code_change(wf, "checks.py", lambda s: s + "\n# a note\n", plan=plan), set()),
], ids=["result-setting", "operational-setting", "behaviour-change", "comment"])
def test_in_process_plans_are_what_snakemake_n_plans(finished, change, planned):
    assert change(finished, planned_jobs) == planned
    assert change(finished, planned_jobs_of_snakemake_n) == planned
