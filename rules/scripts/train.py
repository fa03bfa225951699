from tracetune.runtime.logs import log_to

log_to(snakemake.log[0])

from tracetune.runtime.settings import untracked_settings
from tracetune.train import train

# Params hold the result settings; checkpoint cadence and the like come from the config.
train(
    snakemake.input.dataset,
    snakemake.input.base_model,
    snakemake.output[0],
    snakemake.params.train | untracked_settings(snakemake.config, "train") | {"run": snakemake.wildcards.run},
    checkpoint_dir=snakemake.params.checkpoints,
)
