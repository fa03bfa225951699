# curate: one job per task → data/traces/curated/{task}.jsonl + per-task stats; then one report.
# Hand edits are curation/edits/{trace_id}.json; trace ids are {task}--…, so each curate job lists
# only its own task's edit files as inputs (editing one reruns only that task). Hand verdicts
# (curation/reject.txt, keep.txt) reach a job as the params of its task, so only tasks whose list
# changed rerun. `tracetune review` writes all three; `tracetune import` and `record` add traces.


rule curate:
    input:
        raw="data/traces/raw/{task}.jsonl",
        edits=task_edits,
        added=task_added_traces,
    output:
        traces="data/traces/curated/{task}.jsonl",
        stats="data/reports/curation/{task}.json",
    params:
        code=code_of("curate.py"),
        check=task_check,
        rejected=task_rejects,
        kept=task_keeps,
        system_prompt=TASKFILE.system_prompt,
        curate=result_settings(config, "curate"),
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/curate/{task}.log",
    script:
        "scripts/curate.py"


rule curation_report:
    input:
        stats=expand("data/reports/curation/{task}.json", task=task_ids()),
    output:
        "data/reports/curation.json",
    params:
        code=code_of("curate.py"),
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/curate/report.log",
    script:
        "scripts/curate.py"
