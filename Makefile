# Two commands do all the set-up on a fresh machine:
#   make train   create .venv if needed, install, get the data, train the H-Net, test it
#   make test    create .venv if needed, install with the dev extras, run the test suite
# make docs builds the documentation site into site/ (mkdocs build --strict).
# Offline, the data step builds the Rot-MNIST stand-in from the MNIST files in
# $HNETS_MNIST_DIR (this repository's CI and dev machines: ../shared/data/mnist).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
EPOCHS ?=
OUT ?= runs/hnet
MODEL ?= hnet
TRAIN_ARGS ?=
SHARED_MNIST := $(wildcard ../shared/data/mnist/train-images-idx3-ubyte.gz)
ifeq ($(HNETS_MNIST_DIR),)
ifneq ($(SHARED_MNIST),)
export HNETS_MNIST_DIR := $(abspath ../shared/data/mnist)
endif
endif
SHARED_FASHION := $(wildcard ../shared/data/fashion-mnist/train-images-idx3-ubyte.gz)
ifeq ($(HNETS_FASHION_DIR),)
ifneq ($(SHARED_FASHION),)
export HNETS_FASHION_DIR := $(abspath ../shared/data/fashion-mnist)
endif
endif

.PHONY: train demo test venv docs bench bench-e2cnn lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

train: venv
	$(BIN)/hnets data prepare
	$(BIN)/hnets train --model $(MODEL) --out $(OUT) $(if $(EPOCHS),--epochs $(EPOCHS)) $(TRAIN_ARGS)
	$(BIN)/hnets test --checkpoint $(OUT) --figure $(OUT)/confusion.png
	@echo "results: $(OUT)/summary.json, $(OUT)/metrics.jsonl, $(OUT)/curves.png, $(OUT)/confusion.png"

demo: venv
	$(BIN)/hnets data prepare
	$(BIN)/hnets train --model hnet --epochs 3 --train-split train --limit-train 5000 --limit-eval 2000 --out runs/demo --overwrite
	$(BIN)/hnets test --checkpoint runs/demo --limit 2000

test: venv
	$(BIN)/python -m pytest -q

$(VENV)/.installed-docs: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $@

# the API reference is read from the source in src/ (griffe), without importing hnets
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: venv
	$(BIN)/hnets bench

# e2cnn 0.2.3 (the latest release) needs NumPy < 2, so it gets a venv of its own
.venv-e2cnn/bin/python:
	$(PYTHON) -m venv .venv-e2cnn
	.venv-e2cnn/bin/python -m pip install --quiet "$(TORCH)" "numpy<2" e2cnn tqdm matplotlib safetensors pillow
	.venv-e2cnn/bin/python -m pip install --quiet --no-deps -e .

bench-e2cnn: .venv-e2cnn/bin/python
	.venv-e2cnn/bin/python benchmarks/e2cnn_compare.py

lint: venv
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .venv-e2cnn runs site .cache .pytest_cache .ruff_cache
