"""The evaluation report: base vs tuned side by side, plots, a per-task table and a viewer of every
eval transcript, as self-contained HTML (inline CSS, base64 PNGs) and as Markdown with PNGs beside it."""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
import os
from importlib import resources
from pathlib import Path

import jinja2

from tracetune.jsonio import InputError, atomic_path, read_json, read_jsonl, write_text

FIGURES = ("loss_curve", "success_per_task", "tool_validity")


# --- inputs ------------------------------------------------------------------------------------

def model_of(path: str | os.PathLike) -> str:
    """data/eval/{model}/summary.json → model; data/adapters/{run}/metrics.jsonl → run."""
    return Path(path).parent.name


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Training-loss points: the metric lines that carry both a step and a loss."""
    return [m for _, m in read_jsonl(path)
            if isinstance(m.get("step"), (int, float)) and isinstance(m.get("loss"), (int, float))]


def load_inputs(summaries, results, metrics=(), curation=None, dataset=None, losses=(), rounds=(),
                benchmarks=()) -> dict:
    data = {
        "rounds": [read_json(p) for p in rounds],
        "benchmarks": [read_json(p) for p in benchmarks],  # data/eval/{model}/{benchmark}.json
        "summaries": {model_of(p): read_json(p) for p in summaries},
        "results": {model_of(p): [t for _, t in read_jsonl(p)] for p in results},
        "metrics": {model_of(p): read_metrics(p) for p in metrics},
        "curation": read_json(curation) if curation else None,
        "dataset": read_json(dataset) if dataset else None,
    }
    if not data["summaries"]:
        raise InputError("report: no evaluation summaries given")
    for path in losses:  # data/eval/{model}/loss.json, made beside the evaluation
        data["summaries"][model_of(path)]["heldout_loss"] = read_json(path)
    return data


# --- verdict -------------------------------------------------------------------------------------

def verdict(baseline: str, tuned: str, summaries: dict) -> dict:
    """Plain words on whether `tuned` beats `baseline` on eval-task success (per sample)."""
    b, t = summaries[baseline]["success"]["per_sample"], summaries[tuned]["success"]["per_sample"]
    rb, rt = b["rate"] or 0.0, t["rate"] or 0.0
    if rt > rb:
        separated = t["ci95"][0] > b["ci95"][1]
        text = (f"{tuned} is better than {baseline}: {rt:.0%} vs {rb:.0%} of eval samples solved"
                + ("." if separated else ", but the 95 % intervals overlap, so the gain is not conclusive."))
        return {"tuned": tuned, "better": True, "conclusive": separated, "text": text}
    word = "worse than" if rt < rb else "no better than"
    text = f"{tuned} is NOT better than {baseline}: it is {word} {baseline} ({rt:.0%} vs {rb:.0%} of eval samples solved)."
    return {"tuned": tuned, "better": False, "conclusive": False, "text": text}


def mcnemar_p(gained: int, lost: int) -> float:
    """Two-sided exact McNemar test: the chance of a split of the discordant tasks at least this
    uneven if either model were as likely to win each one (a binomial test at 1/2)."""
    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(gained, lost) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(baseline: str, tuned: str, summaries: dict) -> dict:
    """The two models on the same eval tasks: which flipped either way (solved by one, not the
    other), and whether the flips lean one way more than chance would (mcnemar_p). Two intervals
    overlap long before a paired test on the same tasks gives up."""
    solved = {m: {t["task_id"]: t["solved"] for t in summaries[m].get("tasks") or []} for m in (baseline, tuned)}
    common = sorted(set(solved[baseline]) & set(solved[tuned]))
    gained = [t for t in common if solved[tuned][t] and not solved[baseline][t]]
    lost = [t for t in common if solved[baseline][t] and not solved[tuned][t]]
    p = mcnemar_p(len(gained), len(lost))
    text = (f"Paired on the same {len(common)} eval tasks: {tuned} solves {len(gained)} that {baseline} does not "
            f"and misses {len(lost)} that {baseline} solves (exact McNemar test, p = {p:.3g}: "
            + ("a real difference at the 5 % level)." if p < 0.05 else "not significant at the 5 % level)."))
    return {"baseline": baseline, "tuned": tuned, "tasks": len(common), "gained": gained, "lost": lost,
            "p_value": p, "significant": p < 0.05, "text": text}


# --- figures -------------------------------------------------------------------------------------

def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on build machines
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(metrics: dict[str, list[dict]]) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for run, points in metrics.items():
        ax.plot([p["step"] for p in points], [p["loss"] for p in points], marker=".", label=run)
    if not any(metrics.values()):
        ax.text(0.5, 0.5, "no training metrics", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    if any(metrics.values()):
        ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def grouped_bars(groups: list[str], series: dict[str, dict], *, ylabel: str, title: str,
                 figsize: tuple[float, float], rotation: int = 0) -> bytes:
    """One bar per series in each group; series: label -> {"rates": [...], "errs": [[lo], [hi]] | None}."""
    plt = _pyplot()
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=figsize)
    for i, (label, bars) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(groups))], bars["rates"], width,
               yerr=bars.get("errs"), capsize=3, label=label)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(groups))], groups,
                  rotation=rotation, ha="right" if rotation else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_success_per_task(models: list[str], summaries: dict) -> bytes:
    tasks = task_ids(models, summaries)
    series = {}
    for model in models:
        rows = {r["task_id"]: r for r in summaries[model]["tasks"]}
        series[model] = {"rates": [(rows[t]["success_rate"] or 0.0) if t in rows else 0.0 for t in tasks]}
    return grouped_bars(tasks, series, ylabel="success rate", title="Success per eval task",
                        figsize=(max(6.4, 0.6 * len(tasks) * len(models) + 2), 3.8), rotation=40)


def plot_tool_validity(models: list[str], summaries: dict) -> bytes:
    measures = ("parsable", "known_tool", "valid")
    series = {}
    for model in models:
        calls = summaries[model]["tool_calls"]
        rates = [calls[m]["rate"] or 0.0 for m in measures]
        errs = [[r - calls[m]["ci95"][0] for r, m in zip(rates, measures)],
                [calls[m]["ci95"][1] - r for r, m in zip(rates, measures)]]
        series[f"{model} ({calls['calls']} calls)"] = {"rates": rates, "errs": errs if calls["calls"] else None}
    return grouped_bars(["parsable JSON", "known tool", "schema-valid"], series, ylabel="share of tool calls",
                        title="Tool-call validity (95 % CI)", figsize=(6.4, 3.6))


def figures(models: list[str], data: dict) -> dict[str, bytes]:
    return {
        "loss_curve": plot_loss_curve(data["metrics"]),
        "success_per_task": plot_success_per_task(models, data["summaries"]),
        "tool_validity": plot_tool_validity(models, data["summaries"]),
    }


# --- tables ----------------------------------------------------------------------------------------

def task_ids(models: list[str], summaries: dict) -> list[str]:
    seen: dict[str, None] = {}
    for model in models:
        for row in summaries[model]["tasks"]:
            seen.setdefault(row["task_id"])
    return list(seen)


def pct(r: dict | None) -> str:
    if not r or r.get("rate") is None:
        return "–"
    lo, hi = r["ci95"]
    return f"{r['rate']:.0%} [{lo:.0%}, {hi:.0%}] ({r['k']}/{r['n']})"


def num(x, fmt="{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def comparison_rows(models: list[str], summaries: dict) -> list[tuple[str, list[str]]]:
    """(measure, one cell per model) for the side-by-side table."""
    def cells(get):
        return [get(summaries[m]) for m in models]

    def loss(s):
        h = s.get("heldout_loss") or {}
        return num(h.get("loss"), "{:.3f}") + (f" ({h['tokens']} tokens)" if h.get("tokens") else "")

    def reordered(s):
        r = s.get("reordered")
        if not r:
            return "not run"
        flipped = f"; flipped: {', '.join(r['flipped'])}" if r["flipped"] else ""
        return f"{pct(r['per_task'])}, {r['delta_points']:+.0f} points{flipped}"

    return [
        ("tasks solved (≥ half the samples)", cells(lambda s: pct(s["success"]["per_task"]))),
        ("samples solved", cells(lambda s: pct(s["success"]["per_sample"]))),
        ("first tool call names the first tool of the plan", cells(lambda s: pct(s["tool_selection"]["first_call"]))),
        ("every tool of the plan called", cells(lambda s: pct(s["tool_selection"]["all_tools"]))),
        ("tasks solved with the tool lists reversed", cells(reordered)),
        ("tool calls", cells(lambda s: str(s["tool_calls"]["calls"]))),
        ("tool calls valid (JSON, known tool, schema)", cells(lambda s: pct(s["tool_calls"]["valid"]))),
        ("tool calls parsable", cells(lambda s: pct(s["tool_calls"]["parsable"]))),
        ("mean turns", cells(lambda s: num(s.get("mean_turns")))),
        ("latency mean / p50 / p95 (s)", cells(lambda s: " / ".join(
            num(s["latency"].get(k), "{:.1f}") for k in ("mean_s", "p50_s", "p95_s")))),
        ("held-out loss (eval.parquet)", cells(loss)),
        ("errors", cells(lambda s: ", ".join(f"{k}: {v}" for k, v in s.get("errors", {}).items()) or "none")),
    ]


def capability_table(models: list[str], summaries: dict) -> list[tuple[str, list[str]]]:
    """(capability, tasks solved per model), over the capabilities any model was scored on."""
    names = sorted({cap for m in models for cap in summaries[m]["capabilities"]})
    return [(cap, [pct(summaries[m]["capabilities"].get(cap)) for m in models]) for cap in names]


def task_table(models: list[str], summaries: dict) -> list[tuple[str, list[str]]]:
    rows = []
    for task in task_ids(models, summaries):
        cells = []
        for model in models:
            row = next((r for r in summaries[model]["tasks"] if r["task_id"] == task), None)
            cells.append("–" if row is None else
                         f"{'✔' if row['solved'] else '✘'} {row['passed']}/{row['samples']}, "
                         f"{row['valid_calls']}/{row['tool_calls']} calls valid, {num(row['mean_turns'], '{:.1f}')} turns")
        rows.append((task, cells))
    return rows


ROUND_COLUMNS = ("run", "sampled from", "samples", "passed the check", "kept", "train rows")


def rounds_table(rounds: list[dict]) -> list[list[str]]:
    """Each rejection-sampling round (tracetune.rounds): its pass rate on the train tasks it sampled."""
    return [[r["run"], r["sampled_from"], str(r["sampled"]), f"{r['passed']} ({r['pass_rate']:.0%})", str(r["kept"]),
             str(r["train_rows"])] for r in sorted(rounds, key=lambda r: r["round"])]


def benchmark_tables(models: list[str], benchmarks: list[dict]) -> dict[str, list[tuple[str, list[str]]]]:
    """Per benchmark: each category's accuracy per model (tracetune.benchmarks), in model order."""
    by_name: dict[str, dict[str, dict]] = {}
    for summary in benchmarks:
        by_name.setdefault(summary["benchmark"], {})[summary["model"]] = summary["categories"]
    tables = {}
    for name, per_model in by_name.items():
        categories = list(dict.fromkeys(c for m in models for c in per_model.get(m, {})))
        tables[name] = [(c, [_accuracy_cell(per_model.get(m, {}).get(c)) for m in models]) for c in categories]
    return tables


