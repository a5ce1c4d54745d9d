#!/usr/bin/env bash
# The guards: ruff (lint and format) and mypy over scoresde/, configured in pyproject.toml. Sets up .venv first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check scoresde
.venv/bin/ruff format --check scoresde
.venv/bin/mypy
