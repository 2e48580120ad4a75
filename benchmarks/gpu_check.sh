#!/usr/bin/env bash
# The GPU check in one command, on a machine with one GPU whose Python has torch (CUDA),
# onnx and onnxruntime (the device machine): installs the carried wheels in .whl/ (the
# rest of compressflow's dependencies, see BENCHMARKS.md "GPU"), then runs
# benchmarks/gpu_check.py from the repository root with the arguments given. Results go
# to $OUT (the device tool's folder) or ./gpu-check: table.md, summaries.json, log.txt.
#
#   benchmarks/gpu_check.sh              # the GPU plan, under five minutes
#   benchmarks/gpu_check.sh --dry-run    # the jobs it would run
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Nothing outside the machine can be reached: no telemetry, no update checks.
export PYTHONUNBUFFERED=1 DO_NOT_TRACK=1 MLFLOW_ENABLE_TELEMETRY=false \
    PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_HOME=/tmp/compressflow-prefect
"$PY" -c "import prefect, mlflow, skopt, torch_pruning, pydantic, torch, onnx, onnxruntime" \
    || { echo "gpu_check.sh: a dependency is missing (see BENCHMARKS.md, GPU)" >&2; exit 2; }
exec "$PY" benchmarks/gpu_check.py "$@"
