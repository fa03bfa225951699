# The base model, prepared once into data/models/base/; GGUF copies of models for llama.cpp
# (data/gguf/{model}.gguf); and the run's own model servers.
#
# A job that talks to a model the workflow serves itself declares `model_server(model)`
# (common.smk) as its `served` input and calls tracetune.runtime.serving.shared_endpoint(that path): the first such
# job of the run starts the server (llama.cpp for a GGUF, `transformers serve` for a directory)
# on a free loopback port, every other job reuses it, and the handlers below stop every server
# when the run ends, also on failure or Ctrl-C. (Snakemake's service() outputs are not used:
# their consumers all rerun whenever one of them has to.)
from tracetune.runtime.serving import claim_shared_servers, stop_shared_servers

claim_shared_servers()


rule prepare_base_model:
    output:
        directory("data/models/base"),
    # First of all: priorities do not pass to a job's inputs, and without one the 287 collect jobs
    # went first, so the base model's GGUF and evaluation only started once collection was done
    # and held training back by 5.7 min (demo, 2 cores).
    priority: 10
    params:
        code=code_of("prepare_base_model.py"),
        base_model=result_settings(config, "base_model"),
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/prepare_base_model.log",
    script:
        "scripts/prepare_base_model.py"


rule gguf:
    input:
        model="data/models/{model}",
    output:
        "data/gguf/{model}.gguf",
    priority: 10  # the base model's early, so its evaluation runs beside collection; a tuned model's on the critical path
    params:
        code=code_of("gguf.py"),
        gguf_type=result_settings(config, "serve", "gguf_type"),
    conda:
        "../envs/tracetune.yaml"
    log:
        "logs/gguf/{model}.log",
    script:
        "scripts/gguf.py"


onsuccess:
    stop_shared_servers()


onerror:
    stop_shared_servers()
