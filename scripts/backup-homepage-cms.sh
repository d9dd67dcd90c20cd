#!/usr/bin/env bash
# The runbook's backup_homepage_cms.sh, corrected, and reporting its outcome to Prometheus.
#
# What changed from the runbook's script, and why (docs/runbook-sql.md):
# - No gzip: a custom-format dump (-F c) is compressed already, and `pg_restore --list` cannot
#   read a gzipped one: the runbook's verification always failed, and nobody was told.
# - Verification reads the dump back (`pg_restore --list`) and checks that every CMS table's
#   data is in it, before the dump is kept.
# - ACLs and policies stay in the dump (no --no-acl): a restore needs the grants anon relies on.
# - section_versions_archive is backed up too.
# - The outcome goes to node_exporter's textfile collector (TEXTFILE_DIR), written atomically:
#   homepage_backup_last_run_timestamp_seconds, ..._last_success_timestamp_seconds,
#   ..._last_size_bytes, ..._last_duration_seconds. HomepageBackupTooOld and
#   HomepageBackupFailed alert on them. A failed run keeps the previous success time.
#
# Environment: DATABASE_URL (a role that can read every CMS row: the table owner),
# BACKUP_DIR (default /backups/homepage_cms), TEXTFILE_DIR (default
# /var/lib/node_exporter/textfile_collector), KEEP_DAYS (default 7),
# UPLOAD_COMMAND (optional; run with the dump's path as its argument, e.g. 'aws s3 cp --').
# Schedule it as the runbook does: 0 */6 * * * /path/to/backup-homepage-cms.sh
set -euo pipefail

: "${DATABASE_URL:?set DATABASE_URL to the CMS database}"
backup_dir=${BACKUP_DIR:-/backups/homepage_cms}
textfile_dir=${TEXTFILE_DIR:-/var/lib/node_exporter/textfile_collector}
keep_days=${KEEP_DAYS:-7}
tables=(homepage_sections section_versions section_versions_archive section_schedules
        section_products section_categories media_assets)

started=$(date +%s)
stamp=$(date -u +%Y%m%d_%H%M%S)
dump="$backup_dir/homepage_cms_${stamp}.dump"
metrics="$textfile_dir/homepage_backup.prom"

previous_success() {
  [[ -f $metrics ]] || { echo 0; return; }
  awk '$1 == "homepage_backup_last_success_timestamp_seconds" {print $2; found=1}
       END {if (!found) print 0}' "$metrics"
}

record() {  # record SUCCESS_TIME SIZE
  local now tmp
  now=$(date +%s)
  mkdir -p "$textfile_dir"
  tmp=$(mktemp "$textfile_dir/.homepage_backup.XXXXXX")
  cat > "$tmp" <<EOF
# HELP homepage_backup_last_run_timestamp_seconds When the CMS backup script last finished, successful or not.
# TYPE homepage_backup_last_run_timestamp_seconds gauge
homepage_backup_last_run_timestamp_seconds $now
# HELP homepage_backup_last_success_timestamp_seconds When the CMS backup script last produced a verified dump.
# TYPE homepage_backup_last_success_timestamp_seconds gauge
homepage_backup_last_success_timestamp_seconds $1
# HELP homepage_backup_last_size_bytes Size of the last verified dump.
# TYPE homepage_backup_last_size_bytes gauge
homepage_backup_last_size_bytes $2
# HELP homepage_backup_last_duration_seconds How long the last run took.
# TYPE homepage_backup_last_duration_seconds gauge
homepage_backup_last_duration_seconds $((now - started))
EOF
  chmod 0644 "$tmp"
  mv -f "$tmp" "$metrics"  # atomic: node_exporter never reads half a file
}

fail() {
  echo "backup-homepage-cms: $*" >&2
  rm -f "$dump.partial"
  record "$(previous_success)" 0
  exit 1
}

mkdir -p "$backup_dir" || fail "cannot create $backup_dir"
args=()
for table in "${tables[@]}"; do args+=(-t "public.$table"); done
pg_dump --dbname="$DATABASE_URL" "${args[@]}" -F c -f "$dump.partial" \
  || fail "pg_dump failed (see above); no dump kept"

listing=$(pg_restore --list "$dump.partial") || fail "the dump cannot be read back: $dump.partial"
for table in "${tables[@]}"; do
  grep -Eq "TABLE DATA public $table " <<<"$listing" || fail "the dump has no data for $table"
done
mv "$dump.partial" "$dump"

if [[ -n ${UPLOAD_COMMAND:-} ]]; then
  # shellcheck disable=SC2086  # the command is words by design ('aws s3 cp --')
  $UPLOAD_COMMAND "$dump" || fail "upload failed: $UPLOAD_COMMAND $dump"
fi

find "$backup_dir" -name 'homepage_cms_*.dump' -mtime +"$keep_days" -delete
record "$(date +%s)" "$(stat -c %s "$dump")"
echo "backup-homepage-cms: verified $dump ($(stat -c %s "$dump") bytes)"
