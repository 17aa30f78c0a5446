# journeyml — every target creates or reuses the virtual environment from the lock file first.
# `make help` lists the targets.

PYTHON ?= python3.11
UV_VERSION := 0.13.8
VENV := .venv
UV := .tools/bin/uv
BIN := $(VENV)/bin
DATA ?= data
PORT ?= 3000
export UV_PYTHON_DOWNLOADS := never

.DEFAULT_GOAL := help
.PHONY: help install demo stop bento browser java services test reliability lint format typecheck clean

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

# The demo reads the simulator's config set (its actions and monitored steps); a file that
# folder lacks comes from the shipped configs/.
demo: export JOURNEYML_CONFIG_DIR = $(CURDIR)/configs/simulator
# The demo's year of events ends yesterday (UTC), so that its ages read as of today.
demo: DEMO_START = $(shell $(PYTHON) -c 'import datetime as d; \
	print(d.datetime.now(d.timezone.utc).date() - d.timedelta(days=365))')
demo: install ## Simulate a journey log and run every stage end to end on embedded defaults
	$(BIN)/journeyml simulate --customers 3000 --days 365 --seed 7 --out $(DATA)/sim \
		--start $(DEMO_START)
	$(BIN)/journeyml events validate $(DATA)/sim/events
	$(BIN)/journeyml events ingest $(DATA)/sim/events \
		--customers $(DATA)/sim/customers.parquet --out $(DATA)/lake --mode replace
	$(BIN)/journeyml features build --data-dir $(DATA)
	$(BIN)/journeyml features materialize --data-dir $(DATA)
	@# A baseline (logistic, BG/NBD) that beats a LightGBM model is registered in its place.
	$(BIN)/journeyml train --model all --data-dir $(DATA) --register-baseline
	@# Challengers that pass their gates are promoted. The gates may refuse one (the command
	@# says why, and exits 1): the demo goes on. An optional model they refused (uplift, next
	@# step) is not served: decisions go on without it and say so (/readyz, list summary).
	-$(BIN)/journeyml promote --data-dir $(DATA)
	@# The service and the list cannot decide without a churn and a conversion model: one of
	@# those two that the gates refused on this small simulated log is promoted by hand
	@# (printed as such); production keeps the gates.
	$(BIN)/journeyml promote --data-dir $(DATA) --model churn --to challenger --only-unset
	$(BIN)/journeyml promote --data-dir $(DATA) --model conversion --to challenger --only-unset
	$(BIN)/journeyml lists churn-risk --data-dir $(DATA) --top 500
	$(BIN)/journeyml analyze --data-dir $(DATA)
	$(BIN)/journeyml monitor --data-dir $(DATA)
	$(BIN)/journeyml evaluate-policy --data-dir $(DATA) --sim-customers 600 --sim-days 180
	$(BIN)/journeyml report --data-dir $(DATA)
	$(BIN)/journeyml serve --data-dir $(DATA) --port $(PORT) --detach
	$(BIN)/journeyml serve-sample --data-dir $(DATA) --port $(PORT)

bento: install ## Package the service as a Bento (bentoml build) with the locked versions
	$(UV) export --frozen --no-dev --no-hashes --no-emit-project --format requirements-txt \
		--output-file bento-requirements.txt >/dev/null
	PATH="$(CURDIR)/.tools/bin:$$PATH" BENTOML_DO_NOT_TRACK=true $(BIN)/bentoml build --output tag

stop: ## Stop the demo service
	$(BIN)/journeyml serve --stop --data-dir $(DATA)

# The report browser test opens the HTML reports in Debian's headless Chromium. Install it only
# when missing; refresh the package lists only if the install fails without them.
CHROMIUM := /usr/bin/chromium
APT := $(shell [ "$$(id -u)" = 0 ] || echo sudo) env DEBIAN_FRONTEND=noninteractive apt-get

browser: ## Install Debian's chromium (for the report browser test) when it is missing
	@test -x $(CHROMIUM) || $(APT) install -y chromium \
		|| { $(APT) update && $(APT) install -y chromium; }

# The spark engine (features build --engine spark, its parity tests) needs a Java 17+ runtime:
# Debian's headless OpenJDK 17, installed only when no java is found (JAVA_HOME or PATH).
java: ## Install Debian's openjdk-17-jre-headless (for the spark engine) when no Java is present
	@{ [ -n "$$JAVA_HOME" ] && [ -x "$$JAVA_HOME/bin/java" ]; } || command -v java >/dev/null \
		|| $(APT) install -y openjdk-17-jre-headless \
		|| { $(APT) update && $(APT) install -y openjdk-17-jre-headless; }

services: ## Start (or install) Redis and PostgreSQL for the tests when they are not running
	bash .ci/services

test: install browser java ## Run the whole test suite (the fault suite included)
	$(BIN)/pytest -n 2

reliability: install ## Run the fault suite's long version alone (its own Redis and server)
	JOURNEYML_LONG_FAULTS=1 $(BIN)/pytest -p no:randomly tests/reliability -n 0

lint: install ## Lint and check formatting with ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## Reformat the code with ruff
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install ## Type-check the packages with mypy
	$(BIN)/mypy

clean: ## Remove the environments and caches (never the data folder)
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache .hypothesis
