# collect: one job per task → data/traces/raw/{task}.jsonl (model samples + the replayed reference plan).


rule collect:
    input:
        code=src("agent.py", "parsing.py", "collect.py", "checks.py", "mcp_client.py"),
        servers=task_server_sources,
        endpoint=collect_endpoint,
    output:
        "data/traces/raw/{task}.jsonl",
    params:
        spec=task_spec_hash,
        tasks=config["tasks"],
        collect=config["collect"],
        endpoint=config["endpoint"],
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/collect/{task}.log",
    script:
        "scripts/collect.py"
