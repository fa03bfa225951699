# train: data/dataset/train.parquet (for {run}-round{r}, that round's rows: rules/rounds.smk) + the
# prepared base model → data/adapters/{run}/ (LoRA adapter, metrics, TensorBoard events, loss.png);
# merge → data/models/{run}/ (16-bit, servable as is).
# Checkpoints live in data/checkpoints/{run}/, outside the output, so a killed job resumes there.


rule train:
    input:
        dataset=train_dataset,
        base_model="data/models/base",
    output:
        directory("data/adapters/{run}"),
    params:
        code=code_of("train.py"),
        train=result_settings(config, "train"),
        checkpoints="data/checkpoints/{run}",
    wildcard_constraints:
        run=r"(?!base$)(?![A-Za-z0-9._-]*-rl$)[A-Za-z0-9._-]+",  # {run}-rl is GRPO's (rules/rl.smk)
    priority: 10  # the critical path: it starts before the base model's held-out loss, which waits for it
    threads: 4
    resources:
        mem_mb=16000,
        runtime=240,
    conda:
        "../envs/train-gpu.yaml"
    log:
        "logs/train/{run}.log",
    benchmark:
        "logs/train/{run}.benchmark.tsv"
    script:
        "scripts/train.py"


rule merge:
    input:
        adapter="data/adapters/{run}",
        base_model="data/models/base",
    output:
        directory("data/models/{run}"),
    params:
        code=code_of("merge.py"),
        merge=result_settings(config, "merge"),
    wildcard_constraints:
        run=r"(?!base$)[A-Za-z0-9._-]+",
    priority: 10  # the critical path, after training
    resources:
        mem_mb=16000,
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/merge/{run}.log",
    script:
        "scripts/merge.py"


rule push_model:
    input:
        model=f"data/models/{config['train']['run']}",
    output:
        "data/reports/pushed_model.txt",
    params:
        code=code_of("push_model.py"),
        repo=result_settings(config, "hub", "model_repo"),
        private=result_settings(config, "hub", "private"),
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/merge/push.log",
    script:
        "scripts/push_model.py"
