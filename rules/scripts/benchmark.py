from tracetune.runtime.logs import log_to

log_to(snakemake.log[0])

from tracetune.agent import Settings
from tracetune.benchmarks import benchmark_to_files
from tracetune.runtime.endpoint import resolve_endpoint
from tracetune.runtime.settings import endpoint_path, untracked_settings

# Params hold the result settings; the operational ones (timeouts, concurrency) come from the config.
params, config, model = snakemake.params, snakemake.config, snakemake.wildcards.model
endpoint = params.endpoint | untracked_settings(config, *(endpoint_path(config, model) or ("endpoint",)))
benchmark_to_files(
    snakemake.wildcards.benchmark,
    resolve_endpoint(endpoint, snakemake.input.served),
    Settings.from_config(params.settings | untracked_settings(config, "collect")),
    categories=params.bfcl["categories"],
    entries=params.bfcl["entries"],
    model=model,
    results_path=snakemake.output.results,
    summary_path=snakemake.output.summary,
)
