#!/usr/bin/env bash
# Lint, types and tests with the existing .venv: what to run before every commit.
# The daily loop: ./scripts/check.sh -m "not slow" (unit tests and every query's answers on
# PostgreSQL 15: 28 s with lint and types on a quiet 2-core machine); without -m, the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache  # the layer contracts in pyproject.toml
.venv/bin/pytest -q -n auto --maxprocesses 4 --dist loadfile "$@"
