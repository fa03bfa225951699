from tracetune.runtime.logs import log_to

log_to(snakemake.log[0])

from tracetune.gguf import export_gguf

export_gguf(snakemake.input.model, snakemake.output[0], snakemake.params.gguf_type)
