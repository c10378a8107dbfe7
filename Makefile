# The portal's commands. `make help` lists them; README.md explains them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv manages the virtual environment. When it is not installed, a private copy is
# installed into .tools/ with pip, so a machine needs only Python 3.11+ and make.
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv/bin

# Dagster keeps its run history in .dagster/ (gitignored). dagster_instance.yaml, copied there
# as dagster.yaml, turns telemetry off; a dagster.yaml at the root would make Dagster warn.
export DAGSTER_HOME := $(CURDIR)/.dagster
export DAGSTER_DISABLE_TELEMETRY := 1
export DAGSTER_DG_UPDATE_CHECK_ENABLED := 0
export PYTHONUNBUFFERED := 1

HOST ?= 127.0.0.1
PORT ?= 3000
# Job that `make run` executes: materialize_all, refresh_hourly or refresh_daily
# (portal/schedules.py), e.g. `make run JOB=refresh_hourly`.
JOB ?= materialize_all

# The committed raw files that `make commit-snapshots` records. Hidden files are left out:
# they are partial downloads of a run that was killed.
SNAPSHOTS := data/snapshots
SNAPSHOT_PATHS := $(SNAPSHOTS) ':(exclude,glob)$(SNAPSHOTS)/**/.*'
REMOTE ?= origin
BRANCH ?= $(shell git rev-parse --abbrev-ref HEAD 2>/dev/null)

.PHONY: help setup run dev ui-readonly test test-slow test-browser lint clean
.PHONY: publish-destination commit-snapshots push-snapshots

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv

# --compile-bytecode writes the .pyc files at install time: where PYTHONDONTWRITEBYTECODE is
# set, as on some CI machines, every run would otherwise compile dagster anew (about 1.5 s).
setup: $(UV) ## Create .venv with the locked dependencies and the Dagster home
	$(UV) sync --locked --quiet --compile-bytecode
	@mkdir -p $(DAGSTER_HOME)
	@cp dagster_instance.yaml $(DAGSTER_HOME)/dagster.yaml

run: setup ## Download every source, rebuild every table, publish every dataset (JOB=...)
	$(VENV)/dagster job execute -m portal.definitions -j $(JOB)

dev: setup ## Serve the Dagster UI and daemon on http://127.0.0.1:3000 (HOST=, PORT= change it)
	$(VENV)/dagster dev -w workspace.yaml -h $(HOST) -p $(PORT)

ui-readonly: setup ## Serve the UI read-only: lineage and history, no launching or toggling
	$(VENV)/dagster-webserver -w workspace.yaml -h $(HOST) -p $(PORT) --read-only

test: setup ## Run the tests not marked slow (no network needed)
	$(VENV)/pytest -m "not slow"

test-slow: setup ## Run the slow tests: whole-graph runs in subprocesses, the UI's GraphQL
	$(VENV)/pytest -m "slow and not browser"

# pytest exits with 5 when the browser tests were skipped at collection (no Chromium), which
# is not a failure: the skip reason above says what to install.
test-browser: setup ## Drive the UI in headless Chromium; saves docs/lineage.png
	$(VENV)/pytest -m browser || [ $$? -eq 5 ]

publish-destination: ## Say whether `make run` pushes to HuggingFace or to the publish folder only
	@if [ -n "$${HF_TOKEN// /}" ] || grep -qsE '^(export +)?HF_TOKEN=.?[[:alnum:]]' .env; then \
		echo "HF_TOKEN is set: make run writes the publish folder and pushes changed" \
			"releases to the HuggingFace user or organisation named by PORTAL_HF_ORG."; \
	else \
		echo "HF_TOKEN is not set: make run skips HuggingFace and writes the publish folder" \
			"only (PORTAL_PUBLISH_DIR, default data/publish/)."; \
	fi

commit-snapshots: ## Commit changed files under data/snapshots; no commit when none changed
	@git add --all -- $(SNAPSHOT_PATHS)
	@if git diff --cached --quiet -- $(SNAPSHOT_PATHS); then \
		echo "No snapshot changed under $(SNAPSHOTS)/: nothing to commit."; \
	else \
		sources=$$(git diff --cached --name-only -- $(SNAPSHOT_PATHS) \
			| cut -d/ -f3 | sort -u | paste -sd ' ' -); \
		git commit --quiet -m "Update snapshots of $$sources" \
			-m "Downloaded by make run at $$(date -u '+%Y-%m-%d %H:%M') UTC." \
			-- $(SNAPSHOT_PATHS) && \
		git log -1 --format='Committed %h: %s'; \
	fi

push-snapshots: ## Rebase local snapshot commits onto REMOTE/BRANCH and push them
	@git fetch --quiet $(REMOTE) $(BRANCH)
	@if [ "$$(git rev-list --count FETCH_HEAD..HEAD)" = 0 ]; then \
		echo "No local commit to push to $(REMOTE)/$(BRANCH)."; exit 0; \
	fi; \
	for attempt in 1 2 3; do \
		if ! git rebase --quiet FETCH_HEAD; then \
			git rebase --abort; \
			echo "Rebasing onto $(REMOTE)/$(BRANCH) failed: the same snapshot changed there." \
				"Rerun make run to download it again." >&2; \
			exit 1; \
		fi; \
		if git push --quiet $(REMOTE) HEAD:$(BRANCH); then \
			echo "Pushed $$(git log -1 --format=%h) to $(REMOTE)/$(BRANCH)."; exit 0; \
		fi; \
		echo "Push to $(REMOTE)/$(BRANCH) was rejected (attempt $$attempt of 3); fetching again."; \
		sleep $$((attempt * 5)); \
		git fetch --quiet $(REMOTE) $(BRANCH); \
	done; \
	echo "Pushing to $(REMOTE)/$(BRANCH) failed 3 times; the commits stay local." >&2; exit 1

lint: setup ## Check style with ruff
	$(VENV)/ruff check portal portal_tests benchmarks
	$(VENV)/ruff format --check portal portal_tests benchmarks

clean: ## Remove the warehouse, the publish folder, run history and the virtual environment
	rm -rf .venv .tools .dagster data/warehouse.duckdb data/warehouse.duckdb.wal data/publish
