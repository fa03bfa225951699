from tracetune.runtime.logs import log_to

log_to(snakemake.log[0])

from tracetune.config import load_tasks
from tracetune.runtime.settings import untracked_settings
from tracetune.rl import run_rl

# Params hold the result settings; checkpoint cadence and the like come from the config.
params = snakemake.params
run_rl(
    load_tasks(snakemake.config["tasks"]),
    snakemake.input.base_model,
    snakemake.input.init or None,
    snakemake.output[0],
    params.state,
    params.rl | untracked_settings(snakemake.config, "rl"),
    train_settings=params.lora | untracked_settings(snakemake.config, "train"),
    truncate=params.truncate,
    system_prompt=params.system_prompt,
    tool_timeout_s=untracked_settings(snakemake.config, "collect", "tool_timeout_s"),
)
