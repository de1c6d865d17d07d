# The two commands of the README: `make demo` and `make test`. Each does its own set-up.
# `make install` only installs; ./close-sync runs it when .venv is missing, then the console script.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install engines test test-fast lint fuzz demo bench bench-pipeline clean

$(STAMP): setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Apache Kafka for the Kafka tests (tests/servers.py runs it with `java`): the jars of
# engines/kafka/pom.xml from Maven Central, copied once per version (and pom change) into
# .cache/engines/kafka. Without mvn nothing is copied and the Kafka tests skip, as without java.
KAFKA_POM := engines/kafka/pom.xml
KAFKA_VERSION := $(shell sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' $(KAFKA_POM))
KAFKA_JARS := .cache/engines/kafka
KAFKA_STAMP := $(KAFKA_JARS)/.copied-$(KAFKA_VERSION)

$(KAFKA_STAMP): $(KAFKA_POM)
	@command -v mvn >/dev/null || { echo "engines: no mvn, so no Kafka jars: the Kafka tests will skip"; exit 0; }; \
	set -ex; \
	rm -rf $(KAFKA_JARS); \
	mvn -B -q -f $(KAFKA_POM) dependency:copy-dependencies -DoutputDirectory=$(abspath $(KAFKA_JARS)); \
	touch $(KAFKA_STAMP)

# Beam's Prism runner for the Prism tests (tests/pipeline/test_prism_runner.py): built once per
# version with `go install` from the Go module proxy into .cache/engines/prism, which is where
# `close-sync run --runner PrismRunner` looks for it (or $CLOSE_SYNC_PRISM; --prism_location overrides).
# Without go nothing is built and the Prism tests skip.
PRISM_VERSION := v2.77.0
PRISM_DIR := .cache/engines/prism
PRISM_STAMP := $(PRISM_DIR)/.built-$(PRISM_VERSION)

$(PRISM_STAMP):
	@command -v go >/dev/null || { echo "engines: no go, so no Prism binary: the Prism tests will skip"; exit 0; }; \
	set -ex; \
	rm -rf $(PRISM_DIR); \
	mkdir -p $(PRISM_DIR); \
	GOBIN=$(abspath $(PRISM_DIR)) go install github.com/apache/beam/sdks/v2/go/cmd/prism@$(PRISM_VERSION); \
	touch $(PRISM_STAMP)

engines: $(KAFKA_STAMP) $(PRISM_STAMP)

test: $(STAMP) engines
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
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
	$(VENV)/bin/lint-imports

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
	rm -rf $(VENV) .pytest_cache build *.egg-info .cache
