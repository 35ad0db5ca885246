# The only two commands a user needs on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow lint install kernels clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# torch first, pinned, in its own step: a bare `torch` would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev]'
	$(VENV)/bin/moola features compile || echo "note: no ahead-of-time feature kernels (a C compiler is needed); builds use Numba's JIT"
	touch $(STAMP)

install: $(STAMP)

# the feature kernels ahead of time again, after editing one (make install runs it once)
kernels: $(STAMP)
	$(VENV)/bin/moola features compile

demo: $(STAMP)
	$(VENV)/bin/moola demo --out demo_out

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src
	$(VENV)/bin/python -m pytest -q -m "not slow"

# the whole suite, the `slow` tests included (a local Ray cluster, kill -9 loops, real sweeps)
test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo_out .pytest_cache
