"""Triage's exit code for every combination of what it found and what it could not check.

The worst finding decides, even beside a failed check (a P1 with a failed check is still 3,
not 4: on-call must not read "cannot tell" over a blank homepage); only with nothing found
does a failed check mean "cannot tell" (4); an unreachable database or one without the CMS is
always 4. The findings are the shipped incidents (exporter/incidents.py), one per priority.
"""

from __future__ import annotations

import io
import itertools
import json

import pytest

from exporter.incidents import Incident, Priority, shipped
from exporter.triage.report import EXIT_CANNOT_TELL, Finding, Report, write_json

INCIDENTS = shipped()


def incident_of(priority: Priority) -> Incident:
    return next(i for i in INCIDENTS if i.priority is priority)


def finding(priority: Priority) -> Finding:
    incident = incident_of(priority)
    return Finding(incident, incident.summary, "seen now")


FOUND = {  # name -> the priorities of what was found
    "nothing": (),
    "P3": (Priority.P3,),
    "P2": (Priority.P2,),
    "P1": (Priority.P1,),
    "P3+P2": (Priority.P3, Priority.P2),
    "P2+P1": (Priority.P2, Priority.P1),
    "P3+P1": (Priority.P1, Priority.P3),
    "P3+P2+P1": (Priority.P3, Priority.P1, Priority.P2),
}
FAILED = {"no-failed-check": {}, "a-failed-check": {"homepage_render[en]": "timeout: 5s"}}


def expected(found: tuple[Priority, ...], failed: dict[str, str]) -> int:
    """The rule as the module docstring of exporter/triage states it, written out."""
    if found:
        return int(max(found))
    return EXIT_CANNOT_TELL if failed else 0


@pytest.mark.parametrize(
    ("found", "failed"),
    list(itertools.product(FOUND, FAILED)),
)
def test_the_worst_finding_decides_and_a_failed_check_only_when_nothing_was_found(
    found: str, failed: str
) -> None:
    report = Report("db", findings=[finding(p) for p in FOUND[found]], failed=dict(FAILED[failed]))
    assert report.exit_code == expected(FOUND[found], FAILED[failed])


def test_the_table_covers_the_codes_the_docs_promise() -> None:
    codes = {expected(FOUND[a], FAILED[b]) for a, b in itertools.product(FOUND, FAILED)}
    assert codes == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("found", list(FOUND))
@pytest.mark.parametrize("why", ["unreachable", "no_cms"])
def test_an_unreachable_database_or_no_cms_cannot_tell_whatever_else(found: str, why: str) -> None:
    for failed in FAILED.values():
        report = Report("db", findings=[finding(p) for p in FOUND[found]], failed=dict(failed))
        setattr(report, why, "connection refused")
        assert report.exit_code == EXIT_CANNOT_TELL


@pytest.mark.parametrize(("found", "failed"), [("P1", "a-failed-check"), ("P2", "a-failed-check")])
def test_json_says_the_same_code_and_severity(found: str, failed: str) -> None:
    report = Report("db", findings=[finding(p) for p in FOUND[found]], failed=dict(FAILED[failed]))
    out = io.StringIO()
    write_json(report, out)
    doc = json.loads(out.getvalue())
    assert doc["exit_code"] == report.exit_code == int(FOUND[found][0])
    assert doc["severity"] == FOUND[found][0].label
    assert doc["failed_checks"] == FAILED[failed]
