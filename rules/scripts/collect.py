from tracetune.logs import log_to

log_to(snakemake.log[0])

from tracetune.collect import collect_to_file
from tracetune.config import load_tasks
from tracetune.agent import Settings, resolve_endpoint

collect_to_file(
    load_tasks(snakemake.params.tasks),
    snakemake.wildcards.task,
    snakemake.output[0],
    resolve_endpoint(snakemake.params.endpoint, snakemake.input.endpoint),
    Settings.from_config(snakemake.params.collect),
    default_samples=snakemake.params.collect["samples"],
)
