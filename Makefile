# DFD reproduction. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SCALE ?= smoke
DATA_ROOT ?=
TEACHER ?=
SEEDS ?= 0
RUNS ?= runs
ARGS ?=

.DEFAULT_GOAL := help
TABLES := 1 2 3 4 5 6 7
REPRODUCE := $(addprefix reproduce-table-,$(TABLES))
COLLECT := $(addprefix collect-table-,$(TABLES))
.PHONY: help install demo figures test test-fast bench clean wandb-sync $(REPRODUCE) $(COLLECT)

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'
	@echo "  reproduce-table-N      Train and collect Table N (1-7): SCALE=smoke|bench|full DATA_ROOT= TEACHER= SEEDS=0,1,2"
	@echo "  collect-table-N        Collect Table N from finished runs, never trains (same variables; ARGS=force=true)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" || $(PY) -m pip install --quiet torch torchvision
	$(PY) -m pip install --quiet -e ".[dev,cluster]"
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the package with its test tools

demo: $(STAMP) ## Synthetic data, a teacher, students with and without DFD, one table (a few minutes on a CPU)
	$(PY) scripts/demo.py runs_root=$(RUNS) $(ARGS)

figures: $(STAMP) ## The paper's figures from the demo's runs and the collected tables: PNG+PDF in experiments/results/figures/
	$(PY) scripts/figures.py runs_root=$(RUNS) $(ARGS)

test: $(STAMP) ## Run the whole test suite (CPU; slow end-to-end tests included)
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP) ## Run the tests without the slow end-to-end ones
	$(PY) -m pytest -q -m "not slow" $(ARGS)

bench: $(STAMP) ## Speed benchmarks (FGD masks; DFD's loss sparse vs dense at full-scale shapes; step time against the floor)
	$(PY) scripts/bench_fgd_masks.py
	$(PY) scripts/bench_dfd_loss.py bound=1
	$(PY) scripts/bench_step.py methods=dfd,mse,mgd,fgd

$(REPRODUCE): reproduce-table-%: $(STAMP)
	$(PY) scripts/reproduce.py table=$* scale=$(SCALE) seeds=[$(SEEDS)] runs_root=$(RUNS) \
		$(if $(DATA_ROOT),data_root=$(DATA_ROOT)) $(if $(TEACHER),teacher=$(TEACHER)) $(ARGS)

$(COLLECT): collect-table-%: $(STAMP)
	$(PY) scripts/collect.py table=$* scale=$(SCALE) seeds=[$(SEEDS)] runs_root=$(RUNS) \
		$(if $(DATA_ROOT),data_root=$(DATA_ROOT)) $(if $(TEACHER),teacher=$(TEACHER)) $(ARGS)

wandb-sync: $(STAMP) ## Upload the offline W&B runs under RUNS (default runs/) and ./wandb (collected tables)
	@found="$$(find $(RUNS) wandb -type d -name 'offline-run-*' -prune 2>/dev/null | sort)"; \
	if [ -z "$$found" ]; then echo "no offline W&B runs under $(RUNS)/ or wandb/"; \
	else echo "$(VENV)/bin/wandb sync $(ARGS) <$$(echo "$$found" | wc -l) offline runs>"; $(VENV)/bin/wandb sync $(ARGS) $$found; fi

clean: ## Remove caches and runs of the smoke scale (never full-scale runs)
	rm -rf .cache $(RUNS)/smoke .pytest_cache
