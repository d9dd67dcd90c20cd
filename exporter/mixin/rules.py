"""Prometheus recording and alerting rules for the Homepage CMS, from the thresholds file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from exporter.mixin.thresholds import Thresholds

WARNING, CRITICAL = "warning", "critical"

# Recording rules shared by alerts and the dashboard.
CACHE_HIT_RATIO = "homepage:postgres_cache_hit:ratio_rate5m"
FAILURES_1H = "homepage:publish_failures:increase1h"
RENDER_P95 = "homepage:render_duration_seconds:p95_1h"
CMS_TABLES_BYTES = "homepage:cms_table_size_bytes:sum"
CONNECTIONS_RATIO = "homepage:postgres_connections:ratio"
TRANSACTIONS_RATE = "homepage:postgres_transactions:rate5m"

# (group, record, expr). Each sits in the group of the alerts that read it: rules in one group
# are evaluated in order, groups concurrently, so an alert in another group could read the
# previous evaluation's value.
RECORDING_RULES: tuple[tuple[str, str, str], ...] = (
    ("publishing", FAILURES_1H, "increase(homepage_publish_failures_total[1h])"),
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
            "homepage_sections_live == 0",
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
            " minutes behind. Check the process-scheduled-publishes cron job, then run SELECT *"
            " FROM process_scheduled_publishes() by hand (runbook P2).",
        ),
        *_tiered(
            "HighPublishFailureRate",
            "publishing",
            FAILURES_1H,
            (t.publish_failures_per_hour.warning, t.publish_failures_per_hour.critical),
            ("5m", "5m"),
            "Scheduled publishes are failing.",
            "{{ $value | humanize }} scheduled publishes failed in the last hour on"
            " {{ $labels.instance }}. Read error_message of the failed rows in"
            " section_schedules; RLS and a version of the wrong section are the usual causes.",
        ),
        Alert(
            "HomepageCronJobInactive",
            WARNING,
            "homepage_cron_job_active == 0",
            "5m",
            "A pg_cron job is inactive or missing.",
            "pg_cron job {{ $labels.jobname }} on {{ $labels.instance }} is inactive or gone,"
            " so scheduled publishes will not run. Re-create it with cron.schedule (runbook P2"
            " path A).",
            "publishing",
        ),
        Alert(
            "HomepageCronJobFailed",
            WARNING,
            "homepage_cron_job_last_run_success == 0",
            "0m",
            "The last pg_cron run failed.",
            "The newest finished run of {{ $labels.jobname }} on {{ $labels.instance }} failed."
            " Read return_message in cron.job_run_details.",
            "publishing",
        ),
        Alert(
            "HomepageCronJobSlow",
            WARNING,
            f"homepage_cron_job_last_run_duration_seconds > {_g(t.cron_run_seconds)}",
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
            f" > {_g(t.cron_gap_seconds)}"
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
            "homepage_section_versions_archivable_oldest_age_seconds"
            f" > {_g(t.archive_backlog_age_seconds)}",
            "1h",
            "Old versions are not being archived.",
            "An archivable version on {{ $labels.instance }} is {{ $value | humanizeDuration }}"
            " old: the weekly cleanup has not archived for two weeks. Run it by hand and read its"
            " log.",
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
            f"homepage_cms_table_dead_tuple_ratio > {_g(t.dead_tuple_ratio)}",
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
