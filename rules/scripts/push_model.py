from tracetune.runtime.logs import log_to

log_to(snakemake.log[0])

from pathlib import Path

from tracetune.publish import push_folder

# The token comes from `hf auth login` or HF_TOKEN; push_folder never logs it.
url = push_folder(snakemake.input.model, snakemake.params.repo, "model", private=snakemake.params.private)
Path(snakemake.output[0]).write_text(url + "\n")
