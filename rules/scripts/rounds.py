from tracetune.runtime.logs import log_to

log_to(snakemake.log[0])

from tracetune.agent import Settings
from tracetune.config import checked_train_tasks, load_tasks
from tracetune.rounds import build_round_dataset, sample_round
from tracetune.runtime.endpoint import resolve_endpoint
from tracetune.runtime.settings import untracked_settings
from tracetune.toolsets import ToolRendering

# Params hold the result settings; the operational ones (concurrency, timeouts) come from the config.
params, config, wildcards = snakemake.params, snakemake.config, snakemake.wildcards
taskfile = load_tasks(untracked_settings(config, "tasks"))
tasks = checked_train_tasks(taskfile, list(params.spec), "rounds")
if snakemake.rule == "rounds_sample":
    sample_round(
        taskfile,
        tasks,
        resolve_endpoint(untracked_settings(config, "endpoint"), snakemake.input.served),
        Settings.from_config(params.settings | {"truncate": params.truncate} | untracked_settings(config, "collect")),
        samples=params.samples,
        round_no=int(wildcards.round),
        out_path=snakemake.output[0],
        system_prompt=params.system_prompt,
        max_error_rate=untracked_settings(config, "rounds", "max_error_rate"),
    )
else:
    out = snakemake.output
    build_round_dataset(
        snakemake.input.samples,
        list(snakemake.input.curated),
        tasks,
        taskfile.ids("train"),
        snakemake.input.base_model,
        run=wildcards.run,
        round_no=int(wildcards.round),
        kept_dir=out.kept,
        train_path=out.train,
        card_path=out.card,
        summary_path=out.summary,
        max_seq_len=params.dataset["max_seq_len"],
        curate=params.curate,
        system_prompt=taskfile.system_prompt,
        tool_rendering=ToolRendering.from_config(params.dataset),
        base_model=params.base_model,
    )
