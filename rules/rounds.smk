# rounds (opt-in: `snakemake rounds`): rejection-sampling rounds from the SFT run. Round r samples
# rounds.samples traces per train task from the model of round r-1 (round 1: data/models/{run})
# → data/rounds/{run}/round{r}/samples.jsonl; keeps those that pass the task's check and curation
# → kept/ and train.parquet (the curated train traces plus the kept samples) beside them; the train
# rule then makes data/adapters/{run}-round{r}/ from it, merged and evaluated like any run, and
# data/reports/rounds/ reports base, the SFT run and every round. A finished round is never redone.


rule rounds_sample:
    input:
        served=lambda w: model_server(sampler(w.run, int(w.round))),
        servers=rounds_server_sources,
    output:
        "data/rounds/{run}/round{round}/samples.jsonl",
    params:
        code=code_of("rounds.py"),
        spec=lambda w: rounds_spec(),
        settings=rounds_agent_settings,
        samples=lambda w: rounds_settings()["samples"],
        truncate=result_settings(config, "collect", "truncate"),
        system_prompt=result_settings(config, "curate", "keep_system_prompt"),  # as the SFT run was trained
    wildcard_constraints:
        round=r"[1-9][0-9]*",
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/rounds/{run}/round{round}.sample.log",
    script:
        "scripts/rounds.py"


rule rounds_dataset:
    input:
        samples="data/rounds/{run}/round{round}/samples.jsonl",
        curated=curated_traces("train"),
        base_model="data/models/base",
    output:
        kept=directory("data/rounds/{run}/round{round}/kept"),
        train="data/rounds/{run}/round{round}/train.parquet",
        card="data/rounds/{run}/round{round}/README.md",
        summary="data/rounds/{run}/round{round}/round.json",
    params:
        code=code_of("rounds.py"),
        spec=lambda w: rounds_spec(),
        curate=result_settings(config, "curate"),
        dataset=result_settings(config, "dataset"),
        base_model=result_settings(config, "base_model"),
    wildcard_constraints:
        round=r"[1-9][0-9]*",
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/rounds/{run}/round{round}.dataset.log",
    script:
        "scripts/rounds.py"


use rule report as report_rounds with:
    input:
        summaries=expand("data/eval/{model}/summary.json", model=rounds_report_models()),
        benchmarks=benchmark_summaries(rounds_report_models()),
        results=expand("data/eval/{model}/results.jsonl", model=rounds_report_models()),
        losses=eval_losses(rounds_report_models()),
        adapters=expand("data/adapters/{run}", run=rounds_report_models()[1:]),
        curation="data/reports/curation.json",
        dataset="data/reports/dataset.json",
        rounds=rounds_summaries(),
    output:
        html="data/reports/rounds/report.html",
        md="data/reports/rounds/report.md",
        loss_curve="data/reports/rounds/loss_curve.png",
        success_per_task="data/reports/rounds/success_per_task.png",
        tool_validity="data/reports/rounds/tool_validity.png",
    log:
        "logs/report/rounds.log",


rule rounds:
    input:
        "data/reports/rounds/report.html",
