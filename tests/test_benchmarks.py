"""The BFCL stage (tracetune.benchmarks) on the bfcl-eval package's own data and checker: its
verdicts follow BFCL's rules, the rule's files from a scripted endpoint, and the preflight line."""

import json
from pathlib import Path

import pytest
import yaml
from fakes import FakeEndpoint

from tracetune.agent import Settings
from tracetune.benchmarks import bfcl_items, bfcl_summary, bfcl_verdict, benchmark_to_files
from tracetune.jsonio import InputError, read_jsonl
from tracetune.preflight import check_inputs
from tracetune.runtime.endpoint import Endpoint


def calls(*pairs, raw=None):
    """An assistant message calling each (name, arguments); `raw` replaces the argument text."""
    return {"role": "assistant", "content": "", "tool_calls": [
        {"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": raw or json.dumps(args)}}
        for i, (name, args) in enumerate(pairs)]}


def answer(text):
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def items():
    return {i["id"]: i for i in bfcl_items(["simple_python", "parallel", "irrelevance", "live_relevance"], 2)}


def test_items_are_the_first_entries_with_their_possible_answers(items):
    assert list(items) == ["simple_python_0", "simple_python_1", "parallel_0", "parallel_1",
                           "irrelevance_0", "irrelevance_1", "live_relevance_0-0-0", "live_relevance_1-1-0"]
    assert items["simple_python_1"]["answer"] == [{"math.factorial": {"number": [5]}}]
    assert items["irrelevance_0"]["answer"] is None
    assert items["simple_python_1"]["messages"][0]["role"] == "user"


def test_ast_categories_are_judged_by_bfcls_checker(items):
    factorial = items["simple_python_1"]  # the function is math.factorial, offered as math_factorial
    assert bfcl_verdict(factorial, calls(("math_factorial", {"number": 5}))) == (True, "")
    passed, why = bfcl_verdict(factorial, calls(("math_factorial", {"number": 6})))
    assert not passed and "number" in why
    assert bfcl_verdict(factorial, answer("5! is 120.")) == (False, "no function call")
    assert bfcl_verdict(factorial, calls(("math_factorial", {}), raw="{number: 5")) == (
        False, "arguments are not a JSON object")
    assert not bfcl_verdict(factorial, calls(("math_factorial", {"number": 5}), ("math_factorial", {"number": 5})))[0]
    # Parallel calls pass in any order, and fail when one is missing.
    songs = [("spotify_play", {"artist": "Maroon 5", "duration": 15}),
             ("spotify_play", {"artist": "Taylor Swift", "duration": 20})]
    assert bfcl_verdict(items["parallel_0"], calls(*songs))[0]
    assert not bfcl_verdict(items["parallel_0"], calls(songs[0]))[0]


def test_irrelevance_passes_without_a_call_and_relevance_with_one(items):
    bmi = calls(("determine_body_mass_index", {"weight": 70, "height": 1.8}))
    assert bfcl_verdict(items["irrelevance_0"], answer("The area is 25 square meters.")) == (True, "")
    assert bfcl_verdict(items["irrelevance_0"], bmi) == (False, "called a function where none fits")
    # A call whose arguments cannot be read is no call, as BFCL's decoder sees it.
    assert bfcl_verdict(items["irrelevance_0"], calls(("determine_body_mass_index", {}), raw="not json"))[0]
    relevant = items["live_relevance_0-0-0"]
    name = relevant["functions"][0]["name"].replace(".", "_")
    assert bfcl_verdict(relevant, calls((name, {})))[0]
    assert bfcl_verdict(relevant, answer("Sure.")) == (False, "no function call")


def test_summary_gives_accuracy_per_category_in_order():
    results = [{"category": "irrelevance", "passed": True}, {"category": "simple_python", "passed": False},
               {"category": "simple_python", "passed": True}]
    assert bfcl_summary(results, ["simple_python", "irrelevance", "multiple"]) == {
        "simple_python": {"n": 2, "passed": 1, "accuracy": 0.5},
        "irrelevance": {"n": 1, "passed": 1, "accuracy": 1.0},
        "multiple": {"n": 0, "passed": 0, "accuracy": None}}


