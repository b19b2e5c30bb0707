PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
DATA ?= ./data
# the quick start runs on loopback without API keys (serve prints a warning); AUTH= (empty) turns
# keys on: create one first with `embedstack keys create --data-dir $(DATA) --scope admin`
AUTH ?= --insecure-no-auth

.PHONY: install dev run test sizes lint typecheck pytest bench bench-deps bench-corpora bench-index clean

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

# what the benchmarks import beyond the core (matplotlib; scann for its index type): every
# bench/*.py checks this and its corpora up front (bench/common.py preflight). The peers
# (bench/peers) install into their own venvs under ~/.cache/embedstack/peers on first use.
$(VENV)/.bench-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e ".[bench,scann]"
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
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -p no:cacheprovider --durations=20

test: sizes lint typecheck pytest

# Debian's corpora (bench/corpora.py): GCIDE for the benchmarks' texts and vectors, the
# python3.11-doc sources for bench/corpora.py's generated test and gate data.
BENCH_CORPORA := /usr/share/dictd/gcide.index /usr/share/dictd/gcide.dict.dz \
	/usr/share/doc/python3.11/html/_sources/tutorial
BENCH_PACKAGES := dict-gcide python3.11-doc

bench-corpora:
	@missing=""; for f in $(BENCH_CORPORA); do [ -e "$$f" ] || missing="$$missing $$f"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "bench corpora missing:$$missing"; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q $(BENCH_PACKAGES) || \
		{ apt-get update -q && apt-get install -y -q $(BENCH_PACKAGES); }; \
	else \
		echo "install them as root:  sudo apt-get install -y $(BENCH_PACKAGES)" >&2; exit 1; \
	fi

bench-deps: $(VENV)/.bench-installed bench-corpora

bench: bench-deps
	HF_HUB_OFFLINE=1 $(BIN)/python bench/ingest.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/query.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/search_overhead.py

# every index type vs raw faiss, hnswlib and peers (tens of minutes at the default 50k vectors)
bench-index: bench-deps
	HF_HUB_OFFLINE=1 $(BIN)/python bench/index.py

clean:
	rm -rf $(VENV) build *.egg-info
