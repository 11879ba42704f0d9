# One entry point for people and CI. Needs only python3 (3.11+), make and git.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint typecheck check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Start the built-in emulator and drive 200 models through the whole lifecycle.
demo: $(STAMP)
	$(BIN)/fleet demo --models 200

## Everything CI checks: lint, types, and the whole test suite (on every core) with its coverage.
test: $(STAMP) lint typecheck
	$(BIN)/pytest --cov

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

check: test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* fleet-demo.db*