def test_benchmark_rule_asks_each_entry_with_its_functions_as_tools(tmp_path, caplog):
    """A scripted model that knows one answer: factorial questions get the right call, the rest text.
    The log counts the entries as they finish."""

    def policy(messages, tools):
        if "factorial" in messages[-1]["content"]:
            return calls(("math_factorial", {"number": 5}))
        return answer("I cannot help with that.")

    caplog.set_level("INFO", logger="tracetune.benchmarks")
    paths = {"results_path": str(tmp_path / "bfcl.jsonl"), "summary_path": str(tmp_path / "bfcl.json")}
    with FakeEndpoint(policy, sees_tools=True) as fake:
        summary = benchmark_to_files("bfcl", Endpoint(fake.base_url, "fake", timeout_s=10), Settings(concurrency=2),
                                     categories=["simple_python", "irrelevance"], entries=2, model="lora", **paths)
    assert summary == {"model": "lora", "benchmark": "bfcl", "entries_per_category": 2, "categories": {
        "simple_python": {"n": 2, "passed": 1, "accuracy": 0.5},
        "irrelevance": {"n": 2, "passed": 2, "accuracy": 1.0}}}
    sent = {r["messages"][0]["content"]: r for r in fake.requests}
    factorial = sent["Calculate the factorial of 5 using math functions."]
    assert [t["function"]["name"] for t in factorial["tools"]] == ["math_factorial"]
    assert factorial["tools"][0]["function"]["parameters"]["type"] == "object"
    assert factorial["temperature"] == 0.7 and factorial["max_tokens"] == Settings().max_tokens
    results = {r["id"]: r for _, r in read_jsonl(paths["results_path"])}
    assert results["simple_python_1"]["calls"] == [{"name": "math_factorial", "arguments": '{"number": 5}'}]
    assert results["simple_python_0"] | {"content": None} == {
        "id": "simple_python_0", "category": "simple_python", "passed": False, "why": "no function call",
        "content": None, "calls": []}
    assert json.loads((tmp_path / "bfcl.json").read_text()) == summary
    progress = [r.getMessage() for r in caplog.records if "done (" in r.getMessage()]
    assert [line.split(" (")[0] for line in progress] == [f"bfcl: {n}/4 done" for n in range(1, 5)]
    assert "bfcl: 4/4 done" in progress[-1] and any("simple_python_1: passed" in line for line in progress)


def test_a_benchmark_that_is_not_installed_is_one_line_before_any_job(monkeypatch, tmp_path):
    """(An unknown benchmark name is the schema's line: tests/test_workflow.py's bad inputs.)"""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bfcl_eval" else real(name, *a))
    config = yaml.safe_load(Path("config.yaml").read_text())
    config["evaluate"]["benchmarks"] = ["bfcl"]
    with pytest.raises(InputError, match=r"^config.yaml: evaluate.benchmarks: bfcl needs the bfcl-eval package"):
        check_inputs(config, tmp_path)


@pytest.mark.slow
def test_the_embedded_model_served_by_llama_cpp_answers_bfcl_entries(tmp_path, bundled_gguf_model):
    """Real requests with BFCL's function schemas as tools, to the workflow's own server kind: the
    base model answers in text (as measured, ../shared/notes/bfcl.md), which fails the AST
    categories and passes irrelevance, and every entry gets a verdict."""
    from tracetune.runtime.serving import served_model

    paths = {"results_path": str(tmp_path / "bfcl.jsonl"), "summary_path": str(tmp_path / "bfcl.json")}
    with served_model(bundled_gguf_model, timeout_s=120) as served:
        summary = benchmark_to_files("bfcl", Endpoint(served.base_url, served.model), Settings(temperature=0.0, max_tokens=64),
                                     categories=["simple_python", "irrelevance"], entries=2, model="base", **paths)
    categories = summary["categories"]
    assert categories["simple_python"]["n"] == categories["irrelevance"]["n"] == 2
    results = [r for _, r in read_jsonl(paths["results_path"])]
    assert all(r["passed"] == (not r["calls"] if r["category"] == "irrelevance" else r["why"] == "") for r in results)
    assert any(r["content"] for r in results)


def test_the_schema_names_the_benchmarks_and_categories_the_module_runs():
    """The config schema validates names; the Snakefile's wildcard and the module take them from BENCHMARKS."""
    from tracetune.benchmarks import BENCHMARKS, BFCL_CATEGORIES
    from tracetune.runtime.settings import setting_schema

    assert setting_schema("evaluate", "benchmarks")["items"]["enum"] == list(BENCHMARKS)
    assert setting_schema("evaluate", "bfcl", "categories")["items"]["enum"] == list(BFCL_CATEGORIES)