def _accuracy_cell(category: dict | None) -> str:
    if not category or not category["n"]:
        return "–"
    return f"{category['accuracy']:.2f} ({category['passed']}/{category['n']})"


def counts(doc: dict | None) -> list[tuple[str, str]]:
    """The scalar counts of a stage report (curation.json, dataset.json), flattened one level."""
    if not doc:
        return []
    out = []
    for key, value in doc.items():
        if isinstance(value, (int, float, str, bool)):
            out.append((key, str(value)))
        elif isinstance(value, dict) and all(isinstance(v, (int, float, str, bool)) for v in value.values()):
            out.append((key, ", ".join(f"{k}: {v}" for k, v in value.items())))
    return out


# --- transcripts ---------------------------------------------------------------------------------

def pretty_arguments(arguments) -> str:
    """Arguments as indented JSON; unparsable ones shown verbatim (they are part of the story)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return json.dumps(arguments, indent=2, ensure_ascii=False)


def transcript(trace: dict) -> dict:
    """A trace as view items: each assistant tool call is paired with its result."""
    errors = set(trace.get("tool_errors") or [])
    results = {m.get("tool_call_id"): m for m in trace.get("messages", []) if m.get("role") == "tool"}
    items = []
    for index, m in enumerate(trace.get("messages", [])):
        if m.get("role") == "tool":
            continue  # shown under the call it answers
        calls = [{"name": (c.get("function") or {}).get("name"),
                  "arguments": pretty_arguments((c.get("function") or {}).get("arguments")),
                  "result": (results.get(c.get("id")) or {}).get("content"),
                  "error": c.get("id") in errors} for c in m.get("tool_calls") or []]
        items.append({"role": m.get("role"), "content": m.get("content") or "", "index": index,
                      "reasoning": m.get("reasoning_content") or "", "calls": calls})
    # Results without a matching call (should not happen, but must not vanish).
    known = {c.get("id") for m in trace.get("messages", []) for c in m.get("tool_calls") or []}
    for call_id, m in results.items():
        if call_id not in known:
            items.append({"role": "tool", "content": m.get("content") or "", "reasoning": "", "calls": [],
                          "index": None})
    outcome = trace.get("outcome") or {}
    return {"trace_id": trace.get("trace_id"), "task_id": trace.get("task_id"), "sample": trace.get("sample"),
            "status": outcome.get("status"), "error": outcome.get("error"), "turns": outcome.get("turns"),
            "passed": bool((trace.get("check") or {}).get("passed")),
            "detail": (trace.get("check") or {}).get("detail", ""),
            "total_s": (trace.get("timings") or {}).get("total_s"), "items": items}


# --- rendering -----------------------------------------------------------------------------------

def context(data: dict, baseline: str, title: str) -> dict:
    models = ordered_models(data["summaries"], baseline)
    summaries = data["summaries"]
    return {
        "title": title,
        "models": models,
        "baseline": models[0],
        "verdicts": [verdict(models[0], m, summaries) for m in models[1:]],
        # Every pair, in model order: base against each run, and the SFT run against what builds on it.
        "paired": [paired(a, b, summaries) for a, b in itertools.combinations(models, 2)],
        "comparison": comparison_rows(models, summaries),
        "capabilities": capability_table(models, summaries),
        "tasks": task_table(models, summaries),
        "curation": counts(data["curation"]),
        "dataset": counts(data["dataset"]),
        "round_columns": ROUND_COLUMNS,
        "rounds": rounds_table(data["rounds"]),
        "benchmarks": benchmark_tables(models, data["benchmarks"]),
        "transcripts": {m: [transcript(t) for t in data["results"].get(m, [])] for m in models},
    }


def ordered_models(summaries: dict, baseline: str) -> list[str]:
    if baseline not in summaries:
        raise InputError(f"report: baseline model {baseline!r} has no summary (have: {', '.join(summaries)})")
    return [baseline] + sorted(m for m in summaries if m != baseline)


def environment() -> jinja2.Environment:
    templates = resources.files("tracetune") / "templates"
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)),
                              autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_html(ctx: dict, pngs: dict[str, bytes]) -> str:
    images = {name: base64.b64encode(png).decode("ascii") for name, png in pngs.items()}
    return environment().get_template("report.html.j2").render(**ctx, images=images)


def md_escape(text: str) -> str:
    """Markdown table cells: no pipes or newlines, and no raw HTML."""
    import html

    return html.escape(str(text)).replace("|", "\\|").replace("\n", " ")


def render_markdown(ctx: dict, figure_files: dict[str, str]) -> str:
    models = ctx["models"]
    lines = [f"# {md_escape(ctx['title'])}", ""]
    lines += [f"**{md_escape(v['text'])}**" for v in ctx["verdicts"]] + [""]
    for pair in ctx["paired"]:
        lines += [md_escape(pair["text"]), ""]
        lines += [f"- {label}: {', '.join(map(md_escape, pair[key])) or 'none'}"
                  for key, label in (("gained", "solved only by " + pair["tuned"]),
                                     ("lost", "solved only by " + pair["baseline"]))] + [""]
    lines += ["| measure | " + " | ".join(map(md_escape, models)) + " |", "|---" * (len(models) + 1) + "|"]
    lines += [f"| {md_escape(name)} | " + " | ".join(map(md_escape, cells)) + " |" for name, cells in ctx["comparison"]]
    lines += ["", "## Per capability (tasks solved)", "", "| capability | " + " | ".join(map(md_escape, models)) + " |",
              "|---" * (len(models) + 1) + "|"]
    lines += [f"| {md_escape(cap)} | " + " | ".join(map(md_escape, cells)) + " |" for cap, cells in ctx["capabilities"]]
    lines += ["", "## Figures", ""]
    lines += [f"![{name}]({file})" for name, file in figure_files.items()]
    lines += ["", "## Per task", "", "| task | " + " | ".join(map(md_escape, models)) + " |",
              "|---" * (len(models) + 1) + "|"]
    lines += [f"| {md_escape(task)} | " + " | ".join(map(md_escape, cells)) + " |" for task, cells in ctx["tasks"]]
    for heading, rows in (("Curation", ctx["curation"]), ("Dataset", ctx["dataset"])):
        if rows:
            lines += ["", f"## {heading}", ""] + [f"- {md_escape(k)}: {md_escape(v)}" for k, v in rows]
    for name, rows in ctx["benchmarks"].items():
        lines += ["", f"## Benchmark: {md_escape(name)} (accuracy per category)", "",
                  "| category | " + " | ".join(map(md_escape, models)) + " |", "|---" * (len(models) + 1) + "|"]
        lines += [f"| {md_escape(c)} | " + " | ".join(map(md_escape, cells)) + " |" for c, cells in rows]
    if ctx["rounds"]:
        lines += ["", "## Rejection-sampling rounds", "", "| " + " | ".join(ctx["round_columns"]) + " |",
                  "|---" * len(ctx["round_columns"]) + "|"]
        lines += ["| " + " | ".join(map(md_escape, row)) + " |" for row in ctx["rounds"]]
    lines += ["", "Every eval transcript is in `report.html` (same folder).", ""]
    return "\n".join(lines)


def build_report(*, summaries, results, metrics=(), curation=None, dataset=None, losses=(), rounds=(), benchmarks=(),
                 baseline="base", html_path, md_path, figure_paths: dict[str, str], title="tracetune evaluation") -> dict:
    """The report rule: read everything, then write the figures, report.md and report.html."""
    data = load_inputs(summaries, results, metrics, curation, dataset, losses, rounds, benchmarks)
    ctx = context(data, baseline, title)
    pngs = figures(ctx["models"], data)
    for name, path in figure_paths.items():
        with atomic_path(path) as tmp:
            tmp.write_bytes(pngs[name])
    md_dir = Path(md_path).parent
    rel = {name: os.path.relpath(path, md_dir) for name, path in figure_paths.items()}
    write_text(md_path, render_markdown(ctx, rel))
    write_text(html_path, render_html(ctx, pngs))
    return ctx
