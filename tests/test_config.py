"""tasks.yaml and config.yaml validation: each bad input is one line naming file, task and field."""

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from tracetune.config import check_reference_tools, load_config, load_tasks
from tracetune.runtime.settings import kept_truncate, result_settings, setting_kinds, untracked_settings
from tracetune.jsonio import InputError

GOOD = {
    "servers": {"shop": {"command": "python", "args": ["-m", "tracetune.servers.shop"]},
                "remote": {"url": "http://127.0.0.1:9000/mcp"}},
    "tasks": [
        {"id": "price-blue", "prompt": "How much is the blue widget?", "servers": ["shop"],
         "check": {"contains": ["12.50"]},
         "reference": [{"tool": "get_price", "arguments": {"item": "blue"}}, {"answer": "$12.50"}]},
        {"id": "two-turns", "prompt": ["a?", "b?"], "servers": ["shop"], "split": "eval",
         "check": {"any": [{"regex": "a+"}, {"tool_called": "get_price"}]},
         "reference": [{"answer": "a"}, {"answer": "b"}]},
    ],
}


def write(tmp_path, doc):
    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def error_for(tmp_path, mutate) -> str:
    doc = copy.deepcopy(GOOD)
    mutate(doc)
    with pytest.raises(InputError) as info:
        load_tasks(write(tmp_path, doc))
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "tasks.yaml") in message
    return message


def test_good_file_is_normalised(tmp_path):
    tf = load_tasks(write(tmp_path, GOOD))
    assert tf.ids() == ["price-blue", "two-turns"]
    assert tf.ids("eval") == ["two-turns"]
    assert tf.tasks["price-blue"]["prompt"] == ["How much is the blue widget?"]
    assert tf.tasks["price-blue"]["split"] == "train"


VARIED = {"id": "price-{slug}", "prompt": "How much is the {item}?", "servers": ["shop"],
          "vary": [{"slug": "blue", "item": "blue widget", "price": "12.50", "n": 2},
                   {"slug": "red", "item": "red widget", "price": "9.00", "n": 3}],
          "check": {"contains": ["{price}"], "regex": "\\d{2}"},
          "reference": [{"tool": "get_price", "arguments": {"item": "{item}", "quantity": "{n}"}},
                        {"answer": "The {item} costs ${price}."}]}


def test_vary_expands_one_task_per_variant(tmp_path):
    tf = load_tasks(write(tmp_path, {**GOOD, "tasks": [VARIED]}))
    assert tf.ids() == ["price-blue", "price-red"]
    red = tf.tasks["price-red"]
    assert "vary" not in red and red["prompt"] == ["How much is the red widget?"]
    assert red["check"] == {"contains": ["9.00"], "regex": "\\d{2}"}  # a regex quantifier is no placeholder
    assert red["reference"][0]["arguments"] == {"item": "red widget", "quantity": 3}  # a lone placeholder keeps its type
    assert red["reference"][1]["answer"] == "The red widget costs $9.00."


@pytest.mark.parametrize("mutate, expected", [
    (lambda t: t["vary"][1].pop("price"), "task 'price-{slug}': vary[1]: check.contains[0]: no value for {price}"),
    (lambda t: t["vary"].append({"slug": "blue", "item": "x", "price": "1", "n": 1}), "task 'price-blue': id: duplicate task id"),
    (lambda t: t.update(vary=[]), "task 'price-{slug}': vary: expected a non-empty list"),
    (lambda t: t["vary"][0].update(item=["a"]), "task 'price-{slug}': vary[0]: expected a mapping of names to plain values"),
])
def test_bad_vary(tmp_path, mutate, expected):
    def put_varied(doc):
        doc["tasks"] = [copy.deepcopy(VARIED)]
        mutate(doc["tasks"][0])

    message = error_for(tmp_path, put_varied)
    assert expected in message, message


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["tasks"][0]["servers"].append("nope"), "task 'price-blue': servers: unknown server 'nope'"),
    (lambda d: d["tasks"][1].update(id="price-blue"), "task 'price-blue': id: duplicate task id"),
    (lambda d: d["tasks"][0].update(id="../etc"), "task '../etc': id"),
    (lambda d: d["tasks"][0].update(id="Upper"), "task 'Upper': id"),
    (lambda d: d["tasks"][0].pop("prompt"), "task 'price-blue'"),
    (lambda d: d["tasks"][0].update(check={"smells_like": "x"}), "task 'price-blue': check: unknown check kind 'smells_like'"),
    (lambda d: d["tasks"][1]["check"]["any"].append({"bogus": 1}), "task 'two-turns': check: unknown check kind 'bogus'"),
    (lambda d: d["tasks"][0].update(split="test"), "task 'price-blue': split"),
    (lambda d: d["tasks"][1].update(reference=[{"answer": "only one"}]), "task 'two-turns': reference: 1 answer step(s) for 2"),
    (lambda d: d["servers"]["shop"].pop("command"), "servers.shop"),
])
def test_bad_task_file(tmp_path, mutate, expected):
    message = error_for(tmp_path, mutate)
    assert expected in message, message


def test_missing_prompt_names_field(tmp_path):
    assert "prompt" in error_for(tmp_path, lambda d: d["tasks"][0].pop("prompt"))


