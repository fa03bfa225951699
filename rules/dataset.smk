# dataset: curated traces of every task → data/dataset/{train,eval}.parquet (one row per assistant
# turn, rendered with the base model's chat template), the dataset card and a report.


rule build_dataset:
    input:
        traces=curated_traces(),
        base_model="data/models/base",
    output:
        train="data/dataset/train.parquet",
        eval="data/dataset/eval.parquet",
        card="data/dataset/README.md",
        report="data/reports/dataset.json",
    params:
        code=code_of("build_dataset.py"),
        splits=task_splits(),
        dataset=result_settings(config, "dataset"),
        base_model=result_settings(config, "base_model"),
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/dataset/build.log",
    script:
        "scripts/build_dataset.py"


rule push_dataset:
    input:
        train="data/dataset/train.parquet",
        eval="data/dataset/eval.parquet",
        card="data/dataset/README.md",
    output:
        "data/reports/pushed_dataset.txt",
    params:
        code=code_of("push_dataset.py"),
        repo=result_settings(config, "hub", "dataset_repo"),
        private=result_settings(config, "hub", "private"),
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/dataset/push.log",
    script:
        "scripts/push_dataset.py"
