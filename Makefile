# mrnn-jax: install, test, train. Every target uses the project's virtual environment.
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

.PHONY: install test lint format train features bench clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

install: $(BIN)/python  ## create .venv and install the package with its test tools
	$(BIN)/pip install -e '.[dev]'

test:  ## run the test suite (about 10 minutes on 2 CPU cores)
	$(BIN)/python -m pytest -q -n 2

lint:  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

train:  ## train on DATASET (shapes, flickr8k, flickr30k, coco, iapr, folder) from DATA_DIR [FEATURES]
	$(BIN)/mrnn train --config $(CONFIG) --workdir $(WORKDIR) $(DATA_FLAGS) $(ARGS)

features:  ## extract-features: ENCODER=vgg16|resnet50|alexnet WEIGHTS=file DATASET= DATA_DIR= OUT=
	$(BIN)/mrnn extract-features --encoder $(ENCODER) --weights $(WEIGHTS) --dataset $(DATASET) --data-dir $(DATA_DIR) --out $(OUT) $(ARGS)

bench:  ## the benchmark suite: results/benchmark.json and .md (about 10 minutes on 2 CPU cores)
	$(BIN)/python experiments/benchmark.py --json results/benchmark.json --markdown results/benchmark.md $(ARGS)

clean:  ## remove build artefacts (not runs/)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