def test_reference_tool_missing_from_server(tmp_path):
    tf = load_tasks(write(tmp_path, GOOD))
    check_reference_tools(tf, {"shop": ["get_price"]})
    with pytest.raises(InputError, match=r"task 'price-blue': reference\[0\]\.tool: 'get_price' is not a tool"):
        check_reference_tools(tf, {"shop": ["search"]})


def test_reference_tool_outside_allowlist(tmp_path):
    doc = copy.deepcopy(GOOD)
    doc["tasks"][0]["tools"] = ["search"]
    tf = load_tasks(write(tmp_path, doc))
    with pytest.raises(InputError, match="not in the task's tools allowlist"):
        check_reference_tools(tf, {"shop": ["get_price", "search"]})


def test_not_yaml(tmp_path):
    (tmp_path / "tasks.yaml").write_text("tasks: [unclosed")
    with pytest.raises(InputError, match="not valid YAML"):
        load_tasks(tmp_path / "tasks.yaml")


def test_config_defaults_and_errors():
    config = load_config({"tasks": "tasks.yaml", "base_model": "bundled:smollm2-135m"})
    assert config["collect"]["concurrency"] >= 1 and config["endpoint"]["base_url"] == ""
    with pytest.raises(InputError, match=r"^cfg.yaml: collect.concurrency: 0 is less than the minimum of 1$"):
        load_config({"tasks": "t", "base_model": "m", "collect": {"concurrency": 0}}, "cfg.yaml")
    with pytest.raises(InputError, match="collect: Additional properties"):
        load_config({"tasks": "t", "base_model": "m", "collect": {"concurency": 3}}, "cfg.yaml")


# --- result, operational and target settings ---------------------------------------------------

def test_settings_split_into_params_and_the_rest():
    config = load_config({"tasks": "tasks.yaml", "base_model": "m",
                          "evaluate": {"endpoints": {"lora": {"base_url": "http://gpu:8000/v1"}}}})
    assert result_settings(config, "collect") == {
        "max_tokens": 512, "max_turns": 8, "samples": 0, "seed": 0, "temperature": 0.7, "truncate": 4000}
    assert untracked_settings(config, "collect") == {"concurrency": 8, "tool_timeout_s": 30, "max_error_rate": 0.5}
    assert result_settings(config, "evaluate", "endpoints") == {"lora": {"base_url": "http://gpu:8000/v1", "model": ""}}
    assert untracked_settings(config, "evaluate", "endpoints", "lora") == {
        "api_key_env": "", "max_retries": 4, "timeout_s": None}
    assert untracked_settings(config, "tasks") == "tasks.yaml"
    assert untracked_settings(config, "curate") == {}
    assert "save_steps" not in result_settings(config, "train") and "run" not in result_settings(config, "train")
    with pytest.raises(ValueError, match="collect.truncate: a result setting"):
        untracked_settings(config, "collect", "truncate")
    with pytest.raises(ValueError, match="evaluate.max_error_rate: an operational setting, never a param"):
        result_settings(config, "evaluate", "max_error_rate")
    # The order of keys in config.yaml is no change.
    shuffled = dict(reversed(list(config["collect"].items())))
    assert repr(result_settings({"collect": shuffled}, "collect")) == repr(result_settings(config, "collect"))


def test_readme_lists_every_operational_setting():
    """README's table of what reruns what names exactly the settings the schemas mark operational."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section_text = readme.split("## Which settings rerun what", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section_text.splitlines() if line.startswith("|")]
    listed = set()
    for row in table[2:]:
        section, _, operational = [cell.strip() for cell in row.strip("|").split("|")]
        prefix = section.strip("`") + "." if section.startswith("`") else ""
        listed |= {prefix + name for name in re.findall(r"`([^`]+)`", operational)}
    kinds = setting_kinds()
    assert listed == {path for path, kind in kinds.items() if kind == "operational"}
    assert {path for path, kind in kinds.items() if kind == "target"} == {"tasks", "evaluate.models", "evaluate.benchmarks", "train.run", "rounds.rounds"}


def write_traces(path, traces):
    path.write_text("".join(json.dumps(t) + "\n" for t in traces))


def test_kept_truncate_changes_only_when_the_output_would(tmp_path):
    raw = tmp_path / "raw.jsonl"
    assert kept_truncate([raw], 4000) == 4000  # not collected yet: the configured cut
    write_traces(raw, [{"truncate": 4000, "longest_tool_result": 700}, {"truncate": 4000, "longest_tool_result": 90}])
    assert kept_truncate([raw], 4000) == 4000
    assert kept_truncate([raw], 1000) == 4000  # no result reaches either cut: the same output
    assert kept_truncate([raw], 700) == 4000
    assert kept_truncate([raw], 699) == 699  # one result is cut now
    write_traces(raw, [{"truncate": 500, "longest_tool_result": 700}])
    assert kept_truncate([raw], 500) == 500 and kept_truncate([raw], 800) == 800
    write_traces(raw, [{"truncate": 500, "longest_tool_result": 300}])
    assert kept_truncate([raw], 800) == 500
    write_traces(raw, [{"longest_tool_result": 300}])  # recorded before traces kept their cut
    assert kept_truncate([raw], 800) == 800
    other = tmp_path / "other.jsonl"
    write_traces(other, [{"truncate": 600, "longest_tool_result": 10}])
    write_traces(raw, [{"truncate": 500, "longest_tool_result": 10}])
    assert kept_truncate([raw, other], 800) == 800  # two cuts
