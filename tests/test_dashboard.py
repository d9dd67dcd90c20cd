"""Dashboard lint: datasource variable, units, thresholds equal to the alerts', known metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from exporter import selfmetrics
from exporter.config import load_config
from exporter.settings import SHIPPED_QUERIES
from tools.mixin.render import DASHBOARD, THRESHOLDS
from tools.mixin.rules import RECORDING_RULES, alerts
from tools.mixin.thresholds import load_thresholds

ROOT = Path(__file__).resolve().parent.parent


def board() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / DASHBOARD).read_text())
    return data


def panels() -> Iterator[dict[str, Any]]:
    for panel in board()["panels"]:
        if panel["type"] != "row":
            yield panel


def known_metrics() -> set[str]:
    names = {m.name for q in load_config(SHIPPED_QUERIES).queries for m in q.metrics}
    own = [
        *selfmetrics.target_families([], database_up=True),
        *selfmetrics.exporter_families(reload_successful=True, reload_timestamp=0),
    ]
    names |= {f.name + ("_total" if f.type == "counter" else "") for f in own}
    names |= {record for _, record, _ in RECORDING_RULES}
    return names | {"up", "ALERTS"}


def test_datasource_job_and_instance_variables() -> None:
    variables = {v["name"]: v for v in board()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= variables.keys()


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert "$job" in target["expr"], panel["title"]
            assert "$instance" in target["expr"], panel["title"]


def test_no_hard_coded_datasource_uid() -> None:
    text = (ROOT / DASHBOARD).read_text()
    uids = set(re.findall(r'"uid": "([^"]*)"', text))
    assert uids == {"${datasource}", board()["uid"]}


def test_every_panel_has_a_unit() -> None:
    for panel in panels():
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]


def test_panel_thresholds_equal_the_alert_thresholds() -> None:
    t = load_thresholds(ROOT / THRESHOLDS)
    by_alert: dict[str, set[float]] = {}
    for alert in alerts(t):
        found = re.findall(r"[<>]=? ([0-9.e+]+)\s*$", alert.expr.split("\n")[0])
        if found:
            by_alert.setdefault(alert.name, set()).add(float(found[0]))
    checked = 0
    for panel in panels():
        for link in panel.get("links", []):
            name = link["title"].removeprefix("Runbook: ")
            if name not in by_alert:
                continue
            steps = {
                s["value"]
                for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
                if s["value"] is not None
            }
            assert steps == by_alert[name], (panel["title"], steps, by_alert[name])
            checked += 1
    assert checked >= 15


def test_every_query_uses_only_metrics_we_produce() -> None:
    known = known_metrics()
    exprs = [t["expr"] for p in panels() for t in p["targets"]]
    exprs += [a["expr"] for a in board()["annotations"]["list"]]
    for variable in board()["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["definition"])
    for expr in exprs:
        for name in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", expr):
            assert name in known, (name, expr)


def test_alert_annotations_and_runbook_links() -> None:
    annotation = board()["annotations"]["list"][0]
    assert annotation["expr"].startswith("ALERTS{")
    assert any(p.get("links") for p in panels())
    assert board()["links"][0]["url"].endswith("docs/runbook.md")


def test_provisioning_files_point_at_the_dashboards() -> None:
    provider = yaml.safe_load(
        (ROOT / "grafana/provisioning/dashboards/homepage-cms.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"].endswith("dashboards")
    datasource = yaml.safe_load(
        (ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["type"] == "prometheus"
