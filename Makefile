# The two README commands: `make demo` (the whole tiny pipeline) and `make test`.
# Each creates .venv on first use with the exact versions in constraints.txt
# (torch==2.13.0: a small CPU build; see README for CUDA builds).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export DVC_NO_ANALYTICS ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: demo ui test lint env clean

env: $(STAMP)

# uv installs the same pinned versions as pip would, in parallel (about 50 s instead of about 2 min
# on 2 cores); it reads pip's find-links (a local wheel cache holding the CPU build of torch) from the
# environment. Make env with UV=0 to install with pip instead.
UV ?= 1
export UV_FIND_LINKS ?= $(PIP_FIND_LINKS)
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
ifeq ($(UV),1)
	$(BIN)/pip install -q -c constraints.txt uv
	$(BIN)/uv pip install -q --python $(BIN)/python -c constraints.txt torch==2.13.0
	$(BIN)/uv pip install -q --python $(BIN)/python -c constraints.txt -e '.[dev]'
else
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
endif
	touch $(STAMP)

# The whole tiny pipeline (tokenizer -> curate -> image tokenizer -> pretrain -> SFT -> UniGRPO ->
# evaluate), the same stages `dvc repro` runs; ends with a summary of outputs and how to open the UIs.
demo: $(STAMP)
	$(BIN)/mmada pipeline

# Prefect server + served deployments + MLflow UI on 127.0.0.1 (Ctrl-C stops all three).
ui: $(STAMP)
	$(BIN)/mmada serve

# ruff, the import-layer contract (pyproject.toml [tool.importlinter]: a layer never imports one above
# it), then the tests. Tests use tiny models: one torch thread per process is fastest and steadiest on 2 cores.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/ruff format --check .

clean:
	rm -rf runs .pytest_cache .ruff_cache
