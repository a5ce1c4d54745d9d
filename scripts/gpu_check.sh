#!/usr/bin/env bash
# The GPU check, for a lent CUDA machine: one command, at most 8 minutes, one JSON ($OUT/gpu_check.json, or ./).
# It runs on the machine's own python3 (CUDA torch, Lightning, torchdiffeq, torchmetrics already there) and installs
# what is missing from wheels carried in gpu_wheels/ (made here by: pip download torchsde jsonargparse[signatures]
# docstring-parser typeshed-client -d gpu_wheels --no-deps), then scoresde itself without dependencies.
#   bash scripts/gpu_check.sh            # on the GPU machine
#   bash scripts/gpu_check.sh --smoke-cpu  # every part on the CPU, to check the script
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ "${1:-}" = "--smoke-cpu" ]; then
  bash scripts/setup.sh
  PY=".venv/bin/python"
else
  if [ -d gpu_wheels ]; then
    "$PY" -m pip install --quiet --no-index --find-links gpu_wheels torchsde jsonargparse docstring-parser \
      typeshed-client 2>&1 | tail -2 || true
  fi
  "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | tail -2 || true
fi
out="${OUT:-.}/gpu_check.json"
timeout 480 "$PY" scripts/gpu_check.py --out "$out" "$@"
