# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first; `make test`
# also installs the system tools its tests run for real (scripts/install_test_tools.sh), first, so a
# machine that lacks them and may not install them stops at once with the command that would.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup test-tools demo test test-fast bench bench-snips bench-loop bench-serving bench-collector bench-scale check-gpu lint lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint requirements.lock --editable '.[dev]'
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/flywheel demo

# promtool, PostgreSQL's server binaries, Node.js + npm and actionlint; `make demo` needs none of them
test-tools:
	scripts/install_test_tools.sh

# pytest-xdist: one worker per core, each given whole files (so a file's module fixtures -- a server, a
# fine-tuned model -- are made once) in the order tests/conftest.py sets, the longest first.
PARALLEL := -n auto --dist loadfile --no-loadscope-reorder

# Every test (CI runs this)
test: test-tools setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PARALLEL)

# The edit-test loop: the code and data tests, no training and no servers (tests/README.md)
test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PARALLEL) tests/code tests/data

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m scripts.bench_banking77

bench-snips: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m scripts.bench_snips

bench-loop: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m scripts.bench_loop

bench-serving: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m scripts.bench_serving

bench-collector: setup
	$(BIN)/python -m scripts.bench_collector

# On a CUDA machine: Banking77 end to end on the GPU (autocast, ONNX parity, peak memory); exits 2
# on a machine without one. Not part of CI (docs/training.md)
check-gpu: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m scripts.check_gpu
# a month of traffic (1,000,000 requests) through export-events, check-data, prepare and drift, on SQLite and on a
# throwaway PostgreSQL (test-tools installs its server); BENCH_SCALE_ARGS="--requests 20000 --stores sqlite" for a quick one
bench-scale: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m scripts.bench_scale $(BENCH_SCALE_ARGS)

# Refresh the lock after changing pyproject.toml: resolves in a scratch venv, writes exact versions.
lock:
	rm -rf /tmp/flywheel-lock && $(PYTHON) -m venv /tmp/flywheel-lock
	/tmp/flywheel-lock/bin/python -m pip install --quiet '.[dev]'
	/tmp/flywheel-lock/bin/python -m pip freeze --exclude flywheel | sed 's/+cpu$$//' > requirements.lock

clean:
	rm -rf $(VENV) work

# ruff, and the import contract between the stage packages (pyproject.toml, [tool.importlinter])
lint: setup
	$(BIN)/ruff check model scripts tests data_checks
	$(BIN)/ruff format --check model scripts tests data_checks
	$(BIN)/lint-imports
