# psysim developer entry points. `make quickstart` and `make test` work on a fresh clone.
#
# TORCH is installed before psysim so that pip keeps it: the default is the CPU
# build (PyTorch 2.13.0, a ~200 MB wheel) instead of the multi-GB CUDA build an
# unpinned `pip install torch` pulls on Linux. On a machine with a GPU, or where
# that CPU wheel is not at hand, override it, e.g.
#   make setup TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
#   make setup TORCH="torch"                # CUDA build, for GPU machines

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.psysim-installed

.PHONY: setup quickstart test test-fast lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

quickstart: setup
	$(BIN)/psysim models pull smollm2-135m-instruct
	$(BIN)/psysim validate experiments/quickstart.yaml
	$(BIN)/psysim run experiments/quickstart.yaml
	$(BIN)/psysim report runs/quickstart

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not shared_data"

lint: setup
	$(BIN)/ruff check psysim tests
	$(BIN)/ruff format --check psysim tests

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache
