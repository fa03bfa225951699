from tracetune.runtime.logs import log_to

log_to(snakemake.log[0])

from tracetune.agent import Settings
from tracetune.config import load_tasks
from tracetune.evaluate import evaluate_to_files
from tracetune.runtime.endpoint import resolve_endpoint
from tracetune.runtime.settings import endpoint_path, untracked_settings

# Params hold the result settings; the operational ones (timeouts, max_error_rate) come from the config.
params, config, model = snakemake.params, snakemake.config, snakemake.wildcards.model
endpoint = params.endpoint | untracked_settings(config, *(endpoint_path(config, model) or ("endpoint",)))
evaluate_to_files(
    load_tasks(untracked_settings(config, "tasks")),
    resolve_endpoint(endpoint, snakemake.input.served),
    Settings.from_config(params.settings | {"truncate": params.truncate} | untracked_settings(config, "collect")),
    samples=params.samples,
    max_error_rate=untracked_settings(config, "evaluate", "max_error_rate"),
    model=model,
    results_path=snakemake.output.results,
    summary_path=snakemake.output.summary,
    reordered_path=snakemake.output.reordered,
    reorder=params.reorder,
    system_prompt=params.system_prompt,
)
