# The base model, prepared once into data/models/base/, and the run's own model servers.
#
# A job that talks to a model the workflow serves itself declares `served_model_dir(model)`
# (common.smk) as an input and calls tracetune.serve.shared_endpoint(that directory): the first
# such job of the run starts `transformers serve` on a free loopback port, every other job reuses
# it, and the handlers below stop every server when the run ends, also on failure or Ctrl-C. (Snakemake's service()
# outputs are not used: their consumers all rerun whenever one of them has to.)
from tracetune.serve import claim_shared_servers, stop_shared_servers

claim_shared_servers()


rule prepare_base_model:
    input:
        code=src("models.py", "templates/tool_chatml.jinja", "templates/response_template.json"),
    output:
        directory("data/models/base"),
    params:
        base_model=result_settings(config, "base_model"),
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/prepare_base_model.log",
    script:
        "scripts/prepare_base_model.py"


onsuccess:
    stop_shared_servers()


onerror:
    stop_shared_servers()
