# mrnn-jax: install, test, train. Every target uses the project's virtual environment (.venv),
# made from the lock on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATASET ?= shapes
CONFIG ?= $(DATASET)
WORKDIR ?= runs/$(DATASET)
# The dataset's folder and precomputed features (real datasets; see data_prep/README.md)
DATA_DIR ?=
FEATURES ?=
# Extra config overrides for `make train`, e.g. ARGS="train.num_steps=500"
ARGS ?=
# Or, instead of FEATURES, a pretrained CNN on the images: WEIGHTS=converted file (see
# data_prep/convert_weights.py), ENCODER=vgg16 (default), resnet50 or alexnet
ENCODER ?= vgg16
WEIGHTS ?=
DATA_FLAGS := $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(if $(FEATURES),--features $(FEATURES)) \
	$(if $(WEIGHTS),encoder.name=$(ENCODER) encoder.weights=$(WEIGHTS))

.PHONY: install lock browser test lint format train features bench gpu-check gpu-wheels clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# The environment: a virtual environment holding exactly the versions in $(LOCK) (with their
# hashes), then this checkout installed into it in editable mode. Every target that runs
# project code depends on it, so any of them sets up a fresh clone first.
LOCK := requirements-lock.txt
STAMP := $(VENV)/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(LOCK) setup.cfg | $(BIN)/python
	$(BIN)/python -m pip install --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

install: $(STAMP)  ## create .venv from the lock (exact versions and hashes) and install the package

lock: $(STAMP)  ## refresh the lock to the newest versions setup.cfg allows (then commit it)
	$(BIN)/pip-compile --quiet --upgrade --extra dev --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links --output-file $(LOCK) setup.cfg
	sed -i -e '/^# WARNING: pip install will require the following package to be hashed/,/^    # via file:/d' $(LOCK)

test: lint browser  ## lint, then the test suite on both cores (about 880 tests; about 11 minutes on 2 CPU cores)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

# The browser test drives Debian's Chromium (Playwright's own browser download is not used).
# As root it is installed here; otherwise install the `chromium` package yourself.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
		else echo "make: chromium not found: install Debian's chromium package for the browser test"; fi; }

lint: $(STAMP)  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

train: $(STAMP)  ## train on DATASET (shapes, flickr8k, flickr30k, coco, iapr, folder) from DATA_DIR [FEATURES]
	$(BIN)/mrnn train --config $(CONFIG) --workdir $(WORKDIR) $(DATA_FLAGS) $(ARGS)

features: $(STAMP)  ## extract-features: ENCODER=vgg16|resnet50|alexnet WEIGHTS=file DATASET= DATA_DIR= OUT=
	$(BIN)/mrnn extract-features --encoder $(ENCODER) --weights $(WEIGHTS) --dataset $(DATASET) --data-dir $(DATA_DIR) --out $(OUT) $(ARGS)

bench: $(STAMP)  ## the benchmark suite: results/benchmark.json and .md (about 10 minutes on 2 CPU cores)
	$(BIN)/python experiments/benchmark.py --json results/benchmark.json --markdown results/benchmark.md $(ARGS)

# The GPU check (docs/gpu.md): every GPU figure in one process of about 5 minutes on one GPU,
# written to OUT (default results/gpu_check) as gpu_check.json and gpu_check.md.
# ARGS="--smoke" runs it at tiny sizes (a CPU, under a minute).
gpu-check: $(STAMP)  ## the GPU check: OUT=folder (default results/gpu_check) [ARGS=--smoke]
	$(BIN)/python experiments/gpu_check.py --out $(or $(OUT),results/gpu_check) $(ARGS)

# Wheels, at the lock's versions, of what the GPU check needs that a GPU machine without a
# package registry may lack (ml_collections needs absl-py and PyYAML; tensorboardX's numpy,
# packaging and protobuf come with jax and tensorboard there). Python 3.12, x86_64 Linux.
GPU_WHEELS := ml-collections tensorboardx pyyaml absl-py
gpu-wheels:  ## download into .whl/ the wheels the GPU check needs that a GPU machine lacks
	rm -rf .whl && mkdir -p .whl
	@for name in $(GPU_WHEELS); do \
		pin=$$(grep -i -m1 "^$$name==" $(LOCK) | cut -d' ' -f1); \
		[ -n "$$pin" ] || { echo "make: $$name is not in $(LOCK)"; exit 1; }; \
		echo "$$pin"; \
		$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
			--implementation cp --platform manylinux_2_28_x86_64 \
			--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
			-d .whl "$$pin" || exit 1; \
	done
	ls -l .whl

clean:  ## remove build artefacts (not runs/)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
