# dpo-recipes: `make train` (the CPU demo) and `make test` install what they need into .venv first.
SHELL := /bin/bash
PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RECIPE ?= demo-cpu
ARGS ?=
RECIPE_DIR := recipes/$(RECIPE)

.PHONY: help install train audit test check-recipe

help:
	@echo "make train [RECIPE=<name>] [ARGS='--key value ...']   train a recipe (default: demo-cpu, CPU, no downloads)"
	@echo "make audit [RECIPE=<name>] [ARGS='--key value ...']   check a recipe's data (no model load): data_audit.json"
	@echo "make test                                               run the whole test suite"
	@echo "make install                                            create .venv from requirements.txt"
	@echo "recipes: $$(ls recipes | tr '\n' ' ')"

# The venv is rebuilt when requirements.txt changes.
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

check-recipe:
	@test -f $(RECIPE_DIR)/train.py || { echo "error: unknown RECIPE '$(RECIPE)'; recipes: $$(ls recipes | tr '\n' ' ')" >&2; exit 2; }

train: install check-recipe
	$(VENV)/bin/accelerate launch --config_file $(RECIPE_DIR)/accelerate.yaml \
		$(RECIPE_DIR)/train.py --config $(RECIPE_DIR)/config.yaml $(ARGS)

# The data audit alone: the recipe's data through its tokenizer, written to output_dir/data_audit.json.
audit: install check-recipe
	$(PY) -m dpo_recipes.audit --config $(RECIPE_DIR)/config.yaml $(ARGS)

test: install
	$(PY) -m pytest tests
