# journeyml — every target creates or reuses the virtual environment from the lock file first.
# `make help` lists the targets.

PYTHON ?= python3.11
UV_VERSION := 0.13.8
VENV := .venv
UV := .tools/bin/uv
BIN := $(VENV)/bin
DEMO_DIR ?= data/demo
export UV_PYTHON_DOWNLOADS := never

.DEFAULT_GOAL := help
.PHONY: help install demo test lint format typecheck clean

help: ## List the targets with what they do
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

install: $(VENV)/.synced ## Create the virtual environment from uv.lock (exact pinned versions)

demo: install ## Simulate a journey log and run every stage end to end on embedded defaults
	$(BIN)/journeyml simulate --customers 3000 --days 365 --seed 7 --out $(DEMO_DIR)/sim
	$(BIN)/journeyml events validate $(DEMO_DIR)/sim/events
	$(BIN)/journeyml events ingest $(DEMO_DIR)/sim/events \
		--customers $(DEMO_DIR)/sim/customers.parquet --out $(DEMO_DIR)/lake --mode replace

test: install ## Run the whole test suite
	$(BIN)/pytest

lint: install ## Lint and check formatting with ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## Reformat the code with ruff
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install ## Type-check the packages with mypy
	$(BIN)/mypy

clean: ## Remove the environments, caches and demo outputs
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache .hypothesis data/demo
