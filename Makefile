# The two commands: `make demo` and `make test` (`make test-all`: the rest of the suite). Each sets up .venv
# (idempotent) first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_BASE := $(VENV)/.stamp-base
STAMP_TEST := $(VENV)/.stamp-test

.PHONY: demo test test-all test-zoo venv clean

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

# `make demo ARGS="--set train.seed=3"`: other settings for the same run
demo: $(STAMP_BASE)
	$(VENV)/bin/seglab demo --out work_dirs/demo $(ARGS)

# the fast tier (README's test command); `test-all` runs the rest but the zoo export sweep: slow tests and the
# mmsegmentation comparisons; `test-zoo` exports every other published width and depth of each family
test: $(STAMP_TEST)
	$(PY) -m pytest -q --durations=10 -m "not slow and not mmseg and not zoo"

test-all: $(STAMP_TEST)
	$(PY) -m pytest -q --durations=10 -m "(slow or mmseg) and not zoo"

test-zoo: $(STAMP_TEST)
	$(PY) -m pytest -q --durations=10 -m zoo

clean:
	rm -rf work_dirs .pytest_cache
