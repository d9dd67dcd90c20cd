"""Every alert at its edges: just above and just below each threshold, and one minute short of
its `for:`, through promtool and the shipped rules.

The firing/quiet cases in alerts/homepage-cms.rules.test.yml check labels and annotations far
from the edges; these check the edges themselves, so moving a threshold or a duration (5 -> 10
failures an hour, 10m -> 5m) turns a test red. Which alerts fire is read from ALERTS.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.durations import parse_duration
from tools.mixin.rules import alerts
from tools.mixin.thresholds import load_thresholds

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "homepage-cms.rules.yml"
PROMTOOL = shutil.which("promtool")
T = load_thresholds(ROOT / "alerts" / "thresholds.yaml")
LABELS = 'job="homepage-cms", instance="db1:10187"'
AGE = "age"  # a value that is an age: the series holds a timestamp that far in the past


@dataclass(frozen=True)
class Edge:
    """One alert tier: the series that drive it, at a bad and a good value."""

    alert: str
    severity: str
    metric: str  # series selector without job/instance: name{extra labels}
    bad: float
    good: float
    constant: dict[str, float] = field(default_factory=dict)  # other series, held fixed
    kind: str = "gauge"  # gauge | age | counter pair handled by `series` below
    warmup: int = 0  # minutes before a rate() has data
    runbook_for: str | None = None  # the duration the runbook's alerting section states


def _series(selector: str, value: float, kind: str, minutes: int) -> dict[str, str]:
    name, _, extra = selector.partition("{")
    labels = LABELS + (", " + extra.rstrip("}") if extra else "")
    # An age: time() - series = value at every minute, so the series advances 60 s a minute.
    values = f"{-value!r}+60x{minutes}" if kind == "age" else f"{value!r}x{minutes}"
    return {"series": f"{name}{{{labels}}}", "values": values}


def _rate_pair(ratio: float, minutes: int) -> list[dict[str, str]]:
    """Cache hits and reads growing so that hits / (hits + reads) = ratio."""
    hits, reads = ratio * 1000, (1 - ratio) * 1000
    return [
        {"series": f"homepage_postgres_blocks_hit_total{{{LABELS}}}", "values": f"0+{hits:g}x{minutes}"},
        {"series": f"homepage_postgres_blocks_read_total{{{LABELS}}}", "values": f"0+{reads:g}x{minutes}"},
    ]  # fmt: skip


def _tier(name: str, severity: str) -> Any:
    return next(a for a in alerts(T) if a.name == name and a.severity == severity)


def _minutes(duration: str) -> int:
    return 0 if duration == "0m" else int(parse_duration(duration) // 60)


# The runbook's own numbers are literals here, not read from alerts/thresholds.yaml: moving a
# threshold there (5 -> 10 failures an hour) must turn this red. Numbers that are our design
# choices (bloat floor, 7-day success rate...) come from the thresholds file.
EPS = 0.001
GIB = 1024**3
JOB = f'jobname="{T.cms_cron_job}", username="{T.cms_cron_owner}"'
EDGES: list[Edge] = [
    Edge("HomepageRenderEmpty", "critical", 'homepage_render_sections{locale="en", role="anon"}',
         0, 1, constant={'homepage_sections_live{locale="en"}': 3,
                         'homepage_sections_visible_to_anon{locale="en"}': 3}),
    Edge("HomepageContentHidden", "critical",
         'homepage_render_sections_without_content{locale="en", role="anon"}', 1, 0),
    Edge("HomepageLiveSectionVersionWrong", "critical",
         'homepage_live_sections_version_wrong{locale="de", problem="another_sections_version"}',
         1, 0),
    # None received: a hidden table. Some received, one fewer than linked: the function's own
    # filter (sold out), not an incident.
    Edge("HomepageCatalogHidden", "critical",
         'homepage_render_products_missing{locale="en", role="anon"}', 1, 0,
         constant={'homepage_render_sections{locale="en", role="anon"}': 12,
                   'homepage_render_products{locale="en", role="anon"}': 0}),
    Edge("HomepageCatalogHidden", "critical",
         'homepage_render_products{locale="en", role="anon"}', 0, 1,
         constant={'homepage_render_sections{locale="en", role="anon"}': 12,
                   'homepage_render_products_missing{locale="en", role="anon"}': 1}),
    Edge("HomepageCatalogHidden", "critical",
         'homepage_render_categories_missing{locale="de", role="authenticated"}', 1, 0,
         constant={'homepage_render_sections{locale="de", role="authenticated"}': 12,
                   'homepage_render_categories{locale="de", role="authenticated"}': 0}),
    Edge("HomepageSlowQuery", "warning", 'homepage_render_duration_seconds{locale="en"}',
         0.5 + EPS, 0.5, runbook_for="5m"),
    Edge("HomepageSlowQuery", "critical", 'homepage_render_duration_seconds{locale="en"}',
         1 + EPS, 1),
    Edge("ScheduledPublishLag", "warning", "homepage_scheduled_publish_lag_minutes",
         5 + EPS, 5),
    Edge("ScheduledPublishLag", "critical", "homepage_scheduled_publish_lag_minutes",
         15 + EPS, 15, runbook_for="10m"),
    Edge("HighPublishFailureRate", "warning", "homepage_publish_failures_last_hour",
         2, 1, runbook_for="10m"),
    Edge("HighPublishFailureRate", "critical", "homepage_publish_failures_last_hour",
         6, 5, runbook_for="10m"),
    Edge("HomepageCronJobSlow", "warning",
         f'homepage_cron_job_last_run_duration_seconds{{{JOB}}}',
         T.cron_run_seconds + EPS, T.cron_run_seconds),
    Edge("HomepageCronJobNotRunning", "warning",
         f'homepage_cron_job_last_run_start_timestamp_seconds{{{JOB}}}',
         T.cron_gap_seconds + 1, T.cron_gap_seconds - 1, kind=AGE,
         constant={f'homepage_cron_job_active{{{JOB}}}': 1}),
    Edge("MediaStorageHigh", "warning", "homepage_media_storage_percent",
         80 + EPS, 80, runbook_for="1h"),
    Edge("MediaStorageHigh", "critical", "homepage_media_storage_percent",
         90 + EPS, 90),
    Edge("VersionTableLarge", "warning", 'homepage_cms_table_size_bytes{table="section_versions"}',
         10 * GIB + 1, 10 * GIB),
    Edge("VersionTableLarge", "critical", 'homepage_cms_table_size_bytes{table="section_versions"}',
         50 * GIB + 1, 50 * GIB),
    Edge("HomepageSectionsPerLocaleHigh", "warning", 'homepage_sections{locale="en"}',
         51, 50),
    Edge("HomepageVersionsPerSectionHigh", "warning", "homepage_section_versions_per_section_max",
         501, 500),
    Edge("HomepageMediaAssetsHigh", "warning", "homepage_media_assets",
         100_001, 100_000,
         constant={"homepage_media_storage_quota_bytes": 1e12}),
    Edge("HomepageCMSTablesLarge", "warning", 'homepage_cms_table_size_bytes{table="media_assets"}',
         20 * GIB + 1, 20 * GIB),
    Edge("HomepageRenderLatencyP95High", "warning", 'homepage_render_duration_seconds{locale="de"}',
         0.5 + EPS, 0.5),
    Edge("HomepageVersionArchiveBacklog", "warning", "homepage_section_versions_archive_backlog_seconds",
         T.archive_backlog_seconds + 1, T.archive_backlog_seconds),
    # Supabase's smallest compute: max_connections 60, 3 reserved: 57 for the pooler and us.
    Edge("PostgresConnectionsHigh", "warning", "homepage_postgres_server_connections",
         T.connections_ratio * 57 + 1, T.connections_ratio * 57,
         constant={"homepage_postgres_max_connections": 60,
                   "homepage_postgres_reserved_connections": 3}),
    Edge("PostgresConnectionsHigh", "critical", "homepage_postgres_server_connections",
         56, T.connections_ratio_critical * 57,
         constant={"homepage_postgres_max_connections": 60,
                   "homepage_postgres_reserved_connections": 3}),
    Edge("HomepageTableBloated", "warning", 'homepage_cms_table_dead_tuple_ratio{table="section_versions"}',
         T.dead_tuple_ratio + EPS, T.dead_tuple_ratio,
         constant={'homepage_cms_table_dead_rows{table="section_versions"}': T.bloat_min_dead_rows + 1}),
    Edge("HomepageTableBloated", "warning", 'homepage_cms_table_dead_rows{table="section_versions"}',
         T.bloat_min_dead_rows + 1, T.bloat_min_dead_rows,
         constant={'homepage_cms_table_dead_tuple_ratio{table="section_versions"}': 0.5}),
    Edge("PostgresCacheHitRatioLow", "warning", "cache_hit_ratio",
         T.cache_hit_ratio - 0.01, T.cache_hit_ratio + 0.01, kind="rate", warmup=1),
    Edge("HomepageTableStatisticsStale", "warning",
         'homepage_cms_table_last_analyzed_timestamp_seconds{table="section_versions"}',
         T.statistics_age_seconds + 1, T.statistics_age_seconds - 1, kind=AGE,
         constant={'homepage_cms_table_rows_modified_since_analyze{table="section_versions"}': 10}),
    Edge("HomepageLongRunningQuery", "warning", "homepage_postgres_longest_cms_query_seconds",
         300 + EPS, 300),
    Edge("PostgresBlockedQueries", "warning", "homepage_postgres_blocked_queries", 1, 0),
    Edge("HomepagePublishSuccessRateLow", "warning",
         'homepage_section_schedules_processed_7d{status="completed"}',
         T.publish_success_ratio_7d * 100 - 1, T.publish_success_ratio_7d * 100,
         constant={'homepage_section_schedules_processed_7d{status="failed"}': 100 - T.publish_success_ratio_7d * 100}),
    Edge("HomepagePublishSuccessRateLow", "warning",
         'homepage_section_schedules_processed_7d{status="failed"}',
         T.publish_success_min_7d, T.publish_success_min_7d - 1,
         constant={'homepage_section_schedules_processed_7d{status="completed"}': 0}),
    Edge("HomepageVersionGrowthHigh", "warning", "homepage_section_versions_created_30d",
         T.version_growth_30d * 5000 + 1, T.version_growth_30d * 5000,
         constant={"homepage_section_versions": 5000 + T.version_growth_30d * 5000}),
    Edge("PostgresDatabaseSizeHigh", "warning", "homepage_postgres_database_size_bytes",
         10 * GIB + 1, 10 * GIB),
    Edge("PostgresDatabaseSizeHigh", "critical", "homepage_postgres_database_size_bytes",
         50 * GIB + 1, 50 * GIB),
    Edge("PostgresConnectionCountHigh", "warning", "homepage_postgres_connections",
         101, 100),
    Edge("PostgresConnectionCountHigh", "critical", "homepage_postgres_connections",
         501, 500,
         constant={"homepage_postgres_max_connections": 10_000}),
    Edge("HomepageTableVacuumStale", "warning",
         'homepage_cms_table_last_vacuumed_timestamp_seconds{table="section_versions"}',
         T.vacuum_age_seconds + 1, T.vacuum_age_seconds - 1, kind=AGE,
         constant={'homepage_cms_table_dead_rows{table="section_versions"}': T.bloat_min_dead_rows + 1}),
    # One byte written 5 minutes ago past the end of the archive; warmup: the offset's 5 minutes.
    Edge("PostgresWALArchiveBehindRPO", "critical", "homepage_postgres_wal_position_bytes",
         16 * 2**20 + 1, 16 * 2**20, warmup=5,
         constant={"homepage_postgres_wal_archived_position_bytes": 16 * 2**20}),
    Edge("PostgresArchiveTimeoutAboveRPO", "warning", "homepage_postgres_archive_timeout_seconds",
         301, 300, constant={"homepage_postgres_wal_archiving_enabled": 1}),
    Edge("PostgresTransactionIDAgeHigh", "warning", "homepage_postgres_xid_age",
         T.xid_age_freeze_ratio * 200e6 + 1, T.xid_age_freeze_ratio * 200e6,
         constant={"homepage_postgres_autovacuum_freeze_max_age": 200e6}),
    Edge("PostgresTransactionIDWraparoundNear", "critical", "homepage_postgres_xid_age",
         T.xid_age_critical + 1, T.xid_age_critical),
    Edge("PostgresReplicationSlotInactive", "warning",
         'homepage_postgres_replication_slot_retained_wal_bytes{slot="s", slot_type="logical"}',
         T.replication_slot_inactive_bytes + 1, T.replication_slot_inactive_bytes,
         constant={'homepage_postgres_replication_slot_active{slot="s", slot_type="logical"}': 0}),
    Edge("PostgresReplicationSlotRetainingWAL", "critical",
         'homepage_postgres_replication_slot_retained_wal_bytes{slot="s", slot_type="logical"}',
         T.replication_slot_retained_bytes + 1, T.replication_slot_retained_bytes),
    Edge("PostgresIdleInTransaction", "warning", "homepage_postgres_idle_in_transaction_seconds",
         T.idle_in_transaction_seconds + 1, T.idle_in_transaction_seconds),
    Edge("HomepageBackupTooOld", "warning", "homepage_backup_last_success_timestamp_seconds",
         86_401, 86_399, kind=AGE),
]  # fmt: skip


def _inputs(edge: Edge, value: float, minutes: int) -> list[dict[str, str]]:
    if edge.kind == "rate":
        return _rate_pair(value, minutes)
    series = [_series(edge.metric, value, edge.kind, minutes)]
    series += [_series(selector, v, "gauge", minutes) for selector, v in edge.constant.items()]
    return series


def _case(name: str, edge: Edge, value: float, at: int, fires: bool) -> dict[str, Any]:
    query = (
        f'count(ALERTS{{alertname="{edge.alert}", severity="{edge.severity}",'
        ' alertstate="firing"})'
    )
    return {
        "name": name,
        "interval": "1m",
        "input_series": _inputs(edge, value, at + 5),
        "promql_expr_test": [
            {
                "expr": query,
                "eval_time": f"{at}m",
                "exp_samples": [{"labels": "{}", "value": 1}] if fires else [],
            }
        ],
    }


def test_the_runbooks_durations_are_kept() -> None:
    for edge in EDGES:
        if edge.runbook_for is not None:
            assert _tier(edge.alert, edge.severity).for_ == edge.runbook_for, edge.alert


def cases() -> list[dict[str, Any]]:
    out = []
    for edge in EDGES:
        hold = _minutes(_tier(edge.alert, edge.severity).for_) + edge.warmup
        tag = f"{edge.alert} {edge.severity} {edge.metric}"
        out.append(_case(f"{tag} fires just above, after its for:", edge, edge.bad, hold, True))
        out.append(_case(f"{tag} stays quiet at the threshold", edge, edge.good, hold + 30, False))
        if hold > edge.warmup:
            out.append(_case(f"{tag} waits its full for:", edge, edge.bad, hold - 1, False))
    return out


def test_every_threshold_in_the_thresholds_file_has_an_edge() -> None:
    covered = {(e.alert, e.severity) for e in EDGES}
    numeric = {
        (a.name, a.severity)
        for a in alerts(T)
        if any(op in a.expr for op in (" > ", " < ", " >= "))
        and "security_finding" not in a.expr
        and a.name
        not in {
            "PostgresWALArchiveFailing",
            "HomepageBackupFailed",
            "HomepageExporterQueryStale",
            "HomepageInvisibleToPublic",
        }
    }
    assert numeric - covered == set()


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
@pytest.mark.slow
def test_alerts_fire_exactly_at_their_edges(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    shutil.copy(RULES, tmp_path / RULES.name)
    suite = {"rule_files": [RULES.name], "evaluation_interval": "1m", "tests": cases()}
    path = tmp_path / "edges.test.yml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False, width=200))
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
