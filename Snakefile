# tracetune: tasks.yaml → raw traces → curated traces → Parquet → LoRA adapters → merged model → reports.
# Each stage has its own rules file; input functions and validation live in rules/common.smk.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"


wildcard_constraints:
    task=r"[a-z0-9._-]+",
    model=r"[A-Za-z0-9._-]+",
    split=r"train|eval",
    benchmark="|".join(BENCHMARKS),  # tracetune.benchmarks, as the schema's evaluate.benchmarks


include: "rules/serve.smk"
include: "rules/collect.smk"
include: "rules/curate.smk"
include: "rules/dataset.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/rl.smk"
include: "rules/rounds.smk"


# Everything but the heavy compute runs where Snakemake runs: collection and evaluation talk to
# the loopback model server, the push rules need the network.
localrules:
    all,
    prepare_base_model,
    collect,
    curate,
    curation_report,
    build_dataset,
    gguf,
    push_dataset,
    evaluate,
    benchmark,
    report,
    report_rl,
    rl,
    rounds_sample,
    rounds_dataset,
    report_rounds,
    rounds,
    push_model,


rule all:
    input:
        all_targets(),
    default_target: True
