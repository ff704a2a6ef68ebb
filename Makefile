# `make test` and `make demo` each create .venv and install what is missing (idempotent: a stamp
# file records the install; it is redone only when pyproject.toml or constraints.txt change).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BIN := $(VENV)/bin
STAMP := $(VENV)/.anymodal-installed
EXTRAS ?= dev,video,codec,hf,eval
PYTEST_ARGS ?=
RUN ?= runs/demo

.PHONY: install test test-fast demo results bench gpu-check docs lock clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check --upgrade pip
	@# torch first, from the pinned tested set (pip takes it from the machine's wheel store when there)
	$(PIP) install -q -c constraints.txt torch torchvision torchaudio
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $@

test: install
	$(PY) -m pytest -q -n 2 --durations=15 $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -n 2 -m "not slow" $(PYTEST_ARGS)

# synthesize -> train -> export -> held-out accuracy (chance beside it) -> one interleaved answer
demo: install
	@start=$$(date +%s); \
	$(BIN)/anymodal fit --config recipes/demo.yaml && \
	$(BIN)/anymodal export --ckpt $(RUN)/checkpoints/last.ckpt --out $(RUN)/export && \
	$(BIN)/anymodal eval --model $(RUN)/export --data $(RUN)/data --tasks synth --out $(RUN)/eval --quiet && \
	$(PY) examples/interleaved_inference.py $(RUN)/export $(RUN)/data && \
	echo "demo finished in $$(( $$(date +%s) - start )) s; checkpoint, logs and report under $(RUN)/"

# every documented result, regenerated: each chain of commands the docs give (the demo, the two
# stages from an LM, any-to-any, chat), 3 seeds each -> docs/results.md + docs/results.json, which
# the docs include (tests/test_results.py: a page may not state a number the table lacks).
# RESULTS_ARGS="--chains stages --seeds 0": a part (--merge keeps the other chains); --tiny: CI size
RESULTS_ARGS ?=
results: install
	$(PY) scripts/results.py $(RESULTS_ARGS)

# every benchmark (attention backends, training vs HF Llama, packing, MFU, decoding) -> benchmarks/RESULTS.md;
# <= 15 min on 2 quiet cores; needs transformers (the peer). BENCH_QUICK=1: tiny shapes, a smoke run
bench: install
	$(PIP) install -q --disable-pip-version-check -c constraints.txt "transformers>=5.0"
	$(PY) benchmarks/run_all.py

# one call on a GPU machine (<= 8 min): install what is missing (xformers only when its build fits
# torch), GPU tests, backends vs eager, a bf16 demo run, the throughput/MFU/memory benchmark, FSDP
# save/resume/export -> benchmarks/RESULTS-gpu.md + .json (docs/scale-out.md). GPU_DRY=1: on CPU,
# installs nothing, toy sizes, each GPU part reported as skipped with its reason -> runs/gpu-check-dry/
GPU_DRY ?=
gpu-check:
	python3 scripts/gpu_check.py $(if $(filter 1,$(GPU_DRY)),--dry)

# the documentation site -> site/ (mkdocs build --strict); the build draws docs/generated/ first
# (docs/hooks.py runs docs/scripts/*.py; without runs/demo/csv it trains a short demo once, ~1 min)
DOCS_STAMP := $(VENV)/.anymodal-docs-installed

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PIP) install -q --disable-pip-version-check -c constraints.txt -e ".[docs]"
	@touch $@

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lock: install
	@(echo "# The tested set (x86-64 Linux, Python 3.11). Regenerate: make lock"; \
	  $(PIP) freeze --exclude-editable | grep -v '^anymodal') > constraints.txt

clean:
	rm -rf runs .pytest_cache .hypothesis
