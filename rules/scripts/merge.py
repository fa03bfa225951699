from tracetune.runtime.logs import log_to

log_to(snakemake.log[0])

from tracetune.merge import merge

merge(snakemake.input.adapter, snakemake.input.base_model, snakemake.output[0], snakemake.params.merge)
