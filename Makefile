# The two commands in the README do all the set-up: each creates .venv when it is missing
# or older than pyproject.toml.
VENV ?= .venv
# The interpreter .venv is made from: the system's python3 where it is 3.11 or newer, has
# ensurepip (to make a venv) and its C headers (to build the signing extension); otherwise
# python3 on PATH. Debian's python3 is built with profile-guided optimisation and LTO;
# pyenv's default build is neither, and with it `fleetid serve` made about 8% fewer RS256
# exchange tokens a second, measured side by side. `make PYTHON=...` picks another.
SYSTEM_PYTHON := /usr/bin/python3
PYTHON ?= $(shell $(SYSTEM_PYTHON) -c 'import ensurepip, os, sys, sysconfig; ensurepip.version(); \
	sys.exit(sys.version_info < (3, 11) or not os.path.isfile( \
	os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null \
	&& echo $(SYSTEM_PYTHON) || echo python3)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint typecheck pytest schema bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/fleetid serve --fleet fleet.yaml

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

schema: $(STAMP)
	$(BIN)/fleetid schema --write

bench: $(STAMP)
	$(BIN)/python -m bench.fleet

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
