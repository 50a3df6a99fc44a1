# Two commands do all the set-up: `make run` and `make test`.
# Both create .venv on first use and install the pinned stack (constraints.txt).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
# The embedded default: synthetic ratings (mf) and a synthetic event log (skipgram, gru), one store.
CONFIG ?= configs/default.toml configs/synthetic-events.toml
STORE  ?= latentstore-data
PYTEST_ARGS ?=
# Test files run on this many workers (one Spark session and one Prefect harness each); 0 runs them in this process.
TEST_WORKERS ?= 2
PARALLEL := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

export SPARK_LOCAL_IP ?= 127.0.0.1
export SPARK_CONF_DIR ?= $(CURDIR)/infra/spark
export DO_NOT_TRACK = 1
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

.PHONY: run test test-fast bench bench-scale clean-store help

help:
	@echo "make run    # install if needed, then run the pipeline on $(CONFIG) into $(STORE)/"
	@echo "make test   # install if needed, then run the whole test suite"
	@echo "make test-fast  # the tests that need neither Spark nor a Prefect server (about a minute)"
	@echo "make bench  # install the benchmark extra, run the benchmarks (writes benchmarks/results/*.json)"
	@echo "make bench-scale  # the stages at 1M and 25M ratings, Spark ALS, a 5M-event log (about an hour)"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/latentstore run $(CONFIG) --store $(STORE)

test: $(STAMP)
	$(PY) -m pytest $(PARALLEL) $(PYTEST_ARGS)

# No Spark session, no Prefect server, nothing slow: the tier to run while editing.
test-fast: $(STAMP)
	$(PY) -m pytest $(PARALLEL) -m "not spark and not prefect and not slow and not movielens" $(PYTEST_ARGS)

# gensim and faiss-cpu are references for the benchmarks only, never runtime dependencies.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) benchmarks/movielens.py
	$(PY) benchmarks/index.py
	$(PY) benchmarks/planted.py
	$(PY) benchmarks/sequences.py
	$(PY) benchmarks/skipgram.py
	$(PY) benchmarks/query.py
	$(PY) benchmarks/registry.py
	$(PY) benchmarks/fold_in.py

bench-scale: $(BENCH_STAMP)
	$(PY) benchmarks/scale.py

clean-store:
	rm -rf $(STORE)
