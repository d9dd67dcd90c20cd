"""The Grafana dashboard for the Homepage CMS, with thresholds taken from the alert thresholds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tools.mixin import rules as r
from tools.mixin.thresholds import Thresholds

UID = "homepage-cms"
INSTANCES = 'label_values(homepage_exporter_build_info{job=~"$job"}, instance)'
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'
GREEN, YELLOW, RED = "green", "orange", "red"


def steps(*pairs: tuple[float | None, str]) -> dict[str, Any]:
    """Grafana threshold steps: the first value is the base (None)."""
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in pairs]}


def rising(warning: float, critical: float | None = None) -> dict[str, Any]:
    pairs: list[tuple[float | None, str]] = [(None, GREEN), (warning, YELLOW)]
    if critical is not None:
        pairs.append((critical, RED))
    return steps(*pairs)


@dataclass
class Panel:
    """A panel before layout: what it shows, in which unit, against which thresholds."""

    title: str
    exprs: list[tuple[str, str]]
    unit: str
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    thresholds: dict[str, Any] = field(default_factory=lambda: steps((None, GREEN)))
    description: str = ""
    runbook: str | None = None
    instant: bool = False

    def build(self, panel_id: int, x: int, y: int, runbook_url: str) -> dict[str, Any]:
        panel: dict[str, Any] = {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": DATASOURCE,
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "fieldConfig": {
                "defaults": {
                    "unit": self.unit,
                    "thresholds": self.thresholds,
                    "color": {"mode": "thresholds" if self.kind == "stat" else "palette-classic"},
                },
                "overrides": [],
            },
            "targets": [
                {
                    "datasource": DATASOURCE,
                    "refId": chr(ord("A") + i),
                    "expr": expr,
                    "legendFormat": legend,
                    "instant": self.instant or self.kind == "stat",
                    "range": not (self.instant or self.kind == "stat"),
                }
                for i, (expr, legend) in enumerate(self.exprs)
            ],
        }
        if self.kind == "timeseries":
            panel["fieldConfig"]["defaults"]["custom"] = {
                "thresholdsStyle": {
                    "mode": "line+area" if len(self.thresholds["steps"]) > 1 else "off"
                },
            }
            panel["options"] = {
                "legend": {"displayMode": "list", "placement": "bottom"},
                "tooltip": {"mode": "multi"},
            }
        else:
            panel["options"] = {
                "reduceOptions": {"calcs": ["lastNotNull"], "values": False},
                "colorMode": "background",
                "graphMode": "none",
                "textMode": "value_and_name",
            }
        if self.runbook:
            panel["links"] = [
                {
                    "title": f"Runbook: {self.runbook}",
                    "url": f"{runbook_url}#{self.runbook.lower()}",
                }
            ]
        return panel


def _rows(t: Thresholds) -> list[tuple[str, list[Panel]]]:
    lag = t.publish_lag_minutes
    fail = t.publish_failures_per_hour
    render = t.render_seconds
    return [
        (
            "Is the homepage OK?",
            [
                Panel(
                    "Live sections",
                    [(f"homepage_sections_live{{{SEL}}}", "{{locale}}")],
                    "none",
                    kind="stat",
                    width=6,
                    height=5,
                    thresholds=steps((None, RED), (1, GREEN)),
                    description="Active, published sections per locale. 0 is a blank homepage.",
                    runbook="HomepageNoLiveSections",
                ),
                Panel(
                    "Visible to the public (anon)",
                    [(f"homepage_sections_visible_to_anon{{{SEL}}}", "{{locale}}")],
                    "none",
                    kind="stat",
                    width=6,
                    height=5,
                    thresholds=steps((None, RED), (1, GREEN)),
                    description="Sections row level security lets anon read. 0 with live"
                    " sections means RLS hides the homepage.",
                    runbook="HomepageInvisibleToPublic",
                ),
                Panel(
                    "Scheduled publish lag",
                    [(f"homepage_scheduled_publish_lag_minutes{{{SEL}}}", "lag")],
                    "m",
                    kind="stat",
                    width=6,
                    height=5,
                    thresholds=rising(lag.warning, lag.critical),
                    runbook="ScheduledPublishLag",
                ),
                Panel(
                    "Publish failures, last hour",
                    [(f"homepage_publish_failures_last_hour{{{SEL}}}", "failures")],
                    "none",
                    kind="stat",
                    width=6,
                    height=5,
                    thresholds=rising(fail.warning, fail.critical),
                    runbook="HighPublishFailureRate",
                ),
                Panel(
                    "Render time per locale",
                    [(f"homepage_render_duration_seconds{{{SEL}}}", "{{locale}}")],
                    "s",
                    thresholds=rising(render.warning, render.critical),
                    description="Server-side time of get_homepage_content(locale), run as anon.",
                    runbook="HomepageSlowQuery",
                ),
                Panel(
                    "Render time p95 (1h)",
                    [(f"{r.RENDER_P95}{{{SEL}}}", "{{locale}}")],
                    "s",
                    thresholds=rising(t.render_p95_seconds),
                    runbook="HomepageRenderLatencyP95High",
                ),
            ],
        ),
        (
            "Publishing",
            [
                Panel(
                    "Due and overdue schedules",
                    [
                        (f"homepage_scheduled_publishes_due{{{SEL}}}", "due"),
                        (f"homepage_scheduled_publishes_overdue{{{SEL}}}", "overdue (> 5 min)"),
                        (f"homepage_scheduled_publishes_pending{{{SEL}}}", "pending"),
                    ],
                    "none",
                    thresholds=rising(1),
                ),
                Panel(
                    "Schedules by status",
                    [(f"homepage_section_schedules{{{SEL}}}", "{{status}}")],
                    "none",
                ),
                Panel(
                    "Publish failures per hour",
                    [(f"homepage_publish_failures_last_hour{{{SEL}}}", "failures")],
                    "none",
                    thresholds=rising(fail.warning, fail.critical),
                    runbook="HighPublishFailureRate",
                ),
                Panel(
                    "Live, inactive and total sections",
                    [
                        (f"homepage_sections_live{{{SEL}}}", "live {{locale}}"),
                        (f"homepage_sections_inactive{{{SEL}}}", "inactive {{locale}}"),
                    ],
                    "none",
                ),
            ],
        ),
        (
            "pg_cron",
            [
                Panel(
                    "Job active",
                    [(f"homepage_cron_job_active{{{SEL}}}", "{{jobname}}")],
                    "none",
                    kind="stat",
                    width=6,
                    height=5,
                    thresholds=steps((None, RED), (1, GREEN)),
                    runbook="HomepageCronJobInactive",
                ),
                Panel(
                    "Last run succeeded",
                    [(f"homepage_cron_job_last_run_success{{{SEL}}}", "{{jobname}}")],
                    "none",
                    kind="stat",
                    width=6,
                    height=5,
                    thresholds=steps((None, RED), (1, GREEN)),
                    runbook="HomepageCronJobFailed",
                ),
                Panel(
                    "Last run duration",
                    [(f"homepage_cron_job_last_run_duration_seconds{{{SEL}}}", "{{jobname}}")],
                    "s",
                    thresholds=rising(t.cron_run_seconds),
                    runbook="HomepageCronJobSlow",
                ),
                Panel(
                    "Time since last run",
                    [
                        (
                            f"time() - homepage_cron_job_last_run_start_timestamp_seconds{{{SEL}}}",
                            "{{jobname}}",
                        )
                    ],
                    "s",
                    thresholds=rising(t.cron_gap_seconds),
                    runbook="HomepageCronJobNotRunning",
                    width=12,
                    height=5,
                    kind="stat",
                ),
            ],
        ),
        (
            "Content growth",
            [
                Panel(
                    "Sections per locale",
                    [(f"homepage_sections{{{SEL}}}", "{{locale}}")],
                    "none",
                    thresholds=rising(t.sections_per_locale),
                    runbook="HomepageSectionsPerLocaleHigh",
                ),
                Panel(
                    "Versions per section (max)",
                    [(f"homepage_section_versions_per_section_max{{{SEL}}}", "max")],
                    "none",
                    thresholds=rising(t.versions_per_section),
                    runbook="HomepageVersionsPerSectionHigh",
                ),
                Panel(
                    "section_versions size",
                    [(f'homepage_cms_table_size_bytes{{{SEL}, table="section_versions"}}', "size")],
                    "bytes",
                    thresholds=rising(
                        t.version_table_bytes.warning, t.version_table_bytes.critical
                    ),
                    runbook="VersionTableLarge",
                ),
                Panel(
                    "CMS tables, total size",
                    [(f"{r.CMS_TABLES_BYTES}{{{SEL}}}", "total")],
                    "bytes",
                    thresholds=rising(t.cms_tables_bytes),
                    runbook="HomepageCMSTablesLarge",
                ),
                Panel(
                    "Versions awaiting the weekly archive",
                    [
                        (f"homepage_section_versions_archivable{{{SEL}}}", "archivable"),
                    ],
                    "none",
                ),
                Panel(
                    "Longest archivable wait",
                    [(f"homepage_section_versions_archive_backlog_seconds{{{SEL}}}", "waiting")],
                    "s",
                    thresholds=rising(t.archive_backlog_seconds),
                    runbook="HomepageVersionArchiveBacklog",
                ),
            ],
        ),
        (
            "Media",
            [
                Panel(
                    "Media storage used",
                    [(f"homepage_media_storage_percent{{{SEL}}}", "used")],
                    "percent",
                    kind="stat",
                    width=6,
                    height=6,
                    thresholds=rising(
                        t.media_storage_percent.warning, t.media_storage_percent.critical
                    ),
                    runbook="MediaStorageHigh",
                ),
                Panel(
                    "Media assets",
                    [(f"homepage_media_assets{{{SEL}}}", "assets")],
                    "none",
                    kind="stat",
                    width=6,
                    height=6,
                    thresholds=rising(t.media_assets),
                    runbook="HomepageMediaAssetsHigh",
                ),
                Panel(
                    "Media bytes: total and unused (> 90 days)",
                    [
                        (f"homepage_media_storage_bytes{{{SEL}}}", "total"),
                        (f"homepage_media_unused_bytes{{{SEL}}}", "unused"),
                    ],
                    "bytes",
                    height=6,
                ),
            ],
        ),
        (
            "Database health",
            [
                Panel(
                    "Cache hit ratio (5m)",
                    [(f"{r.CACHE_HIT_RATIO}{{{SEL}}}", "hit ratio")],
                    "percentunit",
                    thresholds=steps((None, YELLOW), (t.cache_hit_ratio, GREEN)),
                    runbook="PostgresCacheHitRatioLow",
                ),
                Panel(
                    "Dead tuple ratio",
                    [(f"homepage_cms_table_dead_tuple_ratio{{{SEL}}}", "{{table}}")],
                    "percentunit",
                    thresholds=rising(t.dead_tuple_ratio),
                    runbook="HomepageTableBloated",
                ),
                Panel(
                    "Time since ANALYZE",
                    [
                        (
                            f"time() - homepage_cms_table_last_analyzed_timestamp_seconds{{{SEL}}}",
                            "{{table}}",
                        )
                    ],
                    "s",
                    thresholds=rising(t.statistics_age_seconds),
                    runbook="HomepageTableStatisticsStale",
                ),
                Panel(
                    "Connections used",
                    [(f"{r.CONNECTIONS_RATIO}{{{SEL}}}", "of max_connections")],
                    "percentunit",
                    thresholds=rising(t.connections_ratio, t.connections_ratio_critical),
                    runbook="PostgresConnectionsHigh",
                ),
                Panel(
                    "Transactions per second", [(f"{r.TRANSACTIONS_RATE}{{{SEL}}}", "tx/s")], "ops"
                ),
                Panel(
                    "CMS sessions: active, blocked, long-running",
                    [
                        (f"homepage_postgres_active_cms_queries{{{SEL}}}", "active"),
                        (f"homepage_postgres_blocked_queries{{{SEL}}}", "blocked"),
                        (f"homepage_postgres_long_running_cms_queries{{{SEL}}}", "running > 5 min"),
                        (
                            f"homepage_postgres_idle_in_transaction_sessions{{{SEL}}}",
                            "idle in transaction",
                        ),
                    ],
                    "none",
                    thresholds=rising(1),
                    runbook="PostgresBlockedQueries",
                ),
                Panel(
                    "Index scans per second",
                    [(f"rate(homepage_cms_index_scans_total{{{SEL}}}[5m])", "{{index}}")],
                    "ops",
                ),
                Panel(
                    "Slowest homepage statements (mean)",
                    [(f"topk(5, homepage_statement_mean_exec_seconds{{{SEL}}})", "{{queryid}}")],
                    "s",
                    thresholds=rising(render.warning, render.critical),
                ),
            ],
        ),
        (
            "Exporter",
            [
                Panel(
                    "Database reachable",
                    [(f"homepage_exporter_database_up{{{SEL}}}", "{{instance}}")],
                    "none",
                    kind="stat",
                    width=6,
                    height=5,
                    thresholds=steps((None, RED), (1, GREEN)),
                    runbook="HomepageDatabaseUnreachable",
                ),
                Panel(
                    "Queries failing",
                    [(f"count(homepage_exporter_query_up{{{SEL}}} == 0) or vector(0)", "failing")],
                    "none",
                    kind="stat",
                    width=6,
                    height=5,
                    thresholds=rising(1),
                    runbook="HomepageExporterQueryFailing",
                ),
                Panel(
                    "Config reload ok",
                    [(f"homepage_exporter_config_last_reload_successful{{{SEL}}}", "{{instance}}")],
                    "none",
                    kind="stat",
                    width=6,
                    height=5,
                    thresholds=steps((None, RED), (1, GREEN)),
                    runbook="HomepageExporterConfigReloadFailed",
                ),
                Panel(
                    "Scrape target up",
                    [(f"up{{{SEL}}}", "{{instance}}")],
                    "none",
                    kind="stat",
                    width=6,
                    height=5,
                    thresholds=steps((None, RED), (1, GREEN)),
                    runbook="HomepageExporterDown",
                ),
                Panel(
                    "Query duration",
                    [(f"homepage_exporter_query_duration_seconds{{{SEL}}}", "{{query}}")],
                    "s",
                ),
                Panel(
                    "Query errors per second by reason",
                    [
                        (
                            "sum by (reason) "
                            f"(rate(homepage_exporter_query_errors_total{{{SEL}}}[5m]))",
                            "{{reason}}",
                        )
                    ],
                    "ops",
                    thresholds=rising(0.0001),
                ),
            ],
        ),
    ]


ALERT_NAMES_REGEX = (
    "Homepage.*|ScheduledPublishLag|HighPublishFailureRate|MediaStorageHigh|VersionTableLarge"
    "|Postgres.*"
)


def dashboard(t: Thresholds) -> dict[str, Any]:
    return _board(
        uid=UID,
        title="Homepage CMS",
        description="The Homepage CMS runbook as a dashboard: is the homepage OK, publishing,"
        " growth, media, database health, pg_cron and the exporter.",
        rows=_rows(t),
        jobs="label_values(homepage_exporter_build_info, job)",
        instances=INSTANCES,
        alerts=ALERT_NAMES_REGEX,
        runbook_url=t.runbook_url,
    )


# Supabase's Metrics API (job `supabase` in deploy/prometheus.yml); thresholds as in
# alerts/supabase-platform.rules.yml, the runbook's vertical-scaling triggers.
PLATFORM_UID = "homepage-cms-supabase"
PLATFORM_SEL = 'job=~"$job", instance=~"$instance"'


def _platform_rows() -> list[tuple[str, list[Panel]]]:
    cpu = (
        "1 - avg without (cpu, mode) "
        f'(rate(node_cpu_seconds_total{{{PLATFORM_SEL}, mode="idle"}}[5m]))'
    )
    memory = (
        f"1 - node_memory_MemAvailable_bytes{{{PLATFORM_SEL}}}"
        f" / node_memory_MemTotal_bytes{{{PLATFORM_SEL}}}"
    )
    disk = (
        f'1 - node_filesystem_avail_bytes{{{PLATFORM_SEL}, mountpoint="/data"}}'
        f' / node_filesystem_size_bytes{{{PLATFORM_SEL}, mountpoint="/data"}}'
    )
    connections = f"sum without (server) (pg_stat_database_num_backends{{{PLATFORM_SEL}}})"
    return [
        (
            "Vertical scaling triggers (Supabase Metrics API)",
            [
                Panel("CPU busy", [(cpu, "{{instance}}")], "percentunit", width=6,
                      thresholds=rising(0.7), runbook="SupabaseCPUHigh",
                      description="Upgrade when above 70 % for an hour (runbook)."),
                Panel("Memory used", [(memory, "{{instance}}")], "percentunit", width=6,
                      thresholds=rising(0.8), runbook="SupabaseMemoryHigh"),
                Panel("Data disk used", [(disk, "{{instance}}")], "percentunit", width=6,
                      thresholds=rising(0.8, 0.9), runbook="SupabaseDiskHigh"),
                Panel("Connections", [(connections, "{{instance}}")], "short", width=6,
                      thresholds=rising(100, 500), runbook="SupabaseConnectionsHigh",
                      description="Medium above 100, Large above 500 (runbook)."),
            ],
        ),
        (
            "Metrics API",
            [
                Panel("Metrics API reachable", [(f"up{{{PLATFORM_SEL}}}", "{{instance}}")],
                      "short", kind="stat", width=6, height=5,
                      thresholds=steps((None, RED), (1, GREEN)),
                      runbook="SupabaseMetricsUnavailable"),
                Panel("Postgres up (Supabase's own exporter)",
                      [(f"pg_up{{{PLATFORM_SEL}}}", "{{instance}}")], "short", kind="stat",
                      width=6, height=5, thresholds=steps((None, RED), (1, GREEN))),
            ],
        ),
    ]  # fmt: skip


def platform_dashboard(t: Thresholds) -> dict[str, Any]:
    return _board(
        uid=PLATFORM_UID,
        title="Homepage CMS: Supabase platform",
        description="CPU, memory, disk and connections of the Supabase project, from its"
        " Metrics API: the runbook's vertical-scaling triggers.",
        rows=_platform_rows(),
        jobs='label_values(up{job="supabase"}, job)',
        instances='label_values(up{job=~"$job"}, instance)',
        alerts="Supabase.*",
        runbook_url=t.runbook_url,
    )


def _board(
    *,
    uid: str,
    title: str,
    description: str,
    rows: list[tuple[str, list[Panel]]],
    jobs: str,
    instances: str,
    alerts: str,
    runbook_url: str,
) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for title_, row in rows:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": title_,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x, row_height = 0, 0
        for panel in row:
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            panels.append(panel.build(next_id, x, y, runbook_url))
            next_id += 1
            x += panel.width
            row_height = max(row_height, panel.height)
        y += row_height
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["homepage-cms", "postgresql", "supabase"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "links": [
            {
                "title": "Runbook",
                "type": "link",
                "url": runbook_url,
                "targetBlank": True,
                "icon": "doc",
            }
        ],
        "annotations": {
            "list": [
                {
                    "name": "Firing alerts",
                    "datasource": DATASOURCE,
                    "enable": True,
                    "iconColor": "red",
                    "expr": f'ALERTS{{alertstate="firing", alertname=~"{alerts}"}}',
                    "step": "60s",
                    "titleFormat": "{{alertname}}",
                    "textFormat": "{{severity}} {{locale}}{{table}}{{jobname}}{{query}}",
                    "useValueForTime": False,
                },
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                },
                {
                    "name": "job",
                    "label": "Job",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {"query": jobs, "refId": "job"},
                    "definition": jobs,
                    "includeAll": True,
                    "multi": True,
                    "current": {},
                    "refresh": 2,
                    "sort": 1,
                },
                {
                    "name": "instance",
                    "label": "Instance",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {"query": instances, "refId": "instance"},
                    "definition": instances,
                    "includeAll": True,
                    "multi": True,
                    "current": {},
                    "refresh": 2,
                    "sort": 1,
                },
            ]
        },
        "panels": panels,
    }


def quick_reference(t: Thresholds) -> dict[str, Any]:
    """exporter/quickref.json: the runbook's Quick Reference table for the status page at /
    (each check, the metric that measures it, its thresholds, in the runbook's order), and
    every threshold for triage: the alerts' own numbers, inside the package."""
    rows = [
        ("Homepage load time", "homepage_render_duration_seconds", {}, "seconds",
         t.render_seconds, "Check indexes, cache", "homepageslowquery"),
        ("Scheduled publish lag", "homepage_scheduled_publish_lag_minutes", {}, "minutes",
         t.publish_lag_minutes, "Check cron job", "scheduledpublishlag"),
        ("Failed publishes", "homepage_publish_failures_last_hour", {}, "per hour",
         t.publish_failures_per_hour, "Check logs, RLS", "highpublishfailurerate"),
        ("Media storage", "homepage_media_storage_percent", {}, "percent",
         t.media_storage_percent, "Archive old media", "mediastoragehigh"),
        ("Version table size", "homepage_cms_table_size_bytes", {"table": "section_versions"},
         "bytes", t.version_table_bytes, "Archive old versions", "versiontablelarge"),
    ]  # fmt: skip
    return {
        "generated_from": "alerts/thresholds.yaml by tools/mixin",
        "runbook_url": t.runbook_url,
        # Every threshold, for what the package decides itself (triage) from the same numbers.
        "thresholds": t.model_dump(exclude={"runbook_url", "exporter_job"}),
        "checks": [
            {
                "check": check,
                "metric": metric,
                "labels": labels,
                "unit": unit,
                "warning": tiers.warning,
                "critical": tiers.critical,
                "action": action,
                "section": section,
            }
            for check, metric, labels, unit, tiers, action, section in rows
        ],
    }
