# evaluate: each model in evaluate.models (base = the prepared base model, others = merged tuned runs)
# runs the split: eval tasks → data/eval/{model}/results.jsonl + summary.json, and the held-out loss
# → data/eval/{model}/loss.json beside it (a job of its own, run alongside);
# benchmark: each of evaluate.benchmarks on each model (bfcl: tracetune.benchmarks) →
# data/eval/{model}/{benchmark}.jsonl + .json;
# report: base vs tuned → data/reports/report.html, report.md and the figures beside them.



rule eval_loss:
    input:
        model="data/models/{model}",
        rows="data/dataset/eval.parquet",
    output:
        "data/eval/{model}/loss.json",
    params:
        code=code_of("eval_loss.py"),
        loss=result_settings(config, "evaluate", "loss"),
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/evaluate/{model}.loss.log",
    script:
        "scripts/eval_loss.py"


rule evaluate:
    input:
        served=lambda w: model_server(w.model),
    output:
        results="data/eval/{model}/results.jsonl",
        summary="data/eval/{model}/summary.json",
        reordered="data/eval/{model}/reordered.jsonl",
    # Before collect jobs: the base model's evaluation needs only its GGUF, so it runs while the
    # tasks are collected (their jobs leave a third of the CPU idle) instead of before training.
    priority: 1
    params:
        code=code_of("evaluate.py"),
        spec=eval_spec(),
        settings=eval_agent_settings(),
        truncate=eval_truncate,
        samples=result_settings(config, "evaluate", "samples"),
        reorder=reorder_check,
        endpoint=lambda w: endpoint_settings(w.model),
        system_prompt=result_settings(config, "curate", "keep_system_prompt"),  # as the tuned model was trained
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/evaluate/{model}.log",
    script:
        "scripts/evaluate.py"


rule benchmark:
    input:
        served=lambda w: model_server(w.model),
    output:
        results="data/eval/{model}/{benchmark}.jsonl",
        summary="data/eval/{model}/{benchmark}.json",
    # After collect jobs: it shares its model's server (one thread) with that model's evaluation, so
    # the two claim two cores and use one; run early, they left collection waiting with a core idle.
    priority: -1
    params:
        code=code_of("benchmark.py"),
        bfcl=result_settings(config, "evaluate", "bfcl"),
        settings=benchmark_agent_settings(),
        endpoint=lambda w: endpoint_settings(w.model),
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/evaluate/{model}.{benchmark}.log",
    script:
        "scripts/benchmark.py"


rule report:
    input:
        summaries=expand("data/eval/{model}/summary.json", model=eval_models()),
        benchmarks=benchmark_summaries(),
        results=expand("data/eval/{model}/results.jsonl", model=eval_models()),
        losses=eval_losses(),
        adapters=expand("data/adapters/{run}", run=trained_runs()),
        curation="data/reports/curation.json",
        dataset="data/reports/dataset.json",
    output:
        html=report("data/reports/report.html", caption="../report/report_html.rst", category="Evaluation"),
        md="data/reports/report.md",
        loss_curve=report("data/reports/loss_curve.png", caption="../report/loss_curve.rst", category="Figures"),
        success_per_task=report(
            "data/reports/success_per_task.png", caption="../report/success_per_task.rst", category="Figures"
        ),
        tool_validity=report("data/reports/tool_validity.png", caption="../report/tool_validity.rst", category="Figures"),
    params:
        code=code_of("report.py"),
        report=result_settings(config, "report"),
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/report/report.log",
    script:
        "scripts/report.py"
