from tracetune.runtime.logs import log_to

log_to(snakemake.log[0])

from pathlib import Path

from tracetune.report import FIGURES, build_report

out = snakemake.output
metrics = [Path(d) / "metrics.jsonl" for d in snakemake.input.adapters]
build_report(
    summaries=snakemake.input.summaries,
    results=snakemake.input.results,
    losses=snakemake.input.losses,
    metrics=[str(p) for p in metrics if p.is_file()],
    curation=snakemake.input.curation,
    dataset=snakemake.input.dataset,
    rounds=snakemake.input.get("rounds", []),
    benchmarks=snakemake.input.benchmarks,
    baseline=snakemake.params.report["baseline"],
    title=snakemake.params.report["title"],
    html_path=out.html,
    md_path=out.md,
    figure_paths={name: out[name] for name in FIGURES},
)
