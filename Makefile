# Two commands do all the set-up (README.md):
#   make serve   # run coframe on embedded defaults with the demo "sales" dataset
#   make test    # install what the tests need and pass them
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test install install-test lint services bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'

serve: install
	$(BIN)/coframe serve --host $(HOST) --port $(PORT) --demo

lint: install-test
	$(BIN)/ruff check .

# PostgreSQL and Redis for the service tests (they skip without them, fail under CI=true).
services:
	sh tests/services.sh

test: install-test lint services
	$(BIN)/python -m pytest -q

bench: install-test
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
