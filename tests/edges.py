"""The one table of threshold edges that the alerts, the status page and triage's incidents are
all tested on (tests/test_threshold_edges.py): a threshold key of alerts/thresholds.yaml, the
series it is compared with, a value just over it and the value exactly at it.

Every comparison is `>`: at the threshold is still quiet (OK), just over is the next state. The
three readers of a threshold (the rule Prometheus evaluates, the status page's colour, the
incident triage and the page evaluate) are held to this one table, so they cannot disagree on
which side of the edge a value falls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.incidents import load_thresholds

THRESHOLDS: Mapping[str, Any] = load_thresholds()  # the package's copy (exporter/quickref.json)
EPS = 0.001
JOB = {"jobname": str(THRESHOLDS["cms_cron_job"]), "username": str(THRESHOLDS["cms_cron_owner"])}
TABLE = {"table": "section_versions"}

Series = tuple[str, Mapping[str, str]]  # metric name, labels


@dataclass(frozen=True)
class Edge:
    """One threshold (a tier of a tiered key, or a plain key) and the series compared with it."""

    key: str
    tier: str | None  # "warning" or "critical" for a tiered key; None for a single number
    alert: str
    severity: str
    metric: str
    labels: Mapping[str, str] = field(default_factory=dict)
    # Other series the condition joins, held at a value that lets this one decide.
    constant: tuple[tuple[str, Mapping[str, str], float], ...] = ()
    age: bool = False  # the series is a timestamp: the compared value is now - sample
    step: float = EPS  # how far over is "just over"

    @property
    def threshold(self) -> float:
        raw = THRESHOLDS[self.key]
        return float(raw[self.tier] if self.tier is not None else raw)

    @property
    def at(self) -> float:
        return self.threshold

    @property
    def over(self) -> float:
        return self.threshold + self.step

    def __str__(self) -> str:
        return f"{self.key}{'.' + self.tier if self.tier else ''}"


def selector(metric: str, labels: Mapping[str, str]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{metric}{{{inner}}}" if inner else metric


def _tiered(key: str, alert: str, metric: str, **labels: str) -> list[Edge]:
    return [Edge(key, tier, alert, tier, metric, labels) for tier in ("warning", "critical")]


EDGES: list[Edge] = [
    *_tiered("render_seconds", "HomepageSlowQuery", "homepage_render_duration_seconds",
             locale="en", role="anon"),
    *_tiered("publish_lag_minutes", "ScheduledPublishLag", "homepage_scheduled_publish_lag_minutes"),
    *_tiered("publish_failures_per_hour", "HighPublishFailureRate",
             "homepage_publish_failures_last_hour"),
    *_tiered("media_storage_percent", "MediaStorageHigh", "homepage_media_storage_percent"),
    *_tiered("version_table_bytes", "VersionTableLarge", "homepage_cms_table_size_bytes", **TABLE),
    Edge("cron_run_seconds", None, "HomepageCronJobSlow", "warning",
         "homepage_cron_job_last_run_duration_seconds", JOB),
    Edge("cron_gap_seconds", None, "HomepageCronJobNotRunning", "warning",
         "homepage_cron_job_last_run_start_timestamp_seconds", JOB,
         constant=(("homepage_cron_job_active", JOB, 1),), age=True, step=1),
    Edge("dead_tuple_ratio", None, "HomepageTableBloated", "warning",
         "homepage_cms_table_dead_tuple_ratio", TABLE,
         constant=(("homepage_cms_table_dead_rows", TABLE,
                    float(THRESHOLDS["bloat_min_dead_rows"]) + 1),)),
    Edge("bloat_min_dead_rows", None, "HomepageTableBloated", "warning",
         "homepage_cms_table_dead_rows", TABLE,
         constant=(("homepage_cms_table_dead_tuple_ratio", TABLE, 0.5),)),
    Edge("statistics_age_seconds", None, "HomepageTableStatisticsStale", "warning",
         "homepage_cms_table_last_analyzed_timestamp_seconds", TABLE,
         constant=(("homepage_cms_table_rows_modified_since_analyze", TABLE, 10),),
         age=True, step=1),
]  # fmt: skip
