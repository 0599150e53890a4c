# Quick start: `make run` (serve on embedded defaults) and `make test` (the whole suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint install dev clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

run: $(VENV)/.installed
	$(BIN)/pacs serve

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check pacs gateway storage fhir_adapter tests benchmarks deploy
	$(BIN)/ruff format --check pacs gateway storage fhir_adapter tests benchmarks deploy
	$(BIN)/mypy
	$(BIN)/lint-imports

# two pytest workers by default (the CI machine's two cores): a file's tests stay on one worker,
# so a module's servers start once; `make test TEST_WORKERS=0` runs in one process
TEST_WORKERS ?= 2

test: lint
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

clean:
	rm -rf $(VENV) var .pytest_cache
