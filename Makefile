# negrl: `make demo` runs the embedded default (model=tiny, CPU); `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-slow lint bench figures clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) train.py

# Across the cores (pytest-xdist, one thread per worker); the ten slowest tests are listed at the end.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n auto --dist worksteal --durations=10

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Timing, not a test: BENCH_ARGS='--model pythia-70m --steps 3 --precision bf16-mixed'
# SWEEP_ARGS='--model pythia-160m --data paper --precision bf16-mixed' (runs per hour, stacked vs separate)
BENCH_ARGS ?= --model tiny --steps 5
SWEEP_ARGS ?= --model tiny --data small --stacks 1,2,4,8
bench: $(STAMP)
	$(PY) -m negrl.tools.bench $(BENCH_ARGS) --json bench.json
	$(PY) -m negrl.tools.sweep_bench $(SWEEP_ARGS) --json sweep-bench.json

# docs/figures/ from real runs of the presets' CPU twins, one run after another, drawn by negrl-report (captions in
# docs/figures/README.md): FIGURE_SCALE=full runs the presets as they are (hours); small: data=small, fewer seeds (~2 h).
FIGURE_SCALE ?= full
figures: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m negrl.tools.figures --scale $(FIGURE_SCALE)

lint: $(STAMP)
	$(PY) -m ruff check negrl tests train.py hydra_plugins

clean:
	rm -rf runs multirun outputs wandb .pytest_cache bench.json sweep-bench.json
