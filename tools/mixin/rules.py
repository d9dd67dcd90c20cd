"""Prometheus recording and alerting rules for the Homepage CMS, from the thresholds file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from exporter.incidents import Incident, incidents
from tools.mixin.thresholds import Thresholds

WARNING, CRITICAL = "warning", "critical"

# Recording rules shared by alerts and the dashboard.
CACHE_HIT_RATIO = "homepage:postgres_cache_hit:ratio_rate5m"
PUBLISH_SUCCESS_7D = "homepage:publish_success:ratio_7d"
RENDER_P95 = "homepage:render_duration_seconds:p95_1h"
CMS_TABLES_BYTES = "homepage:cms_table_size_bytes:sum"
CONNECTIONS_RATIO = "homepage:postgres_connections:ratio"
TRANSACTIONS_RATE = "homepage:postgres_transactions:rate5m"

# (group, record, expr). Each sits in the group of the alerts that read it: rules in one group
# are evaluated in order, groups concurrently, so an alert in another group could read the
# previous evaluation's value.
RECORDING_RULES: tuple[tuple[str, str, str], ...] = (
    (
        "publishing",
        PUBLISH_SUCCESS_7D,
        # Over the schedules that were tried: a cancelled (or still pending) one is no failure.
        'homepage_section_schedules_processed_7d{status="completed"} / ignoring (status)'
        " (sum without (status)"
        ' (homepage_section_schedules_processed_7d{status=~"completed|failed"}))',
    ),
    (
        "capacity",
        RENDER_P95,
        "quantile_over_time(0.95, homepage_render_duration_seconds[1h])",
    ),
    ("capacity", CMS_TABLES_BYTES, "sum without (table) (homepage_cms_table_size_bytes)"),
    (
        "capacity",
        CONNECTIONS_RATIO,
        # Every database's client connections over the slots a non-superuser may take.
        "homepage_postgres_server_connections\n/ (homepage_postgres_max_connections"
        " - homepage_postgres_reserved_connections)",
    ),
    (
        "database",
        CACHE_HIT_RATIO,
        "rate(homepage_postgres_blocks_hit_total[5m])"
        " / (rate(homepage_postgres_blocks_hit_total[5m])"
        " + rate(homepage_postgres_blocks_read_total[5m]))",
    ),
    (
        "database",
        TRANSACTIONS_RATE,
        "rate(homepage_postgres_transactions_committed_total[5m])"
        " + rate(homepage_postgres_transactions_rolled_back_total[5m])",
    ),
)


@dataclass(frozen=True, slots=True)
class Alert:
    """One alerting rule; `description` says what happened and what to do first."""

    name: str
    severity: str
    expr: str
    for_: str
    summary: str
    description: str
    group: str
    labels: tuple[tuple[str, str], ...] = ()

    def rule(self, runbook_url: str) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_ != "0m":
            rule["for"] = self.for_
        rule["labels"] = {"severity": self.severity, **dict(self.labels)}
        rule["annotations"] = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": f"{runbook_url}#{self.name.lower()}",
        }
        return rule


def _g(value: float) -> str:
    """A threshold as PromQL writes it: 0.5, 15, 10737418240."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# Checks whose alerts page: when one is blind its alerts resolve without anything being fixed.
PAGING_CHECKS = (
    "homepage_render|anon_visibility|sections|scheduled_publishes|publish_failures|cron_jobs"
    "|table_rls|wal_archiving"
)


def _tiered(
    name: str,
    group: str,
    metric_expr: str,
    tiers: tuple[float, float],
    for_: tuple[str, str],
    summary: str,
    description: str,
    *,
    below: bool = False,
) -> Iterator[Alert]:
    op = "<" if below else ">"
    for severity, threshold, duration in (
        (WARNING, tiers[0], for_[0]),
        (CRITICAL, tiers[1], for_[1]),
    ):
        yield Alert(
            name,
            severity,
            f"{metric_expr} {op} {_g(threshold)}",
            duration,
            summary,
            description,
            group,
        )


