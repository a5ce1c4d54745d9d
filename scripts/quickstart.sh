#!/usr/bin/env bash
# The main job: set up, train a score model on the 2-D ring of Gaussians (VP SDE, about a minute on 2 CPU cores),
# sample 4,000 points with Euler–Maruyama, write runs/toy_vp/samples.png and print how close it is to the exact target.
# Extra arguments go to `scoresde fit`, e.g. --trainer.max_steps 6000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE="${WANDB_MODE:-offline}" WANDB_SILENT="${WANDB_SILENT:-true}"
exec .venv/bin/scoresde fit --config experiments/toy_vp.yaml "$@"
