#!/usr/bin/env bash
# The test suite: set up, then pytest (slow tests excluded; add `-m slow` to run only those).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=disabled WANDB_SILENT=true
exec .venv/bin/python -m pytest "$@"
