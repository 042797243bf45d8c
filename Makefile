# `make run` and `make test` set themselves up on a machine with only Python 3.11+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Parallel test processes. The integration tests mostly wait on servers and workers, so
# more processes than the machine's 2 cores finish sooner; worksteal evens out the long ones.
PYTEST_WORKERS ?= 6

.PHONY: run test lint format unit rq-conformance bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,ops,postgres,web]'
	touch $(STAMP)

install: $(STAMP)

# `make bench` (every benchmark), `make bench BENCH=peers`: installs the peers first.
BENCH ?= all
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench $(BENCH)

run: $(STAMP)
	$(PY) -m workers dev

lint: $(STAMP)
	$(VENV)/bin/ruff check cache jobs workers bench tests examples
	$(VENV)/bin/ruff format --check cache jobs workers bench tests examples
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format cache jobs workers bench tests examples
	$(VENV)/bin/ruff check --fix cache jobs workers bench tests examples

test: lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)
	$(PY) -m tests.rq_conformance

unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# RQ's own worker/job/queue/registry tests against our classes (downloads RQ's sdist once).
rq-conformance: $(STAMP)
	$(PY) -m tests.rq_conformance $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
