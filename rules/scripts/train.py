from tracetune.logs import log_to

log_to(snakemake.log[0])

from tracetune.train import train

train(
    snakemake.input.dataset,
    snakemake.input.base_model,
    snakemake.output[0],
    snakemake.params.train,
    checkpoint_dir=snakemake.params.checkpoints,
)
