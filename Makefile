# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODELS ?= flux-digits flux-digits-schnell zimage-digits wan-digits

.PHONY: demo test test-unit bench bench-ma bench-memory bench-speed gpu-check lint clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned to the local CPU build; then the package and its dev extras
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python benchmarks/run_demo.py --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

# the unit core alone (seconds per module; `make test` runs everything)
test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/run_bench.py --models "$(MODELS)" --out runs/bench

bench-memory: $(STAMP)
	$(BIN)/python benchmarks/bench_memory.py --out runs/memory

# torchao (the int8 peer) is a benchmark-only dependency, kept out of .venv (its import warnings
# would reach the CLI's stderr there): installed into .bench-deps, on the path of this target only
BENCH_DEPS := .bench-deps
bench-speed: $(STAMP)
	test -d $(BENCH_DEPS) || $(BIN)/pip install --quiet --no-deps --target $(BENCH_DEPS) 'torchao>=0.10'
	PYTHONPATH=$(BENCH_DEPS) $(BIN)/python benchmarks/bench_speed.py --out runs/speed

gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

bench-ma: $(STAMP)
	$(BIN)/python benchmarks/run_bench_ma.py --out runs/bench-ma

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) $(BENCH_DEPS) runs/demo
