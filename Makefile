# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs everything, runs the daemon end to end on the tiny model (offline)
#   make test   same venv, runs the whole test suite (slow tests included)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UNAME_S := $(shell uname -s)

# On Linux, torch 2.13.0 is the CPU build (an unpinned torch pulls a multi-GB CUDA build).
ifeq ($(UNAME_S),Linux)
TORCH := torch==2.13.0
else
TORCH := torch
endif

.PHONY: demo test bench install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "hotfolder needs Python 3.11 or newer: run make PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[diffusers,mlx,test]"
	@touch $@

demo: install
	$(PY) -m hotfolder demo

test: install
	$(PY) -m pytest

bench: install
	$(PY) bench/overhead.py
	$(PY) bench/ingest.py
	$(PY) bench/cache.py
	$(PY) bench/resident.py

clean:
	rm -rf $(VENV) build *.egg-info
