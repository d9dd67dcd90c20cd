"""Each threshold at its edge, from both sides, for all three of its readers: the alerting
rules (through promtool), the status page's colouring (`statuspage.state` with the checks of
exporter/quickref.json) and the incidents triage and the page evaluate (`Incident.firing`).
All three read the one table in tests/edges.py: at the threshold is quiet, just over fires.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import yaml

from exporter.incidents import Incident, Severity, Threshold, shipped
from exporter.statuspage import HealthCheck, load_checks, state
from tests.edges import EDGES, THRESHOLDS, Edge, selector

NOW = 1_700_000_000.0
INCIDENTS = shipped(dict(THRESHOLDS))
_, CHECKS = load_checks()
NEXT = {"warning": ("ok", "warning"), "critical": ("warning", "critical")}  # (at, just over)


def _bounds(incident: Incident) -> set[tuple[str, str | None]]:
    """The thresholds an incident's condition reads: (key, tier)."""
    signals = (incident.when, incident.also, incident.unless)
    return {
        (s.bound.key, s.bound.tier.value if s.bound.tier is not None else None)
        for s in signals
        if s is not None and isinstance(s.bound, Threshold)
    }


def _check(edge: Edge) -> HealthCheck | None:
    """The status page's check on this edge's threshold, if the page shows one."""
    found = [
        c
        for c in CHECKS
        if c.section == edge.alert.lower()
        and c.metric == edge.metric
        and all(edge.labels.get(k) == v for k, v in c.labels.items())
    ]
    assert len(found) <= 1
    return found[0] if found else None


def _readers(edge: Edge) -> list[Incident]:
    return [i for i in INCIDENTS if (edge.key, edge.tier) in _bounds(i)]


ON_THE_PAGE = [e for e in EDGES if _check(e) is not None]
IN_INCIDENTS = [e for e in EDGES if _readers(e)]


# --- the table covers every reader's thresholds ---------------------------------------------


def test_every_status_page_check_has_both_its_edges_in_the_table() -> None:
    for check in CHECKS:
        edges = {e.tier: e for e in ON_THE_PAGE if _check(e) == check}
        assert set(edges) == {"warning", "critical"}, check.name
        assert (edges["warning"].threshold, edges["critical"].threshold) == (
            check.warning,
            check.critical,
        ), f"{check.name}: the page's thresholds are not the alert's"


def test_every_threshold_an_incident_reads_has_an_edge_in_the_table() -> None:
    read = set().union(*(_bounds(i) for i in INCIDENTS))
    assert read, "the incidents read thresholds"
    assert read - {(e.key, e.tier) for e in EDGES} == set()


def test_every_edge_names_a_threshold_of_its_alerts_severity() -> None:
    for edge in EDGES:
        assert edge.severity in NEXT, edge
        if edge.tier is not None:
            assert edge.tier == edge.severity, edge
        for incident in _readers(edge):
            assert incident.alert == edge.alert, edge
            assert incident.severity is Severity(edge.severity), edge


# --- the status page --------------------------------------------------------------------------


@pytest.mark.parametrize("edge", ON_THE_PAGE, ids=str)
def test_the_status_page_colours_the_threshold_as_quiet_and_just_over_as_the_next_state(
    edge: Edge,
) -> None:
    check = _check(edge)
    assert check is not None
    quiet, next_state = NEXT[edge.severity]
    assert state(edge.at, check) == quiet, f"{check.name} at exactly {edge.at}"
    assert state(edge.over, check) == next_state, f"{check.name} at {edge.over}"


# --- the incidents (triage and the status page's incident list) -------------------------------


def _samples(edge: Edge, value: float) -> dict[str, list[tuple[Mapping[str, str], float]]]:
    """The edge's series at `value` (a timestamp that old, for an age), and its constants."""
    samples: dict[str, list[tuple[Mapping[str, str], float]]] = {
        edge.metric: [(dict(edge.labels), NOW - value if edge.age else value)]
    }
    for metric, labels, constant in edge.constant:
        samples.setdefault(metric, []).append((dict(labels), constant))
    return samples


@pytest.mark.parametrize("edge", IN_INCIDENTS, ids=str)
def test_incidents_are_quiet_at_the_threshold_and_fire_just_over(edge: Edge) -> None:
    for incident in _readers(edge):
        at = incident.firing(_samples(edge, edge.at), THRESHOLDS, NOW)
        over = incident.firing(_samples(edge, edge.over), THRESHOLDS, NOW)
        assert at == [], f"{incident.alert} {incident.severity} fires at exactly {edge.at}"
        assert over, f"{incident.alert} {incident.severity} quiet at {edge.over}"


# --- the alerting rules -----------------------------------------------------------------------


def _promtool_cases(edges: Sequence[Edge]) -> list[dict[str, object]]:
    from tests.test_alert_boundaries import Edge as AlertEdge
    from tests.test_alert_boundaries import _case, _minutes, _tier

    out = []
    for edge in edges:
        alert_edge = AlertEdge(
            edge.alert,
            edge.severity,
            selector(edge.metric, edge.labels),
            bad=edge.over,
            good=edge.at,
            constant={selector(m, labels): v for m, labels, v in edge.constant},
            kind="age" if edge.age else "gauge",
        )
        hold = _minutes(_tier(edge.alert, edge.severity).for_)
        out.append(_case(f"{edge} fires just over", alert_edge, edge.over, hold, True))
        out.append(_case(f"{edge} is quiet at the threshold", alert_edge, edge.at, hold, False))
    return out


PROMTOOL = shutil.which("promtool")
RULES = Path(__file__).resolve().parent.parent / "alerts" / "homepage-cms.rules.yml"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
@pytest.mark.slow
def test_the_alerts_are_quiet_at_the_threshold_and_fire_just_over(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    shutil.copy(RULES, tmp_path / RULES.name)
    suite = {
        "rule_files": [RULES.name],
        "evaluation_interval": "1m",
        "tests": _promtool_cases(EDGES),
    }
    path = tmp_path / "edges.test.yml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False, width=200))
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
