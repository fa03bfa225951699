"""The report builds from small fixtures: figures present, HTML parses, transcripts shown, text escaped."""

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tracetune.evaluate import score_traces
from tracetune.jsonio import InputError, read_jsonl
from tracetune.report import FIGURES, build_report, verdict

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


class Page(HTMLParser):
    """Collects what the checks need and fails on unbalanced tags."""
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.traces, self.text = [], {}, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images[attrs.get("id")] = attrs["src"]
        if tag == "details" and "trace" in (attrs.get("class") or ""):
            self.traces.append(attrs["id"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}>, open: {self.stack[-3:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


TASKS = {"price-blue": {"capability": "price", "reference": [{"tool": "get_price"}, {"answer": "x"}]},
         "search-docs": {"capability": "site", "reference": [{"tool": "search"}, {"answer": "x"}]}}
REORDERED = {"per_task": {"k": 1, "n": 2, "rate": 0.5, "ci95": [0.09, 0.91]}, "delta_points": -50.0,
             "flipped": ["search-docs"], "first_call": {"k": 2, "n": 2, "rate": 1.0, "ci95": [0.34, 1.0]}}


def make_inputs(tmp_path, lora_traces=None):
    paths = {"summaries": [], "results": [], "losses": []}
    for model in ("base", "lora"):
        traces = [t for _, t in read_jsonl(FIXTURES / f"{model}.results.jsonl")]
        if model == "lora" and lora_traces is not None:
            traces = lora_traces(traces)
        d = tmp_path / "eval" / model
        d.mkdir(parents=True)
        with open(d / "results.jsonl", "w") as f:
            f.writelines(json.dumps(t) + "\n" for t in traces)
        summary = {"model": model, "samples": 2} | score_traces(traces, TASKS)
        summary["reordered"] = REORDERED if model == "lora" else None
        (d / "summary.json").write_text(json.dumps(summary))
        # the held-out loss comes from its own job's file, beside the evaluation
        (d / "loss.json").write_text(json.dumps({"loss": 1.9 if model == "base" else 0.7, "rows": 8, "tokens": 400}))
        paths["losses"].append(str(d / "loss.json"))
        paths["summaries"].append(str(d / "summary.json"))
        paths["results"].append(str(d / "results.jsonl"))
    (tmp_path / "adapters" / "lora").mkdir(parents=True)
    shutil.copy(FIXTURES / "metrics.jsonl", tmp_path / "adapters" / "lora" / "metrics.jsonl")
    out = tmp_path / "reports"
    return paths | {
        "metrics": [str(tmp_path / "adapters" / "lora" / "metrics.jsonl")],
        "curation": str(FIXTURES / "curation.json"), "dataset": str(FIXTURES / "dataset.json"),
        "html_path": str(out / "report.html"), "md_path": str(out / "report.md"),
        "figure_paths": {name: str(out / f"{name}.png") for name in FIGURES},
    }


@pytest.fixture
def built(tmp_path):
    inputs = make_inputs(tmp_path)
    build_report(**inputs)
    return inputs


def parse(path) -> Page:
    page = Page()
    page.feed(Path(path).read_text(encoding="utf-8"))
    page.close()
    assert page.stack == [], f"unclosed tags: {page.stack}"
    return page


def test_html_is_self_contained_and_has_the_figures(built):
    page = parse(built["html_path"])
    for name in FIGURES:
        src = page.images[f"fig-{name}"]
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    html = Path(built["html_path"]).read_text()
    assert "<link" not in html and "<script" not in html and "http://" not in html.split("<body>")[0]


def test_html_says_which_model_is_better_and_compares_them(built):
    text = " ".join(parse(built["html_path"]).text)
    assert "lora is better than base: 75% vs 0% of eval samples solved" in text
    assert "held-out loss" in text and "0.700" in text and "1.900" in text
    assert "tool calls valid" in text
    assert "check_failed: 3" in text and "rows: 40" in text  # curation and dataset counts


def test_html_shows_every_transcript_escaped(built):
    page = parse(built["html_path"])
    assert len(page.traces) == 8  # 4 traces per model
    html = Path(built["html_path"]).read_text()
    # Tool output and prompts with markup are shown as text, never injected.
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "<b>install</b>" not in html and "&lt;b&gt;install&lt;/b&gt;" in html
    text = "".join(page.text)
    assert "I need the price tool." in text  # reasoning
    assert '"item": "blue widget"' in text  # pretty-printed arguments
    assert '{"item": "blue widget"' in text  # the unparsable call shown verbatim
    assert "answer lacks ['12.50']" in text  # check verdict detail
    assert "APIConnectionError: Connection error." in text


def test_markdown_links_the_figures_beside_it(built):
    md = Path(built["md_path"]).read_text()
    assert "**lora is better than base" in md
    for name in FIGURES:
        assert f"![{name}]({name}.png)" in md
        assert Path(built["figure_paths"][name]).read_bytes()[:4] == b"\x89PNG"
    assert "| price-blue |" in md and "| samples solved | 0% [0%, 49%] (0/4) | 75% [30%, 95%] (3/4) |" in md


def test_report_says_plainly_when_tuned_is_not_better(tmp_path):
    # The tuned model fails every task: the report must lead with that.
    def all_failed(traces):
        return [t | {"check": {"passed": False, "detail": "answer lacks ['x']"}} for t in traces]

    inputs = make_inputs(tmp_path, all_failed)
    build_report(**inputs)
    text = " ".join(parse(inputs["html_path"]).text)
    first_verdict = text.index("NOT better")
    assert first_verdict < text.index("Base vs tuned")
    assert "lora is NOT better than base: it is no better than base (0% vs 0% of eval samples solved)." in text
    assert "**lora is NOT better than base" in Path(inputs["md_path"]).read_text()


def test_verdict_flags_overlapping_intervals():
    def summary(k, n):
        from tracetune.evaluate import rate
        return {"success": {"per_sample": rate(k, n)}}

    assert verdict("base", "lora", {"base": summary(0, 20), "lora": summary(18, 20)})["conclusive"]
    v = verdict("base", "lora", {"base": summary(1, 4), "lora": summary(2, 4)})
    assert v["better"] and not v["conclusive"] and "not conclusive" in v["text"]


def test_missing_baseline_is_one_line_error(tmp_path):
    inputs = make_inputs(tmp_path)
    with pytest.raises(InputError, match="baseline model 'qwen' has no summary"):
        build_report(**inputs, baseline="qwen")
    assert not Path(inputs["html_path"]).exists()


def test_report_shows_tool_selection_capabilities_and_the_reordering_check(built):
    text = " ".join(parse(built["html_path"]).text)
    assert "first tool call names the first tool of the plan" in text
    assert "tasks solved with the tool lists reversed" in text and "-50 points; flipped: search-docs" in text
    md = Path(built["md_path"]).read_text()
    assert "## Per capability (tasks solved)" in md
    base, lora = (json.loads(Path(p).read_text()) for p in built["summaries"])
    for cap in ("price", "site"):
        row = f"| {cap} | {_pct(base['capabilities'][cap])} | {_pct(lora['capabilities'][cap])} |"
        assert row in md, md
    assert "| tasks solved with the tool lists reversed | not run |" in md


def _pct(r):
    lo, hi = r["ci95"]
    return f"{r['rate']:.0%} [{lo:.0%}, {hi:.0%}] ({r['k']}/{r['n']})"


def test_a_paired_test_sees_a_gain_that_overlapping_intervals_hide():
    from tracetune.report import mcnemar_p, paired

    def summary(solved: set[str]):
        return {"tasks": [{"task_id": f"t{i:02d}", "solved": f"t{i:02d}" in solved} for i in range(60)]}

    both = {f"t{i:02d}" for i in range(20)}
    base, tuned = summary(both | {"t20"}), summary(both | {f"t{i:02d}" for i in range(21, 30)})
    result = paired("base", "lora", {"base": base, "lora": tuned})
    assert result["tasks"] == 60 and result["lost"] == ["t20"] and len(result["gained"]) == 9
    assert result["p_value"] == pytest.approx(2 * 11 / 2**10)  # exact: P(X <= 1 | n=10, 1/2), both tails
    assert result["significant"] and "solves 9 that base does not and misses 1" in result["text"]
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) == 1.0 and mcnemar_p(5, 0) == pytest.approx(0.0625)


def test_html_and_markdown_name_the_tasks_that_flipped(built):
    text = " ".join(parse(built["html_path"]).text)
    assert "Paired on the same 2 eval tasks: lora solves" in text
    assert "solved only by lora: price-blue" in text and "solved only by base: none" in text
    assert "- solved only by lora: price-blue" in Path(built["md_path"]).read_text()


def test_the_report_gives_each_rounds_pass_rate_and_pairs_every_model(tmp_path):
    inputs = make_inputs(tmp_path)
    for model in ("lora-round1",):  # a round: the tuned model's results again, as another run
        d = tmp_path / "eval" / model
        shutil.copytree(tmp_path / "eval" / "lora", d)
        inputs["summaries"].append(str(d / "summary.json"))
        inputs["results"].append(str(d / "results.jsonl"))
    round_json = tmp_path / "round.json"
    round_json.write_text(json.dumps({"run": "lora-round1", "round": 1, "sampled_from": "lora", "sampled": 8,
                                      "passed": 6, "kept": 5, "pass_rate": 0.75, "train_rows": 40, "tasks": {}}))
    build_report(**inputs, rounds=[str(round_json)])
    md = Path(inputs["md_path"]).read_text()
    assert "| lora-round1 | lora | 8 | 6 (75%) | 5 | 40 |" in md
    pairs = [line for line in md.splitlines() if line.startswith("Paired on the same")]
    assert [p.split(": ")[1].split(" solves")[0] for p in pairs] == ["lora", "lora-round1", "lora-round1"]
    assert "lora-round1 solves 0 that lora does not and misses 0" in md
    assert "Rejection-sampling rounds" in " ".join(parse(inputs["html_path"]).text)


def test_the_report_gives_each_benchmark_per_category_beside_the_task_eval(tmp_path):
    inputs = make_inputs(tmp_path)
    files = []
    for model, passed in (("base", 0), ("lora", 3)):
        path = tmp_path / "eval" / model / "bfcl.json"
        path.write_text(json.dumps({"model": model, "benchmark": "bfcl", "entries_per_category": 4, "categories": {
            "simple_python": {"n": 4, "passed": passed, "accuracy": passed / 4},
            "irrelevance": {"n": 4, "passed": 4 - passed, "accuracy": (4 - passed) / 4}}}))
        files.append(str(path))
    build_report(**inputs, benchmarks=files)
    md = Path(inputs["md_path"]).read_text()
    assert "## Benchmark: bfcl (accuracy per category)" in md
    assert "| simple_python | 0.00 (0/4) | 0.75 (3/4) |" in md
    assert "| irrelevance | 1.00 (4/4) | 0.25 (1/4) |" in md
    html = parse(inputs["html_path"])
    assert "Benchmark: bfcl (accuracy per category)" in " ".join(html.text)
