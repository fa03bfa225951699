from tracetune.runtime.logs import log_to

log_to(snakemake.log[0])

from pathlib import Path

from tracetune.publish import push_folder

# Only the three dataset files: a staging folder keeps the report and logs out of the upload.
url = push_folder(Path(snakemake.input.train).parent, snakemake.params.repo, "dataset",
                  private=snakemake.params.private,
                  allow_patterns=[Path(p).name for p in (snakemake.input.train, snakemake.input.eval,
                                                         snakemake.input.card)])
Path(snakemake.output[0]).write_text(url + "\n")
