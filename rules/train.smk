# train: data/dataset/train.parquet + the prepared base model → data/adapters/{run}/ (LoRA adapter,
# metrics, TensorBoard events, loss.png); merge → data/models/{run}/ (16-bit, servable as is).
# Checkpoints live in data/checkpoints/{run}/, outside the output, so a killed job resumes there.


rule train:
    input:
        code=src("train.py", "backends/__init__.py", "backends/peft_lora.py", "backends/unsloth_lora.py"),
        dataset="data/dataset/train.parquet",
        base_model="data/models/base",
    output:
        directory("data/adapters/{run}"),
    params:
        train=result_settings(config, "train"),
        checkpoints="data/checkpoints/{run}",
    wildcard_constraints:
        run=r"(?!base$)[A-Za-z0-9._-]+",
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
        code=src("merge.py"),
        adapter="data/adapters/{run}",
        base_model="data/models/base",
    output:
        directory("data/models/{run}"),
    params:
        merge=result_settings(config, "merge"),
    wildcard_constraints:
        run=r"(?!base$)[A-Za-z0-9._-]+",
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
        code=src("publish.py"),
        model=f"data/models/{config['train']['run']}",
    output:
        "data/reports/pushed_model.txt",
    params:
        repo=result_settings(config, "hub", "model_repo"),
        private=result_settings(config, "hub", "private"),
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/merge/push.log",
    script:
        "scripts/push_model.py"