def incident_alert(incident: Incident, t: Thresholds) -> Alert:
    """An incident of the runbook's triage as its alerting rule (the condition is rendered from
    the definition triage and the status page evaluate)."""
    return Alert(
        incident.alert,
        incident.severity.value,
        incident.expr(t.model_dump()),
        incident.for_,
        incident.summary,
        incident.description,
        incident.group,
        incident.labels,
    )


def alerts(t: Thresholds) -> list[Alert]:
    """Every alert, in the order of the runbook."""
    job = t.exporter_job
    out: list[Alert] = [
        # --- the runbook's incidents (P1, P2, P3): defined once, in exporter/incidents.py ---
        *(incident_alert(i, t) for i in incidents(t.cms_cron_job, t.cms_cron_owner)),
        # --- capacity -----------------------------------------------------------------------
        *_tiered(
            "MediaStorageHigh",
            "capacity",
            "homepage_media_storage_percent",
            (t.media_storage_percent.warning, t.media_storage_percent.critical),
            ("1h", "15m"),
            "Media storage is filling up.",
            "Media storage on {{ $labels.instance }} is at {{ $value | humanize }}% of the"
            " quota. Archive unused media (homepage_media_unused_bytes shows how much).",
        ),
        *_tiered(
            "VersionTableLarge",
            "capacity",
            'homepage_cms_table_size_bytes{table="section_versions"}',
            (t.version_table_bytes.warning, t.version_table_bytes.critical),
            ("1h", "1h"),
            "The section_versions table is large.",
            "section_versions on {{ $labels.instance }} is {{ $value | humanize1024 }}B. Check"
            " that the weekly version cleanup runs and archives.",
        ),
        Alert(
            "HomepageSectionsPerLocaleHigh",
            WARNING,
            f"homepage_sections > {_g(t.sections_per_locale)}",
            "1h",
            "A locale has many sections.",
            "Locale {{ $labels.locale }} on {{ $labels.instance }} has {{ $value }} sections."
            " Review the section architecture (runbook capacity planning).",
            "capacity",
        ),
        Alert(
            "HomepageVersionsPerSectionHigh",
            WARNING,
            f"homepage_section_versions_per_section_max > {_g(t.versions_per_section)}",
            "1h",
            "A section has many versions.",
            "A section on {{ $labels.instance }} has {{ $value }} versions. Implement or check"
            " the archival strategy.",
            "capacity",
        ),
        Alert(
            "HomepageMediaAssetsHigh",
            WARNING,
            f"homepage_media_assets > {_g(t.media_assets)}",
            "1h",
            "There are many media assets.",
            "{{ $labels.instance }} holds {{ $value }} media assets. Plan a CDN and compression"
            " (runbook capacity planning).",
            "capacity",
        ),
        Alert(
            "HomepageCMSTablesLarge",
            WARNING,
            f"{CMS_TABLES_BYTES} > {_g(t.cms_tables_bytes)}",
            "1h",
            "The CMS tables are large.",
            "The CMS tables on {{ $labels.instance }} take {{ $value | humanize1024 }}B."
            " Consider partitioning section_versions by created_at.",
            "capacity",
        ),
        Alert(
            "HomepageRenderLatencyP95High",
            WARNING,
            f"{RENDER_P95} > {_g(t.render_p95_seconds)}",
            "1h",
            "Homepage render latency p95 is high.",
            "The 95th percentile of get_homepage_content('{{ $labels.locale }}') over the last"
            " hour is {{ $value | humanizeDuration }} on {{ $labels.instance }}. Optimise the"
            " function or add indexes (runbook query optimization).",
            "capacity",
        ),
        Alert(
            "HomepageVersionArchiveBacklog",
            WARNING,
            f"homepage_section_versions_archive_backlog_seconds > {_g(t.archive_backlog_seconds)}",
            "1h",
            "Old versions are not being archived.",
            "A version on {{ $labels.instance }} has been archivable for"
            " {{ $value | humanizeDuration }}: the weekly cleanup has missed two runs. Run it by"
            " hand and read its log.",
            "capacity",
        ),
        *_tiered(
            "PostgresConnectionsHigh",
            "capacity",
            CONNECTIONS_RATIO,
            (t.connections_ratio, t.connections_ratio_critical),
            ("10m", "5m"),
            "PostgreSQL is close to max_connections.",
            "{{ $labels.instance }} uses {{ $value | humanizePercentage }} of the connections"
            " max_connections leaves to non-superusers, all databases together. Check the"
            " pooler's pool size and idle sessions (pg_stat_activity by application_name) before"
            " new connections are refused.",
        ),
        # --- database health ------------------------------------------------------------------
        Alert(
            "PostgresCacheHitRatioLow",
            WARNING,
            f"{CACHE_HIT_RATIO} < {_g(t.cache_hit_ratio)}",
            "30m",
            "The buffer cache hit ratio is low.",
            "Only {{ $value | humanizePercentage }} of block reads on {{ $labels.instance }} hit"
            " the buffer cache over 5 minutes. Look for sequential scans and a working set"
            " larger than shared_buffers.",
            "database",
        ),
        Alert(
            "PostgresExtensionMissing",
            WARNING,
            'homepage_postgres_extension_installed{extension=~"pg_cron|pg_stat_statements"} == 0',
            "15m",
            "An extension the runbook relies on is missing.",
            "Extension {{ $labels.extension }} is not installed on {{ $labels.instance }}; its"
            " checks are skipped. CREATE EXTENSION {{ $labels.extension }}.",
            "database",
        ),
        Alert(
            "PostgresTransactionIDAgeHigh",
            WARNING,
            "homepage_postgres_xid_age\n"
            "/ on (instance, job) homepage_postgres_autovacuum_freeze_max_age"
            f" > {_g(t.xid_age_freeze_ratio)}",
            "1h",
            "Autovacuum is not keeping transaction IDs frozen.",
            "The oldest unfrozen transaction ID on {{ $labels.instance }} is"
            " {{ $value | humanize }} times autovacuum_freeze_max_age: autovacuum's freezing"
            " vacuum cannot keep up. Look for long open transactions, inactive replication slots"
            " and prepared transactions, then VACUUM (FREEZE) the oldest tables.",
            "database",
        ),
        Alert(
            "PostgresTransactionIDWraparoundNear",
            CRITICAL,
            f"homepage_postgres_xid_age > {_g(t.xid_age_critical)}",
            "5m",
            "Transaction ID wraparound is approaching.",
            "The oldest unfrozen transaction ID on {{ $labels.instance }} is"
            " {{ $value | humanize }} transactions old; at about 2.1 billion PostgreSQL refuses"
            " every write. End long open transactions and inactive replication slots, then"
            " VACUUM (FREEZE) the oldest tables now (runbook section on this alert).",
            "database",
        ),
        Alert(
            "PostgresReplicationSlotInactive",
            WARNING,
            "homepage_postgres_replication_slot_retained_wal_bytes"
            f" > {_g(t.replication_slot_inactive_bytes)}\n"
            "and on (instance, job, slot) homepage_postgres_replication_slot_active == 0",
            "30m",
            "An inactive replication slot holds back WAL.",
            "Slot {{ $labels.slot }} ({{ $labels.slot_type }}) on {{ $labels.instance }} has no"
            " client and retains {{ $value | humanize1024 }}B of WAL, growing until the disk is"
            " full. If its subscriber or standby is gone, SELECT"
            " pg_drop_replication_slot('{{ $labels.slot }}').",
            "database",
        ),
        Alert(
            "PostgresReplicationSlotRetainingWAL",
            CRITICAL,
            "homepage_postgres_replication_slot_retained_wal_bytes"
            f" > {_g(t.replication_slot_retained_bytes)}",
            "5m",
            "A replication slot retains WAL that fills the disk.",
            "Slot {{ $labels.slot }} ({{ $labels.slot_type }}) on {{ $labels.instance }} retains"
            " {{ $value | humanize1024 }}B of WAL. Drop it if its client is gone; otherwise find"
            " why its client lags; max_slot_wal_keep_size caps what a slot may keep.",
            "database",
        ),
        Alert(
            "PostgresIdleInTransaction",
            WARNING,
            f"homepage_postgres_idle_in_transaction_seconds > {_g(t.idle_in_transaction_seconds)}",
            "5m",
            "A session has been idle in a transaction for long.",
            "A session on {{ $labels.instance }} has sat idle inside an open transaction for"
            " {{ $value | humanizeDuration }}: it holds its locks and stops vacuum. Find it in"
            " pg_stat_activity (state 'idle in transaction') and end it; consider"
            " idle_in_transaction_session_timeout.",
            "database",
        ),
        # --- the exporter itself ----------------------------------------------------------------
        Alert(
            "HomepageExporterDown",
            CRITICAL,
            f'up{{job="{job}"}} == 0',
            "5m",
            "The Homepage CMS exporter is down.",
            "Prometheus cannot scrape {{ $labels.instance }}: nothing watches the homepage"
            " database. Check the exporter's process and logs.",
            "exporter",
        ),
        Alert(
            "HomepageExporterTargetMissing",
            CRITICAL,
            f'absent(up{{job="{job}"}})',
            "5m",
            "Prometheus has no Homepage CMS exporter to scrape.",
            f"No target of job {job} is in Prometheus's service discovery:"
            " nothing watches the homepage database, and no other"
            " alert of it can fire. Check the scrape config and the file or service discovery"
            " that lists the exporter.",
            "exporter",
        ),
        Alert(
            "HomepageDatabaseUnreachable",
            CRITICAL,
            "homepage_exporter_database_up == 0",
            "2m",
            "The exporter cannot reach the CMS database.",
            "{{ $labels.instance }} cannot connect to its database. Its log names the cause"
            " (authentication, DNS, refused); check the database and the pooler.",
            "exporter",
        ),
        Alert(
            "HomepageExporterQueryFailing",
            WARNING,
            "homepage_exporter_query_up == 0",
            "10m",
            "A monitoring query keeps failing.",
            "Query {{ $labels.query }} fails on {{ $labels.instance }}, so its checks are blind."
            " Its error is in the exporter's log and in homepage_exporter_query_errors_total.",
            "exporter",
        ),
        Alert(
            "HomepageExporterQueryStale",
            WARNING,
            "time() - homepage_exporter_query_last_success_timestamp_seconds\n"
            "> on (instance, job, query) homepage_exporter_query_stale_after_seconds",
            "5m",
            "A monitoring query has no fresh result.",
            "Query {{ $labels.query }} on {{ $labels.instance }} last succeeded"
            " {{ $value | humanizeDuration }} ago, beyond its staleness window.",
            "exporter",
        ),
        Alert(
            "HomepageExporterQuerySkipped",
            WARNING,
            'homepage_exporter_query_skipped{requirement=~"(relation|column|function):.*"} == 1',
            "15m",
            "A check is skipped: the database lacks what it reads.",
            "Query {{ $labels.query }} on {{ $labels.instance }} is not run: the database has no"
            " {{ $labels.requirement }}. Run exporter/sql/exporter_role.sql if the object is in"
            " schema homepage_exporter; else set the CMS's vocabulary (README, Your CMS's"
            " vocabulary). A deployment mistake, never a page: the check stays blind until fixed.",
            "exporter",
        ),
        # --- runbook coverage added with the alert-quality review ----------------------------
        Alert(
            "HomepagePublishSuccessRateLow",
            WARNING,
            f"{PUBLISH_SUCCESS_7D} < {_g(t.publish_success_ratio_7d)}\n"
            "and on (instance, job) sum without (status)"
            f" (homepage_section_schedules_processed_7d) >= {_g(t.publish_success_min_7d)}",
            "1h",
            "The weekly publish success rate is low.",
            "Only {{ $value | humanizePercentage }} of the scheduled publishes processed on"
            " {{ $labels.instance }} in the last 7 days succeeded. Group the failures by"
            " error_message in section_schedules (weekly checklist).",
            "publishing",
        ),
        Alert(
            "HomepageMediaQuotaUnset",
            WARNING,
            "homepage_media_assets unless on (instance, job) homepage_media_storage_quota_bytes",
            "1h",
            "The media storage quota is not configured.",
            "{{ $labels.instance }} does not know the media quota, so MediaStorageHigh can never"
            " fire. Set HOMEPAGE_EXPORTER_MEDIA_STORAGE_QUOTA_BYTES to your storage plan's size.",
            "capacity",
        ),
        Alert(
            "HomepageVersionGrowthHigh",
            WARNING,
            "homepage_section_versions_created_30d\n"
            "/ (homepage_section_versions - homepage_section_versions_created_30d)"
            f" > {_g(t.version_growth_30d)}\n"
            "and (homepage_section_versions - homepage_section_versions_created_30d)"
            f" > {_g(t.version_growth_min_versions)}",
            "1h",
            "Section versions grow fast.",
            "Section versions on {{ $labels.instance }} grew {{ $value | humanizePercentage }}"
            " in 30 days. Check the archive job and the editors' workflow (runbook capacity:"
            " version table growth).",
            "capacity",
        ),
        *_tiered(
            "PostgresDatabaseSizeHigh",
            "capacity",
            "homepage_postgres_database_size_bytes",
            (t.database_size_bytes.warning, t.database_size_bytes.critical),
            ("1h", "1h"),
            "The database outgrows its instance size.",
            "The database on {{ $labels.instance }} holds {{ $value | humanize1024 }}B. The"
            " runbook moves to Medium above 10 GB and to Large above 50 GB (vertical scaling).",
        ),
        *_tiered(
            "PostgresConnectionCountHigh",
            "capacity",
            "homepage_postgres_connections",
            (t.connections.warning, t.connections.critical),
            ("15m", "15m"),
            "Connections outgrow the instance size.",
            "{{ $value }} connections to the CMS database on {{ $labels.instance }}. The"
            " runbook moves to Medium above 100 and to Large above 500; check clients use the"
            " pooler.",
        ),
        Alert(
            "HomepageTableVacuumStale",
            WARNING,
            "time() - homepage_cms_table_last_vacuumed_timestamp_seconds"
            f" > {_g(t.vacuum_age_seconds)}\n"
            "and on (instance, job, table)"
            f" homepage_cms_table_dead_rows > {_g(t.bloat_min_dead_rows)}",
            "1h",
            "A CMS table has not been vacuumed this week.",
            "{{ $labels.table }} on {{ $labels.instance }} was last vacuumed"
            " {{ $value | humanizeDuration }} ago and has dead rows. Run the weekly VACUUM"
            " ANALYZE and check autovacuum.",
            "database",
        ),
        Alert(
            "PostgresWALArchiveFailing",
            CRITICAL,
            "homepage_postgres_wal_last_archive_failure_timestamp_seconds\n"
            "> on (instance, job) homepage_postgres_wal_last_archived_timestamp_seconds",
            "5m",
            "WAL archiving is failing.",
            "The last attempt to archive WAL on {{ $labels.instance }} failed and none has"
            " succeeded since: point-in-time recovery stops at the last archived segment. Read"
            " the server log for archive_command's error.",
            "backups",
        ),
        Alert(
            "PostgresWALArchiveBehindRPO",
            CRITICAL,
            # Where WAL was written one RPO ago, past where the archive ends now: that WAL is
            # older than the RPO and not archived, whether a segment filled or not.
            f"homepage_postgres_wal_position_bytes offset {_g(t.rpo_seconds)}s\n"
            "- on (instance, job) homepage_postgres_wal_archived_position_bytes > 0",
            "1m",
            "WAL archiving is behind the RPO.",
            "{{ $value | humanize1024 }}B of WAL written on {{ $labels.instance }} more than"
            " 5 minutes ago is not archived: a restore now would lose more than the RPO allows."
            " Check archive_command in the server log, and archive_timeout on a quiet database.",
            "backups",
        ),
        Alert(
            "PostgresArchiveTimeoutAboveRPO",
            WARNING,
            "(homepage_postgres_archive_timeout_seconds == 0"
            f" or homepage_postgres_archive_timeout_seconds > {_g(t.rpo_seconds)})\n"
            "and on (instance, job) homepage_postgres_wal_archiving_enabled == 1",
            "1h",
            "archive_timeout lets WAL wait longer than the RPO.",
            "archive_timeout on {{ $labels.instance }} is {{ $value }} s (0 is off): on a quiet"
            " database a written WAL segment waits that long (or until it fills) to be archived,"
            " longer than the 5-minute RPO. Set archive_timeout to 60s or so.",
            "backups",
        ),
        Alert(
            "HomepageBackupMetricsMissing",
            WARNING,
            "absent(homepage_backup_last_run_timestamp_seconds)",
            f"{int(t.backup_age_seconds // 60)}m",
            "No CMS backup has ever reported.",
            "Prometheus has no homepage_backup_last_run_timestamp_seconds from any instance:"
            " scripts/backup-homepage-cms.sh never ran, or"
            " node_exporter does not read its TEXTFILE_DIR, so HomepageBackupTooOld cannot fire."
            " Run the script by hand and check node_exporter's --collector.textfile.directory.",
            "backups",
        ),
        Alert(
            "HomepageBackupTooOld",
            WARNING,
            f"time() - homepage_backup_last_success_timestamp_seconds > {_g(t.backup_age_seconds)}",
            "15m",
            "The last verified CMS backup is more than a day old.",
            "The last verified backup recorded on {{ $labels.instance }} finished"
            " {{ $value | humanizeDuration }} ago. Run scripts/backup-homepage-cms.sh by hand and"
            " read its output.",
            "backups",
        ),
        Alert(
            "HomepageBackupFailed",
            WARNING,
            "homepage_backup_last_run_timestamp_seconds\n"
            "> on (instance, job) homepage_backup_last_success_timestamp_seconds",
            "0m",
            "The last CMS backup run failed.",
            "The last backup run recorded on {{ $labels.instance }} did not produce a verified"
            " dump. Run scripts/backup-homepage-cms.sh by hand and read its output.",
            "backups",
        ),
        Alert(
            "HomepageCheckBlind",
            CRITICAL,
            f'homepage_exporter_query_up{{query=~"{PAGING_CHECKS}"}} == 0',
            "5m",
            "A paging check is blind.",
            "Query {{ $labels.query }} fails on {{ $labels.instance }}: the alerts that depend on"
            " it cannot fire, and any that were firing have resolved without a fix. Its error is"
            " in the exporter's log.",
            "exporter",
        ),
        *advisor_alerts(),
        Alert(
            "HomepageExporterConfigReloadFailed",
            WARNING,
            "homepage_exporter_config_last_reload_successful == 0",
            "5m",
            "The exporter's last config reload failed.",
            "{{ $labels.instance }} rejected its queries file on reload and runs the previous"
            " one. Run homepage-cms-exporter check to see why.",
            "exporter",
        ),
    ]
    return out


