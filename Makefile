# The newcomer's path: `make demo`, then `make test`. Nothing but Python is needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: demo test lint typecheck bench clean help

help:
	@echo "make demo   - create .venv, install, run the seed workflow on embedded defaults"
	@echo "make test   - install dev extras, run lint, type checks and the whole test suite"
	@echo "make bench  - run the benchmarks (prints ratios against same-run baselines)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed-all: $(BIN)/python pyproject.toml
	$(PIP) install --quiet -e '.[all]'
	@touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(PIP) install --quiet -e '.[dev]'
	@touch $@

demo: $(VENV)/.installed-all
	$(BIN)/microhive demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

test: $(VENV)/.installed-dev lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-all
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .microhive .pytest_cache .mypy_cache .ruff_cache
