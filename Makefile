# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs everything, runs the daemon end to end on the tiny model (offline)
#   make test   same venv, runs the whole test suite (slow tests included)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UNAME_S := $(shell uname -s)
# The exact versions CI ran (`make lock` refreshes it): a newcomer gets what was tested, not today's releases.
CONSTRAINTS := constraints.txt

# On Linux, torch 2.13.0 is the CPU build (an unpinned torch pulls a multi-GB CUDA build).
ifeq ($(UNAME_S),Linux)
TORCH := torch==2.13.0
else
TORCH := torch
endif

.PHONY: demo test bench install clean lock

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "hotfolder needs Python 3.11 or newer: run make PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) "$(TORCH)"
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[diffusers,mlx,ray,test]"
	@touch $@

# Re-resolve every dependency from the open ranges in pyproject.toml in a scratch venv and write the
# versions it got into constraints.txt (torch without its local "+cpu" label, so the pin fits every OS).
# Run it, run `make test` on the result, and commit both together.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet "$(TORCH)"
	.venv-lock/bin/python -m pip install --quiet -e ".[diffusers,mlx,ray,test]"
	( echo "# Exact versions CI ran; made by \`make lock\` on $$(uname -sm), Python $$(.venv-lock/bin/python -c 'import platform; print(platform.python_version())')."; \
	  echo "# Used as pip constraints by the Makefile: packages this OS does not need are simply not installed."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | sed -e 's/+cpu$$//' | LC_ALL=C sort ) > $(CONSTRAINTS)
	rm -rf .venv-lock

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
	rm -rf $(VENV) .venv-lock build *.egg-info