# Supabase's database advisor lints on the CMS's objects (query `security_advisor`):
# (lint, alert, severity, for, summary, what is wrong with the object and what to do).
# rls_disabled_in_public has no alert of its own: HomepageTableRLSDisabled pages for it.
ADVISOR_LINTS: tuple[tuple[str, str, str, str, str, str], ...] = (
    (
        "anon_security_definer_function_executable",
        "HomepageSecurityDefinerExposedToAnon",
        CRITICAL,
        "5m",
        "A SECURITY DEFINER CMS function is executable by anon.",
        "runs with its owner's rights and bypasses row level security, yet anyone with the"
        " public anon key can call it through the REST API's /rpc. REVOKE EXECUTE ON FUNCTION"
        " ... FROM PUBLIC, anon, authenticated; GRANT it to service_role only.",
    ),
    (
        "authenticated_security_definer_function_executable",
        "HomepageSecurityDefinerExposedToAuthenticated",
        WARNING,
        "15m",
        "A SECURITY DEFINER CMS function is executable by every signed-in user.",
        "bypasses row level security for any signed-in user of the shop. Revoke EXECUTE from"
        " authenticated (and PUBLIC) unless every customer may really call it.",
    ),
    (
        "function_search_path_mutable",
        "HomepageFunctionSearchPathMutable",
        WARNING,
        "1h",
        "A CMS function has no fixed search_path.",
        "resolves names through the caller's search_path; for a SECURITY DEFINER function a"
        " caller's object can take the place of a table. ALTER FUNCTION ... SET search_path ="
        " public, pg_temp.",
    ),
    (
        "policy_exists_rls_disabled",
        "HomepagePolicyWithoutRLS",
        WARNING,
        "15m",
        "A CMS table has policies but row level security is off.",
        "has policies that do nothing while row level security is disabled: every row is"
        " open through the API. ALTER TABLE ... ENABLE ROW LEVEL SECURITY.",
    ),
    (
        "rls_enabled_no_policy",
        "HomepageRLSWithoutPolicy",
        WARNING,
        "15m",
        "A CMS table has row level security on and no policy.",
        "returns no rows to anon and authenticated. If the table is private, add an explicit"
        " policy for the role that uses it; if the homepage reads it, it is blank.",
    ),
    (
        "unindexed_foreign_keys",
        "HomepageForeignKeyUnindexed",
        WARNING,
        "1h",
        "A CMS foreign key has no index.",
        "has no index that starts with its columns: deleting or updating a referenced row"
        " scans the whole table. CREATE INDEX CONCURRENTLY on its columns.",
    ),
    (
        "duplicate_index",
        "HomepageDuplicateIndex",
        WARNING,
        "1h",
        "A CMS table has identical indexes.",
        "are identical: every write maintains both. DROP INDEX CONCURRENTLY all but one.",
    ),
    (
        "invalid_index",
        "HomepageIndexLeftInvalid",
        WARNING,
        "1h",
        "A CMS index is invalid.",
        "is invalid (a failed CREATE INDEX CONCURRENTLY leaves one): it is maintained but never"
        " used. REINDEX INDEX CONCURRENTLY, or drop and create it again.",
    ),
    (
        "exporter_role_changed",
        "HomepageExporterRoleChanged",
        WARNING,
        "5m",
        "Someone used the exporter's role to write.",
        "was left by the exporter's own role, which the exporter never does (each of its runs"
        " ends in ROLLBACK): whoever holds its password stored a large object or turned off its"
        " read-only default or statement timeout. Change the password first, then clean up as"
        " the runbook says.",
    ),
)
# Lints of ours, not Supabase's advisor.
OUR_LINTS = frozenset({"exporter_role_changed"})


