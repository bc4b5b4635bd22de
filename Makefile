# Two commands for a fresh machine: `make bench` and `make test` (`make test-fast`: the quick
# tier, under a minute; see README).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SUITE  ?= quick

.PHONY: venv test test-fast bench lint format benchmark clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Both tiers; the 15 slowest tests are named at the end, to see which to speed up or mark.
test: $(STAMP)
	$(PY) -m pytest -q --durations=15

# The fast tier: every test not marked slow (the unit tests of every module), under a minute.
# One thread: this tier's tensors are tiny, too small for torch's thread pool to share out
# (tests/tiers.py says how a slow test is kept out of this tier).
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow" --durations=5

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
