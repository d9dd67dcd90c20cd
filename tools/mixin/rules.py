"""Prometheus recording and alerting rules for the Homepage CMS, from the thresholds file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
        'homepage_section_schedules_processed_7d{status="completed"} / ignoring (status)'
        " (sum without (status) (homepage_section_schedules_processed_7d))",
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
        "homepage_postgres_connections / homepage_postgres_max_connections",
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

    def rule(self, runbook_url: str) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_ != "0m":
            rule["for"] = self.for_
        rule["labels"] = {"severity": self.severity}
        rule["annotations"] = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": f"{runbook_url}#{self.name.lower()}",
        }
        return rule


def _g(value: float) -> str:
    """A threshold as PromQL writes it: 0.5, 15, 10737418240."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _named(info: str, text: str) -> str:
    """A description fragment from the info series `info` of the same target, if present."""
    return (
        "{{ with printf `" + info + '{instance="%s",job="%s"}` $labels.instance $labels.job'
        " | query }}{{ with . | first }}" + text + "{{ end }}{{ end }}"
    )


OLDEST_DUE = _named(
    "homepage_scheduled_publish_oldest_due_info",
    " Oldest: schedule {{ .Labels.oldest_id }} ({{ .Labels.oldest_section }},"
    " {{ .Labels.oldest_locale }}).",
)
NEWEST_FAILURE = _named(
    "homepage_publish_failure_newest_info",
    " Newest: schedule {{ .Labels.newest_id }} ({{ .Labels.newest_section }},"
    " {{ .Labels.newest_locale }}): {{ .Labels.newest_error }}.",
)
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


