# Entry points. Every target installs what it needs into .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export JAX_PLATFORMS ?= cpu

.PHONY: install test test-all lint bench

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# The default suite: fast tests only (slow ones are marked and run by test-all).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

lint: $(STAMP)
	$(VENV)/bin/ruff check phi3_jax tests configs bench launch
	$(VENV)/bin/ruff format --check phi3_jax tests configs bench launch

bench: $(STAMP)
	$(PY) -m bench
