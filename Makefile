# The two commands of the README:
#   make all    set up the environment and run every notebook (figures/, results/, build/report.html)
#   make test   set up the environment and run the test suite (incl. a smoke run of every notebook)
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

lab: env
	$(VENV)/bin/jupyter lab notebooks/

bench: env
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done
