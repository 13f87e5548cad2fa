# flowtrail — two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAMPLES := ../shared/data/hubble-samples
STAMP := $(VENV)/.installed
DEVSTAMP := $(VENV)/.dev-installed

.PHONY: install dev demo test lint typecheck bench clean

PROTOS := $(wildcard src/flowtrail/sources/proto/*.proto)

$(STAMP): requirements.txt pyproject.toml setup.py src/flowtrail/sources/_canonscan.c src/flowtrail/sources/_hsmatch.c src/flowtrail/sources/_lineindex.h src/flowtrail/lab/_render.c src/flowtrail/sources/_lineclass.c src/flowtrail/sources/_wirejson.c $(PROTOS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python scripts/gen_protos.py
	touch $(STAMP)

# Bytecode compiled whenever a module changed: with PYTHONDONTWRITEBYTECODE set (as on these
# machines) Python never writes it, and every CLI call would compile the changed modules again
# (a stale cache after a `git pull` cost `observe` ~0.1 s of start-up).
SOURCES := $(shell find src/flowtrail -name '*.py')
BYTECODE := $(VENV)/.bytecode

$(BYTECODE): $(STAMP) $(SOURCES)
	$(BIN)/python -m compileall -q src/flowtrail >/dev/null
	touch $(BYTECODE)

install: $(STAMP) $(BYTECODE)

$(DEVSTAMP): $(STAMP) requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $(DEVSTAMP)

dev: $(DEVSTAMP) $(BYTECODE)

demo: install
	@bash scripts/demo.sh

test: dev
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: dev
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/bench_observe.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
