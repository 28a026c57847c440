# Two entry points for a fresh machine: `make demo` and `make test`; CI runs `make lint typecheck test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup demo up test test-unit test-fast lint format typecheck bench stubs check-stubs

setup: $(VENV)/.installed

# torch first, so pip takes the CPU build on disk instead of resolving a CUDA one.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: setup
	$(BIN)/banditspec demo

up: setup
	$(BIN)/banditspec up

check-stubs: setup
	$(BIN)/python scripts/compile_proto.py --check

stubs: setup
	$(BIN)/python scripts/compile_proto.py

test: check-stubs
	$(BIN)/pytest -q

# Unit tier: plain Python objects and tiny tensors, no subprocess, well under a minute.
test-unit: setup
	$(BIN)/pytest -q tests/unit

# Everything but the real-model tier (which loads SmolLM2).
test-fast: setup
	$(BIN)/pytest -q tests/unit tests/integration

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: setup
	$(BIN)/mypy

bench: setup
	$(BIN)/banditspec bench --family default
