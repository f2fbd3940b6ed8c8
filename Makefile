# Two commands do everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PY_DIRS := $(wildcard src tests bench scripts examples)

export LOYALTY_HOST ?= 127.0.0.1
export LOYALTY_PORT ?= 50051

.PHONY: help venv run migrate test lint format generate check-generated pytest typecheck clean \
	examples example-node example-python reference check-reference soak bench bench-quick demo

help:
	@echo "make run    - create .venv, install, migrate the SQLite database and serve on $(LOYALTY_HOST):$(LOYALTY_PORT)"
	@echo "make test   - ruff, buf lint, generated-code check, mypy, pytest"
	@echo "make generate | reference | lint | format | typecheck | migrate | examples | clean"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever the dependency list changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

migrate: $(STAMP)
	$(BIN)/loyalty migrate

run: $(STAMP)
	$(BIN)/loyalty migrate
	$(BIN)/loyalty serve

# A narrated tour against its own throwaway server (test clock, temporary database).
demo: $(STAMP)
	$(BIN)/loyalty demo

generate: $(STAMP)
	$(PY) scripts/generate.py generated

# Regenerate into a scratch folder and compare byte for byte with what is committed.
check-generated: $(STAMP)
	@tmp=$$(mktemp -d) && $(PY) scripts/generate.py "$$tmp" && \
	if diff -r -x __pycache__ "$$tmp" generated >/dev/null; then echo "generated/ is current"; rm -rf "$$tmp"; \
	else diff -r -x __pycache__ "$$tmp" generated | head -n 40; rm -rf "$$tmp"; \
	echo "generated/ is stale: run 'make generate' and commit" >&2; exit 1; fi

# The API reference is generated from the proto comments; CI fails when it is stale.
reference: $(STAMP)
	$(PY) scripts/api_reference.py docs/reference.md

check-reference: $(STAMP)
	$(PY) scripts/api_reference.py --check docs/reference.md

lint: $(STAMP)
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)
	$(BIN)/buf lint

format: $(STAMP)
	$(BIN)/ruff check --fix $(PY_DIRS)
	$(BIN)/ruff format $(PY_DIRS)

typecheck: $(STAMP)
	$(BIN)/mypy src

# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint check-generated check-reference typecheck pytest

# The reliability suite at the figures of issue 8 (hours, not minutes; see docs/reliability.md).
soak: $(STAMP)
	LOYALTY_SOAK=1 $(BIN)/pytest -q --timeout=0 tests/reliability

# Each starts a server on a free port with a throwaway SQLite database and runs one client.
examples: example-node example-python

example-node: $(STAMP)
	bash examples/run-example.sh node

example-python: $(STAMP)
	bash examples/run-example.sh python

# Benchmarks, see docs/performance.md. bench-quick is the CI smoke test (under a minute);
# bench runs everything at full size (long: (e) expires 5,000,000 lots on each backend).
bench: $(STAMP)
	$(PY) bench/harness.py $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(PY) bench/harness.py --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .mypy_cache