def advisor_alerts() -> Iterator[Alert]:
    for lint, name, severity, for_, summary, what in ADVISOR_LINTS:
        yield Alert(
            name,
            severity,
            f'homepage_cms_security_finding{{lint="{lint}"}} == 1',
            for_,
            summary,
            "{{ $labels.object }} on {{ $labels.instance }} "
            + what
            + (" (lint " if lint in OUR_LINTS else " (Supabase advisor lint ")
            + f'{lint}; homepage_cms_security_findings{{lint="{lint}"}} counts every offender.)',
            "security",
        )


GROUP_TITLES = {
    "homepage": "homepage-cms.homepage",
    "publishing": "homepage-cms.publishing",
    "capacity": "homepage-cms.capacity",
    "database": "homepage-cms.database",
    "backups": "homepage-cms.backups",
    "security": "homepage-cms.security",
    "exporter": "homepage-cms.exporter",
}


def rule_groups(t: Thresholds) -> dict[str, Any]:
    """The whole rules file: per group, its recording rules first, then its alerts."""
    by_group: dict[str, list[dict[str, Any]]] = {g: [] for g in GROUP_TITLES}
    for group, record, expr in RECORDING_RULES:
        by_group[group].append({"record": record, "expr": expr})
    for alert in alerts(t):
        by_group[alert.group].append(alert.rule(t.runbook_url))
    return {"groups": [{"name": GROUP_TITLES[g], "rules": rules} for g, rules in by_group.items()]}
