from tracetune.runtime.logs import log_to

log_to(snakemake.log[0])

from tracetune.heldout import heldout_loss_to_file

loss = snakemake.params.loss
heldout_loss_to_file(
    snakemake.input.model,
    snakemake.input.rows,
    snakemake.output[0],
    max_rows=loss["max_rows"],
    device=loss["device"],
    max_len=loss["max_len"],
)
