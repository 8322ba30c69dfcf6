# `make demo` and `make test` work on a fresh clone: they create .venv from requirements.lock.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Huge pages for large allocations: XLA's per-step activation buffers otherwise
# cost ~10% of a CPU train step in page faults (docs/performance.md, "Host allocator").
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: demo test test-slow test-all bench venv peft_venv clean

$(STAMP): requirements.lock setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prompt-tuning demo $(DEMO_ARGS)

# Two pytest workers (pytest-xdist, work stealing): most test time is single-threaded tracing,
# compiling and subprocess start-up, so two workers use both cores of a 2-core machine.
# TEST_WORKERS=0 runs in one process. The tests compile the same toy programs again and again
# (every toy run, in-process and in subprocesses): one JAX compilation cache, new for each run
# and removed after it, lets every later compile of a program load it instead (a third less time;
# the programs and their results are the same).
# `make test` is the developer's loop (under 15 minutes here): every test but those marked
# `slow` (over ~20 s each: multi-device and multi-process runs, whole commands end to end).
# `make test-slow` runs those; `make test-all` both in one pass; CI (.ci/run) runs both tiers.
TEST_WORKERS ?= 2
PYTEST = cache=$$(mktemp -d -t prompt-tuning-test-jax-cache.XXXXXX) && trap 'rm -rf "$$cache"' EXIT && \
	JAX_COMPILATION_CACHE_DIR=$$cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
	JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 \
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal tests
test: $(STAMP)
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PYTEST) -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PYTEST) $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run_all.py

# torch 2.13.0 CPU + transformers<5 + peft in .bench_venv/ (the PEFT bench and the tests that
# load our exports in PEFT; those skip without it).
peft_venv: $(STAMP)
	$(PY) -c 'import sys; sys.path.insert(0, "bench"); import run_all; run_all.ensure_peft_venv()'

clean:
	rm -rf $(VENV) .pytest_cache
