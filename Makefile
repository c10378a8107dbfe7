# The portal's commands. `make help` lists them; README.md explains them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv manages the virtual environment. When it is not installed, a private copy is
# installed into .tools/ with pip, so a machine needs only Python 3.11+ and make.
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv/bin

# Dagster keeps its run history in .dagster/ (gitignored); dagster.yaml turns telemetry off.
export DAGSTER_HOME := $(CURDIR)/.dagster
export DAGSTER_DISABLE_TELEMETRY := 1
export DAGSTER_DG_UPDATE_CHECK_ENABLED := 0
export PYTHONUNBUFFERED := 1

HOST ?= 127.0.0.1
PORT ?= 3000

.PHONY: help setup run dev test test-slow lint clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv

setup: $(UV) ## Create .venv with the locked dependencies and the Dagster home
	$(UV) sync --locked --quiet
	@mkdir -p .dagster
	@cp dagster.yaml .dagster/dagster.yaml

run: setup ## Download every source, rebuild every table, publish every dataset
	$(VENV)/dagster job execute -m portal.definitions -j materialize_all

dev: setup ## Serve the Dagster UI (lineage, runs, checks) on http://$(HOST):$(PORT)
	$(VENV)/dagster dev -w workspace.yaml -h $(HOST) -p $(PORT)

test: setup ## Run the test suite (no network needed)
	$(VENV)/pytest -m "not slow"

test-slow: setup ## Run the slow tests: whole-graph runs in subprocesses
	$(VENV)/pytest -m slow

lint: setup ## Check style with ruff
	$(VENV)/ruff check portal portal_tests
	$(VENV)/ruff format --check portal portal_tests

clean: ## Remove the warehouse, the publish folder, run history and the virtual environment
	rm -rf .venv .tools .dagster data/warehouse.duckdb data/warehouse.duckdb.wal data/publish
