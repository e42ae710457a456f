# Two commands for a fresh machine with python3 and pip: `make demo` and `make test`.
# `make bench` runs the benchmark suite in its own venv and writes docs/benchmarks.md.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_VENV := .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed
# Extra arguments for benchmarks/run.py, e.g. `make bench BENCH_ARGS=--quick`.
BENCH_ARGS ?=

.PHONY: demo test matrix lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet --upgrade pip
	$(BENCH_PY) -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

demo: $(STAMP)
	$(PY) examples/seed_demo.py

lint: $(STAMP)
	$(PY) -m ruff check aioproc tests examples benchmarks
	$(PY) -m ruff format --check aioproc tests examples benchmarks

typecheck: $(STAMP)
	$(PY) -m mypy

pytest: $(STAMP)
	$(PY) -m pytest

test: lint typecheck pytest

# The suite on Python 3.11, 3.12 and 3.13 x forkserver, spawn and fork (see .ci/matrix).
matrix:
	bash .ci/matrix

bench: $(BENCH_STAMP)
	# Bytecode for aioproc, as an installed package has (this checkout is an editable install,
	# and an environment with PYTHONDONTWRITEBYTECODE would recompile it in every child).
	$(BENCH_PY) -m compileall -q aioproc
	$(BENCH_PY) benchmarks/run.py --out docs $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) .venv-matrix build *.egg-info
