# Two commands for a fresh machine: `make bench` and `make test` (see README).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SUITE  ?= quick

.PHONY: venv test bench lint format benchmark clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/implicit-bench run $(SUITE)
	$(VENV)/bin/implicit-bench report results/$(SUITE)

benchmark: $(STAMP)
	$(PY) -m pytest perf -q --benchmark-only --benchmark-json=results/benchmark.json

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache
