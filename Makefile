# The README's commands. Every install step goes through pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install install-dev models serve test lint check bench clean

# Two installs into one venv, each remembered by a stamp: what serving needs (the runtime and
# the hub client, wheels only: no compiler), and that plus the development tools.
$(VENV)/.installed-serve: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --only-binary=:all: -e ".[hub]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed-serve

install: $(VENV)/.installed-serve
install-dev: $(VENV)/.installed-dev

# Pull the default models into the persistent cache (RAGSERVE_MODEL_DIR); a no-op when present.
models: install
	$(BIN)/ragserve models pull

# README command 1: install what serving needs, pull the models, serve on the embedded store.
serve: models
	$(BIN)/ragserve serve --host $(HOST) --port $(PORT)

lint: install-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# README command 2: install with the development tools, pull the models, lint, type-check and
# run the test suite.
test: install-dev models lint
	$(BIN)/pytest -n 2 --dist loadfile

# The benchmark suite (docs/benchmarks.md). The reference service needs torch: the CPU build
# first (torch==2.13.0), then the extras that use it.
bench: install-dev models
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev,reference,export]"
	$(BIN)/ragserve models pull all-MiniLM-L6-v2
	$(BIN)/ragserve models export all-MiniLM-L6-v2
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) build dist src/*.egg-info
