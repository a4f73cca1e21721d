# One target per task; CI (.ci/run) and people run the same targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install console console-test run stop test test-sqlite services lint typecheck bench clean

install: $(STAMP)  ## Create .venv and install Nefos with its dev tools

$(STAMP): pyproject.toml
	@scripts/ensure-python.sh $(PYTHON)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -U pip
	@scripts/ensure-libvirt.sh --build-deps $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,libvirt]'
	@touch $(STAMP)

console:  ## Build the web console (console/ -> src/nefos/api/console_dist) if its sources changed
	@scripts/ensure-console.sh >/dev/null

# The console's type check and unit tests (svelte-check, vitest); its browser tests
# are in tests/console (pytest).
console-test: console
	@cd console && npm run --silent check && npm test --silent

run: install console  ## Start Nefos on http://127.0.0.1:8000 (SQLite under ./var, local Podman and libvirt); Ctrl-C stops it and what it started
	@VENV=$(VENV) scripts/run.sh

stop:  ## Stop the Podman service, libvirtd and Redis that `make run` / `make services` started
	@scripts/stop-services.sh

services:  ## Install and start what the tests need (PostgreSQL, Podman, libvirt, Redis)
	@scripts/bootstrap-services.sh

# Test files run in parallel (pytest-xdist, one file per worker at a time): most of the
# suite waits on engines, VMs and databases rather than on the CPU.
PYTEST_WORKERS ?= 3

test: install services lint typecheck console-test  ## Lint, types, and every test on SQLite and PostgreSQL
	@source var/test-services.env && $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --junitxml=var/test-report.xml --durations 10 --tb=short $(PYTEST_ARGS)

test-sqlite: install  ## The suite on SQLite only (no services needed)
	NEFOS_TEST_BACKENDS=sqlite $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: install
	$(VENV)/bin/mypy

bench: install services  ## Benchmarks against their baselines (see docs/benchmarks.md)
	@source var/test-services.env && $(PY) bench/run_all.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache console/node_modules src/nefos/api/console_dist
