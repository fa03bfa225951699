"""The bad-input suite: malformed config and task files, each stopped before any job runs by the
checks the Snakefile runs (tracetune.preflight), with one line that names the file, the item and
the field. test_workflow runs a few of them through `snakemake -n` itself."""

import copy
from pathlib import Path

import pytest
import yaml

from tracetune.jsonio import InputError
from tracetune.preflight import check_inputs

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
DEMO = yaml.safe_load((ROOT / "tasks.yaml").read_text())
DEMO_TASKS = {t["id"]: t for t in DEMO["tasks"]}
TASKS = ["price-kettle", "stock-teapot", "order-status-1001", "eval-order-status-1009"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("server-tools")  # the shop's tools are listed once, then cached


def task_doc() -> dict:
    return {"servers": {"shop": copy.deepcopy(DEMO["servers"]["shop"])}, "system_prompt": DEMO["system_prompt"],
            "tasks": [copy.deepcopy(DEMO_TASKS[t]) for t in TASKS]}


def run_checks(tmp_path, cache_dir, config_change=None, tasks_change=None, tasks_text=None) -> tuple[str, Path]:
    tasks_path = tmp_path / "tasks.yaml"
    doc = task_doc()
    if tasks_change:
        tasks_change(doc)
    tasks_path.write_text(tasks_text if tasks_text is not None else yaml.safe_dump(doc, sort_keys=False))
    config = copy.deepcopy(CONFIG) | {"tasks": str(tasks_path)}
    if config_change:
        config_change(config)
    return check_inputs(config, cache_dir), tasks_path


def test_the_good_files_pass(tmp_path, cache_dir):
    taskfile, _ = run_checks(tmp_path, cache_dir)
    assert list(taskfile.tasks) == TASKS


def setting(dotted, value):
    def change(config):
        *sections, key = dotted.split(".")
        node = config
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    return change


def dropped(dotted):
    def change(config):
        *sections, key = dotted.split(".")
        node = config
        for section in sections:
            node = node[section]
        del node[key]
    return change


# (config change, the line's start after "config.yaml: ")
BAD_CONFIG = [
    (setting("collect.concurrency", 0), "collect.concurrency: 0 is less than the minimum of 1"),
    (setting("collect.concurency", 3), "collect: Additional properties are not allowed ('concurency'"),
    (setting("collect.truncate", 10), "collect.truncate: 10 is less than the minimum of 100"),
    (setting("collect.temperature", "hot"), "collect.temperature: 'hot' is not of type 'number'"),
    (setting("collect.max_turns", 0), "collect.max_turns: 0 is less than the minimum of 1"),
    (setting("collect.samples", -1), "collect.samples: -1 is less than the minimum of 0"),
    (setting("endpoint.base_url", "not a url"), "endpoint.base_url: 'not a url' does not match"),
    (setting("endpoint.timeout_s", 0), "endpoint.timeout_s: 0 is less than or equal to the minimum of 0"),
    (setting("endpoint.api_key_env", "1KEY"), "endpoint.api_key_env: '1KEY' does not match"),
    (setting("endpoint.max_retries", -1), "endpoint.max_retries: -1 is less than the minimum of 0"),
    (setting("evaluate.endpoints", {"lora": {"base_url": "gpu-node:8000"}}),
     "evaluate.endpoints.lora.base_url: 'gpu-node:8000' does not match"),
    (setting("evaluate.samples", 0), "evaluate.samples: 0 is less than the minimum of 1"),
    (setting("evaluate.max_error_rate", 2), "evaluate.max_error_rate: 2 is greater than the maximum of 1"),
    (setting("evaluate.temperature", -1), "evaluate.temperature: -1 is less than the minimum of 0"),
    (setting("evaluate.loss.device", "tpu"), "evaluate.loss.device: 'tpu' does not match"),
    (setting("curate.keep_system_prompt", "yes"), "curate.keep_system_prompt: 'yes' is not of type 'boolean'"),
    (setting("dataset.tool_list", "all"), "dataset.tool_list: 'all' is not one of"),
    (setting("dataset.max_seq_len", 0), "dataset.max_seq_len: 0 is less than the minimum of"),
    (setting("dataset.distractor_tools", 9),
     "task 'price-kettle': dataset.distractor_tools: 9 asked for, but only"),
    (lambda c: c["dataset"].update(shuffle_tools=False, renderings=2),
     "task 'price-kettle': dataset.renderings: 2 asked for, but its"),
    (setting("train.lora_r", 0), "train.lora_r: 0 is less than the minimum of 1"),
    (setting("train.learning_rate", "fast"), "train.learning_rate: 'fast' is not of type 'number'"),
    (setting("train.backend", "gpu"), "train.backend: 'gpu' is not one of"),
    (setting("train.run", "base"), "train.run: 'base' does not match"),
    (setting("train.epochs", 0), "train.epochs: 0 is less than"),
    (setting("merge.dtype", "float8"), "merge.dtype: 'float8' is not one of"),
    (setting("serve.engine", "vllm"), "serve.engine: 'vllm' is not one of"),
    (setting("serve.gguf_type", "q4"), "serve.gguf_type: 'q4' is not one of"),
    (setting("report.title", 3), "report.title: 3 is not of type 'string'"),
    (setting("report.baseline", "gpt"), "report.baseline: 'gpt' is not one of evaluate.models (base, lora)"),
    (setting("hub.private", "no"), "hub.private: 'no' is not of type 'boolean'"),
    (setting("rl.group_size", 1), "rl.group_size: 1 is less than the minimum of 2"),
    (setting("rl.reward", {"check": "lots"}), "rl.reward.check: 'lots' is not of type 'number'"),
    (setting("rl.init", "pretrained"), "rl.init: 'pretrained' is not one of"),
    (setting("colect", {}), "(top level): Additional properties are not allowed ('colect'"),
    (dropped("base_model"), "(top level): 'base_model' is a required property"),
    (setting("base_model", "bundled:nope"), "base_model: unknown bundled model 'nope'"),
    (setting("base_model", "/nonexistent/model"), "base_model: /nonexistent/model does not exist"),
    (setting("base_model", "."), "base_model: . is not a model directory (no config.json)"),
]


@pytest.mark.parametrize("change, line", BAD_CONFIG, ids=[line.split(":")[0] for _, line in BAD_CONFIG])
def test_a_bad_config_is_one_line_naming_file_item_and_field(tmp_path, cache_dir, change, line):
    with pytest.raises(InputError) as info:
        run_checks(tmp_path, cache_dir, config_change=change)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"config.yaml: {line}"), message


