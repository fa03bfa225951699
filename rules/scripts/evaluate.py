from tracetune.logs import log_to

log_to(snakemake.log[0])

from tracetune.agent import Settings, resolve_endpoint
from tracetune.config import load_tasks
from tracetune.evaluate import evaluate_to_files

evaluate_to_files(
    load_tasks(snakemake.params.tasks),
    resolve_endpoint(snakemake.params.endpoint, snakemake.input.endpoint),
    Settings.from_config(snakemake.params.settings),
    samples=snakemake.params.samples,
    max_error_rate=snakemake.params.max_error_rate,
    model=snakemake.wildcards.model,
    loss_path=snakemake.input.loss or None,
    results_path=snakemake.output.results,
    summary_path=snakemake.output.summary,
    reordered_path=snakemake.output.reordered,
    reorder=snakemake.params.reorder,
    system_prompt=snakemake.params.system_prompt,
)
