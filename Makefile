# The README's commands. Every install step goes through pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install models serve test lint check bench clean

$(BIN)/ragserve: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/ragserve

# Pull the default models into the persistent cache (RAGSERVE_MODEL_DIR); a no-op when present.
models: install
	$(BIN)/ragserve models pull

# README command 1: install, pull the models, serve on the embedded store.
serve: models
	$(BIN)/ragserve serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# README command 2: install, pull the models, lint, type-check and run the test suite.
test: models lint
	$(BIN)/pytest -n 2 --dist loadfile

# The benchmark suite (docs/benchmarks.md). The reference service needs torch: the CPU build
# first (torch==2.13.0), then the extras that use it.
bench: models
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev,reference,export]"
	$(BIN)/ragserve models pull all-MiniLM-L6-v2
	$(BIN)/ragserve models export all-MiniLM-L6-v2
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) build dist src/*.egg-info
