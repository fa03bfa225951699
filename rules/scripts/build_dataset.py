from tracetune.runtime.logs import log_to

log_to(snakemake.log[0])

from tracetune.dataset import build_dataset
from tracetune.toolsets import ToolRendering

build_dataset(
    list(snakemake.input.traces),
    snakemake.params.splits,
    snakemake.input.base_model,
    train_path=snakemake.output.train,
    eval_path=snakemake.output.eval,
    card_path=snakemake.output.card,
    report_path=snakemake.output.report,
    max_seq_len=snakemake.params.dataset["max_seq_len"],
    tool_rendering=ToolRendering.from_config(snakemake.params.dataset),
    base_model=snakemake.params.base_model,
)
