"""alerts/thresholds.yaml: the one place alert thresholds live, validated on load."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from exporter.yamlfile import read_yaml


class Tiers(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    warning: float = Field(gt=0)
    critical: float = Field(gt=0)


class Thresholds(BaseModel):
    """Every number an alert or a dashboard threshold compares against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runbook_url: str
    exporter_job: str
    render_seconds: Tiers
    publish_lag_minutes: Tiers
    publish_failures_per_hour: Tiers
    media_storage_percent: Tiers
    version_table_bytes: Tiers
    cron_run_seconds: float = Field(gt=0)
    cron_gap_seconds: float = Field(gt=0)
    sections_per_locale: float = Field(gt=0)
    versions_per_section: float = Field(gt=0)
    media_assets: float = Field(gt=0)
    cms_tables_bytes: float = Field(gt=0)
    render_p95_seconds: float = Field(gt=0)
    connections_ratio: float = Field(gt=0, le=1)
    connections_ratio_critical: float = Field(gt=0, le=1)
    dead_tuple_ratio: float = Field(gt=0, le=1)
    cache_hit_ratio: float = Field(gt=0, le=1)
    statistics_age_seconds: float = Field(gt=0)
    archive_backlog_seconds: float = Field(gt=0)
    cms_cron_job: str = Field(min_length=1)
    cms_cron_owner: str = Field(min_length=1)
    bloat_min_dead_rows: float = Field(ge=0)
    database_size_bytes: Tiers
    connections: Tiers
    publish_success_ratio_7d: float = Field(gt=0, le=1)
    publish_success_min_7d: float = Field(ge=0)
    version_growth_30d: float = Field(gt=0)
    version_growth_min_versions: float = Field(ge=0)
    vacuum_age_seconds: float = Field(gt=0)
    backup_age_seconds: float = Field(gt=0)
    rpo_seconds: float = Field(gt=0)
    xid_age_freeze_ratio: float = Field(gt=0)
    xid_age_critical: float = Field(gt=0)
    replication_slot_inactive_bytes: float = Field(gt=0)
    replication_slot_retained_bytes: float = Field(gt=0)
    idle_in_transaction_seconds: float = Field(gt=0)


def load_thresholds(path: Path) -> Thresholds:
    return read_yaml(path).validate(Thresholds, show_input=True)
