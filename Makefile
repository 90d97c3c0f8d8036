# `make demo` and `make test` bootstrap everything they need on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
LS_VENV := .venv-ls
BENCH_VENV := .venv-bench
LABEL_STUDIO_VERSION ?= 1.23.2
PIP_FLAGS ?= -q

.PHONY: help venv ls-venv bench-venv browser demo test test-unit test-integration lint audit format bench clean

help:
	@echo "make demo    one full active-learning round on synthetic blood smears"
	@echo "make test    unit + integration tests (PostgreSQL, Redis, Celery worker, Label Studio)"
	@echo "make test-unit | test-integration | lint | audit | format | bench | bench-venv | clean"

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) -U pip wheel setuptools
	$(BIN)/pip install $(PIP_FLAGS) -c constraints.txt -e '.[dev]'
	touch $@

# Label Studio pins its own Django stack, so it lives in its own venv (tests start it).
$(LS_VENV)/.installed: constraints-labelstudio.txt
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install $(PIP_FLAGS) -U pip
	$(LS_VENV)/bin/pip install $(PIP_FLAGS) -c constraints-labelstudio.txt \
	  label-studio==$(LABEL_STUDIO_VERSION)
	touch $@

# Reference detectors for benchmarks/bccd_detection.py only (ultralytics is AGPL): a venv
# of its own, never a labelloop dependency.
$(BENCH_VENV)/.installed: constraints.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install $(PIP_FLAGS) -U pip
	$(BENCH_VENV)/bin/pip install $(PIP_FLAGS) -c constraints.txt torch torchvision ultralytics
	touch $@

venv: $(BIN)/.installed
ls-venv: $(LS_VENV)/.installed
bench-venv: $(BENCH_VENV)/.installed

# Browser tests drive Debian's chromium through Playwright for Python (Playwright's own
# browser download is not used). Installed with apt-get when missing and we may.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -qq --no-install-recommends chromium >/dev/null \
	    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; \
	  else echo "chromium is missing: install Debian's chromium package for the browser tests" >&2; fi; }

demo: venv
	$(BIN)/labelloop demo

test: venv ls-venv browser
	$(BIN)/pytest

test-unit: venv
	$(BIN)/pytest tests/unit

test-integration: venv ls-venv browser
	$(BIN)/pytest tests/integration

# Known vulnerabilities in the dependencies (skipped, visibly, without the advisory database).
audit: venv
	BIN=$(BIN) bash .ci/audit

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv bench-venv
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf labelloop-demo .pytest_cache build *.egg-info
