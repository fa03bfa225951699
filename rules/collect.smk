# collect: one job per task → data/traces/raw/{task}.jsonl (model samples + the replayed reference plan).
# Params: the task's spec hash and only the settings its traces depend on (agent and endpoint
# settings only for tasks with model samples); operational ones come from the config in the script.


rule collect:
    input:
        servers=task_server_sources,
        served=lambda w: model_server(None, asks=bool(task_samples(w))),
    output:
        "data/traces/raw/{task}.jsonl",
    params:
        code=code_of("collect.py"),
        spec=task_spec_hash,
        samples=task_samples,
        agent=collect_agent_settings,
        truncate=collect_truncate,
        endpoint=lambda w: endpoint_settings(None, asks=bool(task_samples(w))),
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/collect/{task}.log",
    benchmark:
        "benchmarks/collect/{task}.tsv"  # wall and CPU seconds per job: bench/demo_stages.py
    script:
        "scripts/collect.py"