def alerts(t: Thresholds) -> list[Alert]:
    """Every alert, in the order of the runbook."""
    job = t.exporter_job
    out: list[Alert] = [
        # --- the homepage itself (P1) -----------------------------------------------------
        Alert(
            "HomepageNoLiveSections",
            CRITICAL,
            "homepage_sections_live == 0\n"
            "and on (instance, job, locale) homepage_locale_expected_live == 1",
            "2m",
            "The homepage has no live sections.",
            "Locale {{ $labels.locale }} on {{ $labels.instance }} has no active, published"
            " section: the public homepage is blank. Check homepage_sections for is_active ="
            " false (the kill switch) or deleted rows, then re-enable (runbook P1 path A).",
            "homepage",
        ),
        Alert(
            "HomepageInvisibleToPublic",
            CRITICAL,
            "homepage_sections_visible_to_anon == 0\n"
            "and on (instance, job, locale) homepage_sections_live > 0",
            "2m",
            "Row level security hides the homepage from the public.",
            "Locale {{ $labels.locale }} on {{ $labels.instance }} has live sections but the anon"
            " role can read none of them. Check the SELECT policies on homepage_sections first"
            " (runbook P1 path B).",
            "homepage",
        ),
        Alert(
            "HomepageRenderFailing",
            CRITICAL,
            'homepage_exporter_query_up{query="homepage_render"} == 0',
            "5m",
            "get_homepage_content() fails.",
            "Calling get_homepage_content() as anon fails on {{ $labels.instance }}. Run it by"
            " hand to see the error; a missing function or a revoked EXECUTE is the usual cause"
            " (runbook P1 path C).",
            "homepage",
        ),
        *_tiered(
            "HomepageSlowQuery",
            "homepage",
            "homepage_render_duration_seconds",
            (t.render_seconds.warning, t.render_seconds.critical),
            ("5m", "5m"),
            "Homepage rendering is slow.",
            "get_homepage_content('{{ $labels.locale }}') takes {{ $value | humanizeDuration }}"
            " on {{ $labels.instance }}. Check that idx_homepage_sections_render is used and"
            " statistics are fresh (ANALYZE homepage_sections).",
        ),
        Alert(
            "HomepageTableRLSDisabled",
            CRITICAL,
            "homepage_cms_table_rls_enabled == 0",
            "1m",
            "Row level security is off on a CMS table.",
            "Table {{ $labels.table }} on {{ $labels.instance }} has row level security"
            " disabled: every row is readable through the public API. Run ALTER TABLE"
            " {{ $labels.table }} ENABLE ROW LEVEL SECURITY after checking its policies.",
            "homepage",
        ),
        Alert(
            "HomepageFunctionMissing",
            CRITICAL,
            "homepage_cms_function_present == 0",
            "5m",
            "A CMS function is missing.",
            "Function {{ $labels.function }}() does not exist in schema public on"
            " {{ $labels.instance }}. Re-apply the CMS migration (runbook P1 path C).",
            "homepage",
        ),
        # --- publishing ---------------------------------------------------------------------
        *_tiered(
            "ScheduledPublishLag",
            "publishing",
            "homepage_scheduled_publish_lag_minutes",
            (t.publish_lag_minutes.warning, t.publish_lag_minutes.critical),
            ("5m", "10m"),
            "Scheduled publishes are delayed.",
            "The oldest due schedule on {{ $labels.instance }} is {{ $value | humanize }}"
            " minutes behind." + OLDEST_DUE + " Check the process-scheduled-publishes cron job,"
            " then run SELECT * FROM process_scheduled_publishes() by hand (runbook P2).",
        ),
        *_tiered(
            "HighPublishFailureRate",
            "publishing",
            "homepage_publish_failures_last_hour",
            (t.publish_failures_per_hour.warning, t.publish_failures_per_hour.critical),
            ("10m", "10m"),
            "Scheduled publishes are failing.",
            "{{ $value }} scheduled publishes failed in the last hour on {{ $labels.instance }}."
            + NEWEST_FAILURE
            + " Read error_message of the failed rows in section_schedules; RLS and a version of"
            " the wrong section are the usual causes.",
        ),
        Alert(
            "HomepageCronJobInactive",
            WARNING,
            f'homepage_cron_job_active{{jobname="{t.cms_cron_job}"}} == 0',
            "5m",
            "The CMS's pg_cron job is inactive or missing.",
            "pg_cron job {{ $labels.jobname }} on {{ $labels.instance }} is inactive or gone,"
            " so scheduled publishes will not run. Re-create it with cron.schedule (runbook P2"
            " path A).",
            "publishing",
        ),
        Alert(
            "HomepageCronJobFailed",
            WARNING,
            f'homepage_cron_job_last_run_failure_info{{jobname="{t.cms_cron_job}"}} == 1',
            "0m",
            "The last pg_cron run failed.",
            "The newest finished run of {{ $labels.jobname }} on {{ $labels.instance }} failed:"
            " {{ $labels.message }}. The whole message is return_message in"
            " cron.job_run_details.",
            "publishing",
        ),
        Alert(
            "HomepageCronJobSlow",
            WARNING,
            f'homepage_cron_job_last_run_duration_seconds{{jobname="{t.cms_cron_job}"}}'
            f" > {_g(t.cron_run_seconds)}",
            "0m",
            "A pg_cron run took too long.",
            "The newest run of {{ $labels.jobname }} on {{ $labels.instance }} took"
            " {{ $value | humanizeDuration }}. Look for locks on section_schedules and for a"
            " backlog of due schedules.",
            "publishing",
        ),
        Alert(
            "HomepageCronJobNotRunning",
            WARNING,
            "time() - homepage_cron_job_last_run_start_timestamp_seconds"
            f'{{jobname="{t.cms_cron_job}"}} > {_g(t.cron_gap_seconds)}'
            "\nand on (instance, job, jobname) homepage_cron_job_active == 1",
            "5m",
            "An active pg_cron job has stopped running.",
            "Active job {{ $labels.jobname }} on {{ $labels.instance }} last started"
            " {{ $value | humanizeDuration }} ago. Check that the pg_cron scheduler is running"
            " (cron.database_name, the server log).",
            "publishing",
        ),
        Alert(
            "HomepagePublishFunctionNotSecurityDefiner",
            WARNING,
            'homepage_cms_function_security_definer{function="process_scheduled_publishes"} == 0',
            "5m",
            "process_scheduled_publishes() is not SECURITY DEFINER.",
            "process_scheduled_publishes() on {{ $labels.instance }} runs with the caller's"
            " rights, so row level security can block publishes. ALTER FUNCTION"
            " process_scheduled_publishes() SECURITY DEFINER (runbook P2 path C).",
            "publishing",
        ),
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
        Alert(
            "PostgresConnectionsHigh",
            WARNING,
            f"{CONNECTIONS_RATIO} > {_g(t.connections_ratio)}",
            "10m",
            "PostgreSQL is close to max_connections.",
            "{{ $labels.instance }} uses {{ $value | humanizePercentage }} of max_connections."
            " Check the pooler and idle sessions before the pool is exhausted.",
            "capacity",
        ),
        # --- database health ------------------------------------------------------------------
        Alert(
            "HomepageTableBloated",
            WARNING,
            f"homepage_cms_table_dead_tuple_ratio > {_g(t.dead_tuple_ratio)}\n"
            "and on (instance, job, table)"
            f" homepage_cms_table_dead_rows > {_g(t.bloat_min_dead_rows)}",
            "30m",
            "A CMS table is bloated.",
            "{{ $value | humanizePercentage }} of the rows in {{ $labels.table }} on"
            " {{ $labels.instance }} are dead. Check autovacuum; VACUUM ANALYZE"
            " {{ $labels.table }} (runbook P3 path A).",
            "database",
        ),
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
            "HomepageTableStatisticsStale",
            WARNING,
            "time() - homepage_cms_table_last_analyzed_timestamp_seconds"
            f" > {_g(t.statistics_age_seconds)}\n"
            "and on (instance, job, table) homepage_cms_table_live_rows > 0",
            "1h",
            "Planner statistics of a CMS table are old.",
            "{{ $labels.table }} on {{ $labels.instance }} was last analyzed"
            " {{ $value | humanizeDuration }} ago. Run ANALYZE {{ $labels.table }} and check the"
            " daily statistics job.",
            "database",
        ),
        Alert(
            "HomepageIndexMissing",
            WARNING,
            "homepage_cms_index_present == 0",
            "15m",
            "An index the runbook expects is missing.",
            "Index {{ $labels.index }} on {{ $labels.table }} is missing on"
            " {{ $labels.instance }}. Re-create it with CREATE INDEX CONCURRENTLY.",
            "database",
        ),
        Alert(
            "HomepageIndexInvalid",
            WARNING,
            "homepage_cms_index_valid == 0",
            "15m",
            "A CMS index is invalid.",
            "Index {{ $labels.index }} on {{ $labels.table }} ({{ $labels.instance }}) is invalid,"
            " usually left by a failed CREATE INDEX CONCURRENTLY. Drop it and create it again.",
            "database",
        ),
        Alert(
            "HomepageLongRunningQuery",
            WARNING,
            "homepage_postgres_long_running_cms_queries >= 1",
            "0m",
            "A CMS query has run for over 5 minutes.",
            "{{ $value }} queries on CMS tables have run for more than 5 minutes on"
            " {{ $labels.instance }}. Find them in pg_stat_activity before terminating anything.",
            "database",
        ),
        Alert(
            "PostgresBlockedQueries",
            WARNING,
            "homepage_postgres_blocked_queries >= 1",
            "5m",
            "Sessions are waiting on locks.",
            "{{ $value }} sessions on {{ $labels.instance }} have waited on locks for 5 minutes."
            " Find the holders with pg_blocking_pids().",
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
            "homepage_postgres_wal_segments_pending_archive > 0\n"
            "and on (instance, job) time()"
            f" - homepage_postgres_wal_last_archived_timestamp_seconds > {_g(t.rpo_seconds)}",
            "1m",
            "WAL archiving is behind the RPO.",
            "{{ $value }} completed WAL segments on {{ $labels.instance }} are not archived and"
            " nothing was archived for 5 minutes: a restore now would lose more than the RPO"
            " allows.",
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
)


def advisor_alerts() -> Iterator[Alert]:
    for lint, name, severity, for_, summary, what in ADVISOR_LINTS:
        yield Alert(
            name,
            severity,
            f'homepage_cms_security_finding{{lint="{lint}"}} == 1',
            for_,
            summary,
            "{{ $labels.object }} on {{ $labels.instance }} " + what + " (Supabase advisor lint "
            f'{lint}; homepage_cms_security_findings{{lint="{lint}"}} counts every offender.)',
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
