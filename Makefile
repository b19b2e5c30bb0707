PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
DATA ?= ./data
# the quick start runs on loopback without API keys (serve prints a warning); AUTH= (empty) turns
# keys on: create one first with `embedstack keys create --data-dir $(DATA) --scope admin`
AUTH ?= --insecure-no-auth

.PHONY: install dev run test sizes lint typecheck pytest bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned to 2.13.0 (the local CPU build); an open range would pull a CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev,scann,langchain,llamaindex]"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

run: install
	HF_HUB_OFFLINE=1 $(BIN)/embedstack serve --host $(HOST) --port $(PORT) --data-dir $(DATA) $(AUTH)

sizes: | $(BIN)/python
	$(BIN)/python tools/check_sizes.py --limit-mb 5

lint: dev
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools

typecheck: dev
	$(BIN)/mypy

pytest: dev
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -p no:cacheprovider

test: sizes lint typecheck pytest

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python bench/ingest.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/query.py

clean:
	rm -rf $(VENV) build *.egg-info
