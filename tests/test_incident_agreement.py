"""One definition of an incident: on every state of the alert-quality suite, the shipped alerting
rules (through promtool), `triage` and the status page name the same incidents at the same
severity.

All three read exporter/incidents.py; this test holds them to it on real states (PostgreSQL with
pg_cron, the reference schema, the exporter's role), so a condition, threshold or drill-down that
drifts in one place turns it red.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from exporter.app import run_all
from exporter.config import load_config
from exporter.incidents import load_thresholds, shipped
from exporter.settings import load_settings
from exporter.snapshot import Instant, Snapshot, transition
from exporter.statuspage import incidents_now
from exporter.targets import load_targets
from tests.conftest import exporter_dsn
from tests.test_alert_quality import (
    BENIGN,
    DATABASE,
    INCIDENTS,
    Scenario,
    exposition,
    firing,
    quality_cluster,
)
from tests.test_triage import TRIAGE_OF, run

pytestmark = pytest.mark.slow
cluster = pytest.fixture(scope="module", name="cluster")(quality_cluster)
THRESHOLDS = load_thresholds()
DEFINED = shipped(THRESHOLDS)
ALERTS = {i.alert for i in DEFINED}
RANK = {"warning": 1, "critical": 2}


def worst(pairs: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Each alert once, at its worst severity (a critical tier hides its warning tier)."""
    best: dict[str, str] = {}
    for alert, severity in pairs:
        if alert in ALERTS and RANK[severity] > RANK.get(best.get(alert, ""), 0):
            best[alert] = severity
    return set(best.items())


def status_page_incidents(url: str) -> set[tuple[str, str]]:
    """What the status page shows: the same runs, through the snapshots it renders from."""
    settings = load_settings(
        {"database_url": url, "locales": "en,de", "media_storage_quota_bytes": "5000000000"}
    )
    (target,) = load_targets(settings)
    config = load_config(settings.queries_file)
    error, outcomes = asyncio.run(run_all(target, config))
    assert error is None
    now = Instant(time.time(), time.monotonic())
    snapshots = [transition(Snapshot(o.query), o, now)[0] for o in outcomes]
    found = incidents_now(snapshots, THRESHOLDS, DEFINED, now.wall)
    return {(f.incident.alert, f.incident.severity.value) for f in found}


SCENARIOS = [s for s in [*BENIGN, *INCIDENTS] if not s.stop_database and not s.env]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_alerts_triage_and_status_page_agree(
    cluster: object, scenario: Scenario, tmp_path: Path
) -> None:
    text = exposition(cluster, scenario)  # type: ignore[arg-type]
    alerts = worst({(a, s) for a, s, _ in firing(text, scenario.within, tmp_path)})
    url = exporter_dsn(cluster, DATABASE)  # type: ignore[arg-type]
    code, out, _ = run(url, "--json", locales="en,de")
    data = json.loads(out)
    triaged = {(f["alert"], f["alert_severity"]) for f in data["findings"]}
    page = status_page_incidents(url)
    assert alerts == triaged == page, {"alerts": alerts, "triage": triaged, "page": page}
    if scenario.kind == "benign":
        assert code == 0, data["findings"]
        assert data["verdict"] == "no incident"
    elif scenario.name in TRIAGE_OF:
        expected_code, severity, path = TRIAGE_OF[scenario.name]
        assert code == expected_code, data
        assert any(f["severity"] == severity and f["path"] == path for f in data["findings"])
