# trionsm — the README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck pytest bench proto proto-check clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

## test: lint, type-check and run the whole test suite
test: $(STAMP) lint typecheck proto-check pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

## demo: run the two-node demo mesh
demo: $(STAMP)
	bash scripts/system-deps.sh demo
	$(BIN)/trionsm demo

## bench: run every benchmark in bench/ and collect their JSON into bench/results.json
bench: $(STAMP)
	$(BIN)/python bench/collect.py

## proto: regenerate trionsm/api/ and transport/_etcd/ from proto/ (betterproto2; output committed)
proto: $(STAMP)
	VENV=$(VENV) bash proto/generate.sh

## proto-check: fail if the committed trionsm/api/ or transport/_etcd/ differs from a fresh generation
proto-check: proto
	@if [ -n "$$(git status --porcelain -- trionsm/api transport/_etcd)" ]; then \
	    git status --short -- trionsm/api transport/_etcd; \
	    echo "trionsm/api/ or transport/_etcd/ differs from a fresh generation of proto/: run 'make proto' and commit"; \
	    exit 1; \
	fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
