# One venv, two entry points: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install browser compose demo test lint

install:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch first: a bare `torch` requirement would pull a CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]"

# Debian's Chromium for the dashboard's browser tests (they skip, saying so, without it).
browser:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium could not be installed: the browser tests will be skipped"

# Debian's docker-compose, to validate deploy/docker-compose.yml without a container engine
# (its test skips, saying so, without it). No recommends: they would pull in a Docker daemon.
compose:
	command -v docker-compose >/dev/null 2>&1 || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  docker-compose >/dev/null) || \
	  echo "docker-compose could not be installed: the compose validation test will be skipped"

demo: install
	$(BIN)/fedq demo

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install browser compose lint
	$(BIN)/python -m pytest
