#!/usr/bin/env bash
# Create .venv and install scoresde with its test extras, from nothing. Safe to re-run: it reinstalls only when
# pyproject.toml changed. The torch pin takes the CPU wheel on CPU machines; on a GPU machine set TORCH_SPEC, e.g.
#   TORCH_SPEC="torch" bash scripts/setup.sh      # PyPI's default (CUDA) build
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
stamp=".venv/.scoresde-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "scoresde: setting up .venv (first run takes about a minute)" >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$TORCH_SPEC" -e ".[test]"
echo "$want" > "$stamp"
