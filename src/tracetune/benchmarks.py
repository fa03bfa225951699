"""Standard benchmarks beside the task eval: the Berkeley Function Calling Leaderboard (BFCL)'s
categories that need no execution and no network, from the `bfcl-eval` package's own data and
checker, asked of the served model through the OpenAI API like the task eval. They tell whether
tuning on one's own tools cost general tool use (calling foreign APIs right, and not calling
when no function fits). Benchmark data is only ever read here: nothing of it reaches training."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import sys
import tempfile
import types
from functools import cache

from tracetune.jsonio import InputError, write_json, write_jsonl
from tracetune.parsing import call_arguments, normalize_assistant
from tracetune.runtime.endpoint import request_timeout

log = logging.getLogger(__name__)

BENCHMARKS = ("bfcl",)

# Category → what passes: BFCL's AST checker against the possible answers, no call (irrelevance:
# no function fits), or any call (relevance). Java and JavaScript are left out: their answers
# are checked as those languages' literals, which a JSON tool call does not give.
BFCL_CATEGORIES = {
    "simple_python": "ast", "multiple": "ast", "parallel": "ast", "parallel_multiple": "ast",
    "live_simple": "ast", "live_multiple": "ast", "live_parallel": "ast", "live_parallel_multiple": "ast",
    "irrelevance": "no_call", "live_irrelevance": "no_call", "live_relevance": "call",
}
# The checker looks a model's settings up by name only to learn that dotted function names (math.factorial)
# were sent as math_factorial, as OpenAI-style tools require; ours always are.
BFCL_MODEL_NAME = "tracetune"


def check_benchmarks_installed(benchmarks: list[str], where: str = "config.yaml") -> None:
    """Before any job: each named benchmark's package is importable."""
    for name in benchmarks:
        if name == "bfcl" and importlib.util.find_spec("bfcl_eval") is None:
            raise InputError(f"{where}: evaluate.benchmarks: bfcl needs the bfcl-eval package, which is not "
                             "installed (pip install -e '.[bfcl]' && pip install --no-deps bfcl-eval==2026.3.23; "
                             "make install does both)")


@cache
def bfcl() -> types.SimpleNamespace:
    """bfcl-eval's loaders, tool converter and checker. Its model registry imports every vendor's
    SDK (anthropic, cohere, boto3, …) and the checker reads one flag from it, so the registry is
    replaced by a one-entry stand-in; the package is installed without those SDKs
    (see the Makefile). On import it makes result/ and score/ folders under BFCL_PROJECT_ROOT
    (default: its own install folder): they go to a temporary folder instead."""
    os.environ.setdefault("BFCL_PROJECT_ROOT", tempfile.mkdtemp(prefix="bfcl-"))
    registry = types.ModuleType("bfcl_eval.constants.model_config")
    registry.MODEL_CONFIG_MAPPING = {BFCL_MODEL_NAME: types.SimpleNamespace(underscore_to_dot=True)}
    sys.modules.setdefault(registry.__name__, registry)
    from bfcl_eval.constants.enums import Language, ModelStyle
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    from bfcl_eval.model_handler.utils import convert_to_tool
    from bfcl_eval.utils import (is_empty_output, is_function_calling_format_output, load_dataset_entry,
                                 load_ground_truth_entry)

    return types.SimpleNamespace(
        entries=load_dataset_entry, answers=load_ground_truth_entry, is_empty=is_empty_output,
        is_call_list=is_function_calling_format_output,
        tools=lambda functions: convert_to_tool(functions, GORILLA_TO_OPENAPI, ModelStyle.OPENAI_COMPLETIONS),
        check=lambda functions, calls, answer, category: ast_checker(
            functions, calls, answer, Language.PYTHON, category, BFCL_MODEL_NAME))


