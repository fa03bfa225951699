from tracetune.runtime.logs import log_to

log_to(snakemake.log[0])

from tracetune.models import prepare_base_model

prepare_base_model(snakemake.params.base_model, snakemake.output[0])
