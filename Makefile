# Two commands do everything on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Exact pins for this environment (the CPU torch wheel); pyproject.toml has only ranges.
CONSTRAINTS ?= constraints/cpu.txt

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_UI_ENABLED := false
export MLFLOW_ENABLE_TELEMETRY := false
export DO_NOT_TRACK := 1

.PHONY: demo test lint format typecheck bench docs clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The constraints pin torch to the local CPU wheel, not a multi-GB CUDA build.
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf demo
	$(VENV)/bin/compressflow run --job jobs/demo.yaml --summary-json demo/summary.json
	@echo
	@echo "Open the MLflow UI on the demo's record:"
	@echo "  $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///demo/mlflow.db --port 5000"

test: $(STAMP) lint typecheck
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The demo's speedup, checked independently of the search on its exported ONNX files
# (benchmarks/onnx_check.py, as in BENCHMARKS.md); runs the demo first if it has not run.
bench: $(STAMP)
	test -f demo/summary.json || $(MAKE) demo
	$(PY) benchmarks/onnx_check.py demo/summary.json

# The documentation site in site/ (make test builds it too: tests/test_docs.py).
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf site demo compressflow-out mlruns mlflow.db mlartifacts .mypy_cache .ruff_cache .pytest_cache