def in_task(i, **fields):
    return lambda doc: doc["tasks"][i].update(**fields)


# (task file change, the line's start after "{tasks.yaml path}: ")
BAD_TASKS = [
    (lambda d: [t.update(split="train") for t in d["tasks"]],
     "tasks: no task has split: eval; evaluation needs held-out tasks"),
    (in_task(0, servers=["shop", "warehouse"]), "task 'price-kettle': servers: unknown server 'warehouse'"),
    (in_task(1, id="price-kettle"), "task 'price-kettle': id: duplicate task id"),
    (in_task(0, id="Price Kettle"), "task 'Price Kettle': id: 'Price Kettle' does not match"),
    (in_task(0, id="price-kettle\n"), "task 'price-kettle\\n': id: 'price-kettle\\n' does not match"),
    (lambda d: d["tasks"][0].pop("prompt"), "task 'price-kettle': 'prompt' is a required property"),
    (lambda d: d["tasks"][3].pop("check"),
     "task 'eval-order-status-1009': check: an eval task needs a check (it is how the task is scored)"),
    (in_task(0, prompt=""), "task 'price-kettle': prompt"),
    (in_task(0, check={"smells_like": "tea"}), "task 'price-kettle': check: unknown check kind 'smells_like'"),
    (in_task(0, check={"regex": "(unclosed"}), "task 'price-kettle': check.regex: '(unclosed' is not a 'regex'"),
    (in_task(0, split="test"), "task 'price-kettle': split: 'test' is not one of"),
    (in_task(0, samples=-1), "task 'price-kettle': samples: -1 is less than the minimum of 0"),
    (in_task(0, max_turns=0), "task 'price-kettle': max_turns: 0 is less than the minimum of 1"),
    (in_task(0, tools=["teleport"]), "task 'price-kettle': tools: 'teleport' is not a tool of server(s) shop"),
    (lambda d: [t.pop("reference") for t in d["tasks"]] and d["tasks"][0].update(tools=["serch_products"]),
     "task 'price-kettle': tools: 'serch_products' is not a tool of server(s) shop"),  # no plan lists the shop
    (lambda d: d["tasks"][0]["reference"].__setitem__(0, {"tool": "teleport"}),
     "task 'price-kettle': reference[0].tool: 'teleport' is not a tool of server(s) shop"),
    (lambda d: d["tasks"][0]["reference"].pop(), "task 'price-kettle': reference: 0 answer step(s) for 1"),
    (in_task(1, check={"all": [{"contains": "out of stock"}, {"tool_called": "teleport"}]}),
     "task 'stock-teapot': check.all[1].tool_called: 'teleport' is not a tool of server(s) shop, so the check can never pass"),
    (lambda d: d["servers"]["shop"].pop("command"), "servers.shop"),
    (lambda d: d.pop("servers"), "(top level): 'servers' is a required property"),
    (lambda d: d.update(tasks=[]), "tasks"),
]