def bfcl_items(categories: list[str], entries: int | None) -> list[dict]:
    """The first `entries` of each category, with their possible answers (AST categories)."""
    items = []
    for category in categories:
        chosen = bfcl().entries(category)[:entries]
        answers = ({a["id"]: a["ground_truth"] for a in bfcl().answers(category)}
                   if BFCL_CATEGORIES[category] == "ast" else {})
        items += [{"id": e["id"], "category": category, "messages": e["question"][0], "functions": e["function"],
                   "answer": answers.get(e["id"])} for e in chosen]
    return items


def decoded_calls(message: dict) -> list[dict] | None:
    """The message's tool calls as BFCL decodes them ({name: arguments}, in order), None when an
    argument text is not a JSON object (BFCL's decoder fails on it)."""
    calls = []
    for call in message.get("tool_calls") or []:
        arguments = call_arguments(call["function"]["arguments"])
        if arguments is None:
            return None
        calls.append({call["function"]["name"]: arguments})
    return calls


def bfcl_verdict(item: dict, message: dict) -> tuple[bool, str]:
    """(passed, why not) by BFCL's rules: a call cut off at the token limit or with unreadable
    arguments is no call; irrelevance passes on no call, relevance on any call, the rest by the AST checker."""
    calls = decoded_calls(message)
    called = calls is not None and not bfcl().is_empty(calls)
    kind = BFCL_CATEGORIES[item["category"]]
    if kind == "no_call":
        return (not called, "" if not called else "called a function where none fits")
    if kind == "call":
        return (called, "" if called else "no function call")
    if not called:
        return (False, "no function call" if calls is not None else "arguments are not a JSON object")
    if not bfcl().is_call_list(calls):
        return (False, "calls are not in BFCL's format")
    result = bfcl().check(item["functions"], calls, item["answer"], item["category"])
    return (result["valid"], "" if result["valid"] else "; ".join(map(str, result["error"]))[:300])


async def ask_bfcl(items: list[dict], endpoint, settings) -> list[dict]:
    """One request per item with the item's functions as tools, `settings.concurrency` at a time."""
    gate, done = asyncio.Semaphore(settings.concurrency), 0

    async def ask(client, item: dict) -> dict:
        nonlocal done
        async with gate:
            response = await client.chat.completions.create(
                model=endpoint.model, messages=item["messages"], tools=bfcl().tools(item["functions"]),
                tool_choice="auto", temperature=settings.temperature, seed=settings.seed,
                max_tokens=settings.max_tokens)
        message = normalize_assistant(response.choices[0].message.model_dump(), "call_")
        passed, why = bfcl_verdict(item, message)
        done += 1
        log.info("bfcl: %d/%d done (%s: %s)", done, len(items), item["id"], "passed" if passed else "failed")
        return {"id": item["id"], "category": item["category"], "passed": passed, "why": why,
                "content": message["content"], "calls": [c["function"] for c in message.get("tool_calls", [])]}

    # Closed inside the loop: a client left to the garbage collector closes on a dead loop.
    async with endpoint.client() as client:
        client = client.with_options(timeout=await request_timeout(client, endpoint, settings))
        return await asyncio.gather(*(ask(client, item) for item in items))


def bfcl_summary(results: list[dict], categories: list[str]) -> dict:
    """Accuracy per category, in the configured order."""
    summary = {}
    for category in categories:
        passed = [r["passed"] for r in results if r["category"] == category]
        summary[category] = {"n": len(passed), "passed": sum(passed),
                             "accuracy": round(sum(passed) / len(passed), 4) if passed else None}
    return summary


def benchmark_to_files(benchmark: str, endpoint, settings, *, categories: list[str], entries: int | None,
                       model: str, results_path: str, summary_path: str) -> dict:
    """The benchmark rule: per-entry verdicts to results_path, accuracy per category to summary_path."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}")
    items = bfcl_items(categories, entries)
    log.info("bfcl: %d entries of %d categories for %s", len(items), len(categories), model)
    results = asyncio.run(ask_bfcl(items, endpoint, settings))
    summary = {"model": model, "benchmark": benchmark, "entries_per_category": entries,
               "categories": bfcl_summary(results, categories)}
    write_jsonl(results_path, results)
    write_json(summary_path, summary)
    return summary
