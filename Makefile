# perstack-sandbox developer entry points. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export TESTCONTAINERS_RYUK_DISABLED := true

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv and install the project with its dev tools

.PHONY: engine
engine: ## Start a Docker engine when none answers (installs docker.io on Debian)
	@bash images/ensure-engine.sh

.PHONY: images
images: install engine ## Build the base, sandbox and proxy images (bootstraps Debian without a registry)
	$(VENV)/bin/perstack-sandbox doctor --fix

.PHONY: lint
lint: install ## ruff + mypy --strict + the import layers (lint-imports)
	$(VENV)/bin/ruff check orchestrator proxy tests bench
	$(VENV)/bin/ruff format --check orchestrator proxy tests bench
	$(VENV)/bin/mypy --strict
	$(VENV)/bin/lint-imports

.PHONY: unit
unit: install ## Unit tests only (no Docker, no network)
	$(PY) -m pytest tests/unit -q

.PHONY: test
test: install engine images ## The whole suite: lint, unit, integration, security, the wheel
	$(MAKE) lint
	$(PY) -m pytest tests -q
	$(MAKE) wheel-check
	@bash images/assert-clean.sh

.PHONY: wheel-check
wheel-check: install engine ## Install the built wheel in a fresh venv next to proxy.py; run doctor, tools and tests/wheel there
	bash .ci/wheel-check.sh

.PHONY: demo
demo: install engine images ## Build the example Expert, list and call its tools, show the audit
	bash examples/demo.sh

.PHONY: bench
bench: install engine images ## Benchmarks that print ratio tables (installs Debian's squid-openssl to compare with)
	@/usr/sbin/squid -v 2>/dev/null | grep -q -- --with-openssl || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq squid-openssl >/dev/null)
	$(PY) bench/run.py
