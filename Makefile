# The two commands of the README:
#   make all    set up the environment and run every notebook (figures/, results/, build/report.html)
#   make test   set up the environment and run the test suite (incl. a smoke run of every notebook)
# make smoke writes build/smoke/ only: the committed figures/ and results/ stay as make all left them.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: all env notebooks smoke test lint lab bench

all: env notebooks

env:
	@bash scripts/env.sh

notebooks: env
	$(PY) run_all.py

smoke: env
	$(PY) run_all.py --smoke

test: env
	$(PY) -m pytest -q -p no:cacheprovider

lint: env
	$(VENV)/bin/ruff check .

# Jupyter refuses to start as root without --allow-root (containers often run as root).
lab: env
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

bench: env
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done
