# The README's two commands: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DURATION ?=
PORT ?=
DEMO_ARGS := $(if $(DURATION),--duration $(DURATION)) $(if $(PORT),--port $(PORT))
PYTEST_ARGS ?=

.PHONY: all venv demo test lint typecheck unit slow bench docs clean

all: test

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "streamedge needs Python 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/streamedge demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

# `make slow`: tests marked slow (long real-video checks); exit 5 means none are marked yet.
slow: $(STAMP)
	$(BIN)/pytest -m slow $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && echo "no slow tests selected" && rc=0; exit $$rc

test: lint typecheck unit

bench: $(STAMP)
	./scripts/run_benchmarks.sh

docs: $(STAMP)
	$(BIN)/python -c 'from streamedge.config import reference_markdown as r; open("docs/config-reference.md", "w").write(r())'
	$(BIN)/python -c 'from streamedge.worker.config import worker_reference_markdown as r; open("docs/worker-config-reference.md", "w").write(r())'

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
