# rl (opt-in: `snakemake rl`): GRPO on the train tasks' own checks, from the SFT adapter
# data/adapters/{run} (or a fresh LoRA: rl.init: base) → data/adapters/{run}-rl/, merged and
# evaluated like any run, and reported beside base and SFT in data/reports/rl/. Every rollout is
# kept as a raw trace with its reward in data/rl/{run}/rollouts/, beside the checkpoints a killed
# job resumes from (not outputs: Snakemake would delete them before the rerun).


rule grpo:
    input:
        init=rl_init_adapter,
        base_model="data/models/base",
        servers=rl_server_sources,
    output:
        directory("data/adapters/{run}-rl"),
    params:
        code=code_of("grpo.py"),
        rl=result_settings(config, "rl"),
        spec=lambda w: rl_spec(),
        lora=result_settings(config, "train"),  # a fresh LoRA's shape (rl.init: base) and the seed
        truncate=result_settings(config, "collect", "truncate"),
        system_prompt=result_settings(config, "curate", "keep_system_prompt"),  # as the SFT run was trained
        state="data/rl/{run}",
    wildcard_constraints:
        run=r"(?!base$)[A-Za-z0-9._-]+",
    threads: 4
    resources:
        mem_mb=16000,
        runtime=240,
    conda:
        "../envs/train-gpu.yaml"
    log:
        "logs/rl/{run}.log",
    benchmark:
        "logs/rl/{run}.benchmark.tsv"
    script:
        "scripts/grpo.py"


use rule report as report_rl with:
    input:
        summaries=expand("data/eval/{model}/summary.json", model=rl_report_models()),
        benchmarks=benchmark_summaries(rl_report_models()),
        results=expand("data/eval/{model}/results.jsonl", model=rl_report_models()),
        losses=eval_losses(rl_report_models()),
        adapters=expand("data/adapters/{run}", run=rl_report_models()[1:]),
        curation="data/reports/curation.json",
        dataset="data/reports/dataset.json",
    output:
        html="data/reports/rl/report.html",
        md="data/reports/rl/report.md",
        loss_curve="data/reports/rl/loss_curve.png",
        success_per_task="data/reports/rl/success_per_task.png",
        tool_validity="data/reports/rl/tool_validity.png",
    log:
        "logs/report/rl.log",


rule rl:
    input:
        "data/reports/rl/report.html",