@pytest.mark.parametrize("change, line", BAD_TASKS, ids=[line.split(":")[0][:40] for _, line in BAD_TASKS])
def test_a_bad_task_file_is_one_line_naming_file_item_and_field(tmp_path, cache_dir, change, line):
    with pytest.raises(InputError) as info:
        run_checks(tmp_path, cache_dir, tasks_change=change)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'tasks.yaml'}: {line}"), message


@pytest.mark.parametrize("text, line", [
    ("tasks: [unclosed", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping with 'servers' and 'tasks'"),
    ("", "expected a mapping with 'servers' and 'tasks'"),
])
def test_a_task_file_that_is_not_a_mapping_is_one_line(tmp_path, cache_dir, text, line):
    with pytest.raises(InputError) as info:
        run_checks(tmp_path, cache_dir, tasks_text=text)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'tasks.yaml'}: {line}"), message


def test_a_missing_task_file_is_one_line(tmp_path, cache_dir):
    config = copy.deepcopy(CONFIG) | {"tasks": str(tmp_path / "nowhere.yaml")}
    with pytest.raises(InputError, match=r"^.*nowhere.yaml: task file not found$"):
        check_inputs(config, cache_dir)


def test_a_lora_target_the_model_lacks_is_caught_before_any_job(tmp_path, cache_dir):
    with pytest.raises(InputError, match=r"^config.yaml: train.target_modules: 'qkv_proj': the model "
                                         r"bundled:smollm2-135m has no such module$"):
        run_checks(tmp_path, cache_dir, config_change=setting("train.target_modules", ["q_proj", "qkv_proj"]))
    assert list(cache_dir.glob("module-names-*.json"))  # found once, then read from the cache


@pytest.mark.parametrize("change, line", [
    (lambda c: c.update(base_model="/nonexistent/model"), "base_model: /nonexistent/model does not exist"),
    (lambda c: c["report"].update(baseline="gpt"), "report.baseline: 'gpt' is not one of"),
])
def test_cheap_checks_come_before_starting_servers_or_importing_torch(tmp_path, cache_dir, monkeypatch, change, line):
    import tracetune.preflight

    def started(*args):
        raise AssertionError("a server was started or torch imported before a cheap check failed")

    monkeypatch.setattr(tracetune.preflight, "cached_server_tools", started)
    monkeypatch.setattr(tracetune.preflight, "cached_module_names", started)
    with pytest.raises(InputError, match=line.replace("(", r"\(")):
        run_checks(tmp_path, cache_dir, config_change=change)
