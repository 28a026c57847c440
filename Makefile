# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup demo up test test-fast bench stubs check-stubs

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

test-fast: setup
	$(BIN)/pytest -q -m "not real_model"

bench: setup
	$(BIN)/banditspec bench --family default
