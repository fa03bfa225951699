from tracetune.logs import log_to

log_to(snakemake.log[0])

from tracetune.serve import export_gguf

export_gguf(snakemake.input.model, snakemake.output[0], snakemake.params.gguf_type)
