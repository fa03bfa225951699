from tracetune.runtime.logs import log_to

log_to(snakemake.log[0])

from tracetune.agent import Settings
from tracetune.collect import collect_to_file
from tracetune.config import load_tasks
from tracetune.runtime.endpoint import resolve_endpoint
from tracetune.runtime.settings import untracked_settings

# Params hold the result settings; the operational ones (concurrency, timeouts) come from the config.
params, config = snakemake.params, snakemake.config
collect_to_file(
    load_tasks(untracked_settings(config, "tasks")),
    snakemake.wildcards.task,
    snakemake.output[0],
    resolve_endpoint(params.endpoint | untracked_settings(config, "endpoint"), snakemake.input.served),
    Settings.from_config(params.agent | {"truncate": params.truncate} | untracked_settings(config, "collect")),
    default_samples=params.samples,
    max_error_rate=untracked_settings(config, "collect", "max_error_rate"),
)
