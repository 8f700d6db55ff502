# The two commands: `make demo` and `make test` (`make test-all`: the rest of the suite). Each sets up .venv
# (idempotent) first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_BASE := $(VENV)/.stamp-base
STAMP_TEST := $(VENV)/.stamp-test

.PHONY: demo test test-all test-zoo venv clean analysis-docs

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP_BASE): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(STAMP_TEST): pyproject.toml $(STAMP_BASE)
	$(PY) -m pip install -q -e '.[test,onnx,serve]'
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

# docs/analysis.md's figures and tables: SegFormer-B0 (the demo run), SegNeXt-T and FCN-HRNetV2-W18-Small on the demo's
# shapes data, each trained first when its checkpoint is missing (about 15 min each on 2 cores), then the four
# analyses on the demo's 200 validation images (corruptions: the first 50; 11 min on 2 cores once trained)
ANALYSIS_CONFIGS := configs/segformer/segformer_b0_shapes.yaml configs/segnext/segnext_t_shapes_demo.yaml \
                    configs/hrnet/fcn_hrnetv2_w18s_shapes_demo.yaml
ANALYSIS_WEIGHTS := work_dirs/demo/iter_3400.safetensors work_dirs/segnext_t_shapes_demo/iter_2500.safetensors \
                    work_dirs/fcn_hrnetv2_w18s_shapes_demo/iter_2200.safetensors
ANALYSIS_OUT := work_dirs/analysis

work_dirs/demo/iter_3400.safetensors: | $(STAMP_BASE)
	$(VENV)/bin/seglab demo --out work_dirs/demo

work_dirs/segnext_t_shapes_demo/iter_2500.safetensors: | $(STAMP_BASE)
	$(VENV)/bin/seglab train configs/segnext/segnext_t_shapes_demo.yaml --no-progress

work_dirs/fcn_hrnetv2_w18s_shapes_demo/iter_2200.safetensors: | $(STAMP_BASE)
	$(VENV)/bin/seglab train configs/hrnet/fcn_hrnetv2_w18s_shapes_demo.yaml --no-progress

analysis-docs: $(ANALYSIS_WEIGHTS) | $(STAMP_BASE)
	$(VENV)/bin/seglab analyze erf $(ANALYSIS_CONFIGS) --checkpoint $(ANALYSIS_WEIGHTS) --out $(ANALYSIS_OUT)/erf
	$(VENV)/bin/seglab analyze resolution $(ANALYSIS_CONFIGS) --checkpoint $(ANALYSIS_WEIGHTS) \
		--out $(ANALYSIS_OUT)/resolution
	$(VENV)/bin/seglab analyze corruptions $(ANALYSIS_CONFIGS) --checkpoint $(ANALYSIS_WEIGHTS) --limit 50 \
		--out $(ANALYSIS_OUT)/corruptions
	$(VENV)/bin/seglab analyze errors $(ANALYSIS_CONFIGS) --checkpoint $(ANALYSIS_WEIGHTS) --worst 4 \
		--out $(ANALYSIS_OUT)/errors
	for a in erf resolution corruptions errors; do mkdir -p docs/img/analysis/$$a && \
		cp $(ANALYSIS_OUT)/$$a/*.png $(ANALYSIS_OUT)/$$a/results.json docs/img/analysis/$$a/; done
	rm docs/img/analysis/corruptions/examples.png  # 2.4 MB of noise pictures: in the HTML report only

clean:
	rm -rf work_dirs .pytest_cache
