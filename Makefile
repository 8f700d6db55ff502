# The two commands: `make demo` and `make test`. Each sets up .venv (idempotent) first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_BASE := $(VENV)/.stamp-base
STAMP_TEST := $(VENV)/.stamp-test

.PHONY: demo test venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP_BASE): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(STAMP_TEST): pyproject.toml $(STAMP_BASE)
	$(PY) -m pip install -q -e '.[test,onnx]'
	touch $@

venv: $(STAMP_BASE)

demo: $(STAMP_BASE)
	$(VENV)/bin/seglab demo --out work_dirs/demo

test: $(STAMP_TEST)
	$(PY) -m pytest -q

clean:
	rm -rf work_dirs .pytest_cache
