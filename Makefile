# Two commands set up everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv when it is missing and installs what it needs (re-installing only
# when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SF     := $(VENV)/bin/scopeflow

.PHONY: demo test bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	$(SF) demo $(DEMO_ARGS)

test: lint
	$(PY) -m pytest

bench: $(VENV)/.installed-dev
	mkdir -p runs
	$(SF) bench transport --json runs/bench-transport.json
	$(SF) bench simulate --json runs/bench-simulate.json
	$(SF) bench models --json runs/bench-models.json
	$(SF) bench autofocus --trials 200 --json runs/bench-autofocus.json
	$(SF) bench aenet-response --json runs/bench-aenet-response.json

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check scopeflow scopeflow_lab tests
	$(VENV)/bin/ruff format --check scopeflow scopeflow_lab tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
