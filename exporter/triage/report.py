"""What triage found, and how it is written: text for a person at 3 a.m., JSON for chat-ops."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from exporter.incidents import Incident, Priority, RunbookPath

RUNBOOK = "docs/runbook.md"
EXIT_CANNOT_TELL = 4
VERDICTS = {
    Priority.P1: "P1 homepage not loading",
    Priority.P2: "P2 scheduled publishes not working",
    Priority.P3: "P3 performance degradation",
}
# An incident of P1 urgency that is not "the homepage is not loading": its own words.
EXPOSED = "P1 CMS data exposed to the public"


def human_age(seconds: float) -> str:
    """An age as people read it: 12s, 47m, 2h 5m, 3d 4h (rounded down, so a clock that moved a
    few seconds since the row was read does not change what is shown)."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m"


@dataclass(frozen=True)
class Finding:
    """One firing incident, with its offending rows and what a human does next."""

    incident: Incident
    title: str
    seen: str
    rows: Sequence[Mapping[str, object]] = ()
    next_step: str = ""
    statements: Sequence[str] = ()  # for a human to run; never run here
    path: RunbookPath | None = None  # the drill-down's refinement of the incident's path

    @property
    def priority(self) -> Priority:
        return self.incident.priority

    @property
    def resolution_path(self) -> RunbookPath:
        return self.incident.path if self.path is None else self.path

    def as_dict(self) -> dict[str, object]:
        return {
            "alert": self.incident.alert,
            "alert_severity": self.incident.severity.value,
            "severity": self.priority.label,
            "path": self.resolution_path,
            "title": self.title,
            "seen": self.seen,
            "rows": [{k: _plain(v) for k, v in row.items()} for row in self.rows],
            "next_step": self.next_step,
            "statements": list(self.statements),
            "runbook": f"{RUNBOOK}#{self.incident.section}",
        }


@dataclass
class Report:
    target: str  # the target's name, or where the one database is (host, port, database)
    findings: list[Finding] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # check or query -> why it did not run
    skipped: dict[str, str] = field(default_factory=dict)  # query -> what it requires
    unreachable: str | None = None
    no_cms: str | None = None  # set when the database has no Homepage CMS schema
    seconds: float = 0.0
    checks: int = 0

    @property
    def priority(self) -> Priority:
        return max((f.priority for f in self.findings), default=Priority.NONE)

    @property
    def exit_code(self) -> int:
        """The worst finding decides, even when a check failed beside it; only with nothing
        found does a failed check mean "cannot tell"."""
        if self.unreachable is not None or self.no_cms is not None:
            return EXIT_CANNOT_TELL
        if self.findings:
            return int(self.priority)
        return EXIT_CANNOT_TELL if self.failed else 0

    @property
    def verdict(self) -> str:
        if self.unreachable is not None:
            return f"cannot tell: the database is unreachable ({self.unreachable})"
        if self.no_cms is not None:
            return f"cannot tell: this database has no Homepage CMS schema ({self.no_cms})"
        if not self.findings:
            return "cannot tell: a check failed" if self.failed else "no incident"
        top = [f for f in self.findings if f.priority is self.priority]
        if self.priority is Priority.P1 and all(f.resolution_path == "" for f in top):
            return EXPOSED
        return VERDICTS[self.priority]


def _plain(value: object) -> object:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, int | float | bool | str) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def _cell(key: str, value: object) -> str:
    if value is None:
        return f"{key}=-"
    if key.endswith("_seconds"):
        name = key.removesuffix("_seconds")
        seconds = float(str(value))
        shown = human_age(seconds) if seconds >= 1 else f"{seconds * 1000:.0f}ms"
        return f"{name}={shown}"
    if isinstance(value, dt.datetime):
        return f"{key}={value.astimezone(dt.UTC):%Y-%m-%d %H:%M:%SZ}"
    text = " ".join(str(_plain(value)).split())
    return f"{key}={text}" if " " not in text else f'{key}="{text}"'


def write_text(report: Report, out: TextIO) -> None:
    out.write(f"triage ({report.target}): {report.verdict}\n")
    if report.unreachable is not None:
        return
    if report.no_cms is not None:
        out.write(
            "  the tables and functions of the Homepage CMS are not in this database: is"
            " DATABASE_URL the CMS's database?\n"
        )
        return
    if not report.findings and not report.failed:
        out.write("no incident: every check passed\n")
    for f in report.findings:
        path = f.resolution_path
        label = f"{f.priority.label}{' ' + path if path else ''}"
        out.write(
            f"\n[{label}] {f.title}\n  alert: {f.incident.alert} ({f.incident.severity})\n"
            f"  seen: {f.seen}\n"
        )
        for row in f.rows:
            out.write("    " + "  ".join(_cell(k, v) for k, v in row.items()) + "\n")
        if f.next_step:
            out.write(f"  next: {f.next_step}\n")
        if f.statements:
            out.write("  run by hand, if it applies (triage never runs these):\n")
            for statement in f.statements:
                out.write(f"    {statement}\n")
        out.write(f"  read: {RUNBOOK}#{f.incident.section}\n")
    for name, why in report.failed.items():
        out.write(f"\n[check failed] {name}: {why}\n")
    for name, why in report.skipped.items():
        out.write(f"[skipped] {name}: requires {why}\n")
    out.write(f"\n{report.checks} checks in {report.seconds:.2f} s\n")


def write_json(report: Report, out: TextIO) -> None:
    json.dump(
        {
            "target": report.target,
            "verdict": report.verdict,
            "severity": report.priority.label if report.findings else None,
            "exit_code": report.exit_code,
            "unreachable": report.unreachable,
            "no_cms_schema": report.no_cms is not None,
            "findings": [f.as_dict() for f in report.findings],
            "failed_checks": report.failed,
            "skipped_checks": report.skipped,
            "seconds": round(report.seconds, 3),
        },
        out,
        indent=2,
    )
    out.write("\n")
