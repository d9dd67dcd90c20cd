#!/usr/bin/env bash
# Lint, types and tests with the existing .venv: what to run before every commit.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest -q "$@"
