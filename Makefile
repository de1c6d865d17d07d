# The two commands of the README: `make demo` and `make test`. Each does its own set-up.
# `make install` only installs; ./close-sync runs it when .venv is missing, then the console script.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test test-fast lint fuzz demo bench bench-pipeline clean

$(STAMP): setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not integration"

# The fuzz suite with FUZZ_SCALE times the examples `make test` runs, new random inputs each time,
# and hypothesis' statistics (examples run per test) at the end.
FUZZ_SCALE ?= 40
fuzz: $(STAMP)
	CLOSE_SYNC_FUZZ_EXAMPLES=$(FUZZ_SCALE) CLOSE_SYNC_FUZZ_RANDOM=1 $(VENV)/bin/pytest tests/fuzz \
		--timeout=0 --hypothesis-show-statistics

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(PY) -m pipeline.demo

bench: $(STAMP)
	$(PY) bench/sim_throughput.py
	$(PY) bench/engine_calls.py

bench-pipeline: $(STAMP)
	$(PY) bench/pipeline_bench.py W1 --scale 0.05 --time-scale 20
	$(PY) bench/pipeline_bench.py W2 --scale 0.05 --time-scale 20
	$(PY) bench/pipeline_bench.py W4 --scale 0.02 --time-scale 20

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
