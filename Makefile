# Two commands do all the set-up (README.md):
#   make serve   # run coframe on embedded defaults with the demo "sales" dataset
#   make test    # install what the tests need and pass them
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
WEB := client/web

.PHONY: serve test install install-test web browser lint services bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python web
	$(BIN)/python -m pip install -q -e .

install-test: $(BIN)/python web browser
	$(BIN)/python -m pip install -q -e '.[test]'

# The dashboards' browser packages (@perspective-dev/*), pinned by package-lock.json,
# into client/web/node_modules; reinstalled only when the lock file changes.
# Without npm the server still runs and the dashboard page says what to do.
web: $(WEB)/node_modules/.package-lock.json

$(WEB)/node_modules/.package-lock.json: $(WEB)/package.json $(WEB)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error; \
	else \
		echo "npm not found: install Node.js and npm (apt-get install -y npm) for the dashboards"; \
	fi

# Debian's chromium for the browser tests (never a Playwright browser download).
browser:
	sh tests/browser.sh

serve: install
	$(BIN)/coframe serve --host $(HOST) --port $(PORT) --demo

# ruff, then the import contracts of pyproject.toml [tool.importlinter] (layers, no cycles).
lint: install-test
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# PostgreSQL and Redis for the service tests (they skip without them, fail under CI=true).
services:
	sh tests/services.sh

test: install-test lint services
	$(BIN)/python -m pytest -q

bench: install-test
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .import_linter_cache $(WEB)/node_modules tests/artifacts
