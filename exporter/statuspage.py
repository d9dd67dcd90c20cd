"""The status page at `/`: the runbook's quick reference with each check's current value and
state, then every query's health, per target. Plain HTML and CSS, no JavaScript.

It is made from the snapshots already in memory when a person asks for it, in a worker thread,
and kept for a second (0.02 s per target if longer): it never queries the database, concurrent
requests share one render, and while nobody looks at it, it costs nothing (with hundreds of
targets a render takes tenths of a second of CPU). The thresholds are the alerts' own
(exporter/quickref.json, generated from alerts/thresholds.yaml by tools/mixin).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter import __version__
from exporter.durations import format_duration
from exporter.incidents import (
    Firing,
    Incident,
    evaluate,
    load_thresholds,
    samples_of,
    shipped,
)
from exporter.snapshot import Failing, NeverRun, Ok, Skipped, Snapshot, is_up
from exporter.store import TargetStore

QUICKREF = Path(__file__).with_name("quickref.json")
STATES = {  # state -> (word, colour); colour is never the only signal
    "ok": ("OK", "#1b7f3b"),
    "warning": ("WARNING", "#9a6700"),
    "critical": ("CRITICAL", "#b42318"),
    "unknown": ("NO DATA", "#57606a"),
}


@dataclass(frozen=True)
class HealthCheck:
    """One row of the runbook's quick reference: a health check, its metric and thresholds."""

    name: str
    metric: str
    labels: Mapping[str, str]
    unit: str
    warning: float
    critical: float
    action: str
    section: str


def load_checks(path: Path = QUICKREF) -> tuple[str, list[HealthCheck]]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    checks = [
        HealthCheck(
            c["check"],
            c["metric"],
            c["labels"],
            c["unit"],
            float(c["warning"]),
            float(c["critical"]),
            c["action"],
            c["section"],
        )
        for c in data["checks"]
    ]
    return str(data["runbook_url"]), checks


def current(snapshots: Sequence[Snapshot], check: HealthCheck) -> float | None:
    """The worst (highest) value the check's metric has now, across its series."""
    values = [
        sample.value
        for snap in snapshots
        for family in snap.values.families
        if family.metric.name == check.metric
        for sample in family.samples
        if all(
            dict(zip(family.metric.labels, sample.labels, strict=True)).get(k) == v
            for k, v in check.labels.items()
        )
    ]
    return max(values) if values else None


def incidents_now(
    snapshots: Sequence[Snapshot],
    thresholds: Mapping[str, Any],
    incidents: Sequence[Incident],
    now: float,
) -> list[Firing]:
    """The runbook's incidents that hold on these snapshots: the conditions the alerting rules
    are rendered from and triage evaluates (exporter/incidents.py), on the same samples."""
    up = {s.query.name: u for s in snapshots if (u := is_up(s.status)) is not None}
    samples = samples_of((f for s in snapshots for f in s.values.families), up)
    return evaluate(samples, thresholds, now, incidents)


def state(value: float | None, check: HealthCheck) -> str:
    if value is None:
        return "unknown"
    if value > check.critical:
        return "critical"
    if value > check.warning:
        return "warning"
    return "ok"


def _shown(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "seconds":
        return f"{value * 1000:.0f} ms"
    if unit == "bytes":
        return f"{value / 1024**3:.2f} GB"
    if unit == "percent":
        return f"{value:.1f} %"
    if unit == "minutes":
        return f"{value:.1f} min"
    return f"{value:g} {unit}"


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    if now - at < 1:
        return "just now"
    return f"{format_duration(round(now - at))} ago"


CSS = """
body{font:15px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:0 auto;padding:12px;
max-width:960px;color:#1f2328;background:#fff}
h1{font-size:20px;margin:4px 0}h2{font-size:17px;margin:18px 0 6px}
.meta{color:#57606a;font-size:13px}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:6px 8px;
border-bottom:1px solid #d0d7de;vertical-align:top;overflow-wrap:anywhere}
th{font-size:13px;color:#57606a}td:first-child{overflow-wrap:normal}
.state{font-weight:700;color:#fff;border-radius:4px;padding:2px 6px;font-size:12px;
white-space:nowrap}
.err{color:#b42318;font-size:13px;overflow-wrap:anywhere}
tr.witherr td{border-bottom:0}tr.errrow td{padding-top:0}
@media (max-width:600px){.wide{display:none}td,th{padding:5px 4px}}
"""


def _badge(name: str) -> str:
    word, colour = STATES[name]
    return f'<span class="state {name}" style="background:{colour}">{word}</span>'


def render(
    targets: Sequence[tuple[str, TargetStore]],
    runbook_url: str,
    checks: Sequence[HealthCheck],
    now: float,
    links: Sequence[tuple[str, str]],
    thresholds: Mapping[str, Any] | None = None,
    incidents: Sequence[Incident] = (),
) -> bytes:
    """The whole page for these targets' current snapshots."""
    e = html.escape
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        "<title>Homepage CMS status</title><style>" + CSS + "</style></head><body>",
        "<h1>Homepage CMS status</h1>",
        f"<p class=meta>homepage-cms-exporter {e(__version__)} &middot; as of {stamp} &middot; "
        + " &middot; ".join(f'<a href="{e(href)}">{e(text)}</a>' for text, href in links)
        + "</p>",
    ]
    for name, store in targets:
        snaps = store.snapshots
        up = store.database_up
        title = f"Target {e(name)}" if name else "Database"
        out.append(
            f"<h2>{title}: {_badge('ok') if up else _badge('critical')}"
            f" {'reachable' if up else 'unreachable'}</h2>"
        )
        out.append(
            "<table><tr><th>Check</th><th>Now</th><th class=wide>Warning</th>"
            "<th class=wide>Critical</th><th>State</th><th class=wide>Action</th></tr>"
        )
        for check in checks:
            value = current(snaps, check)
            s = state(value, check)
            out.append(
                f'<tr data-check="{e(check.metric)}" data-state="{s}">'
                f'<td><a href="{e(runbook_url)}#{e(check.section)}">{e(check.name)}</a></td>'
                f"<td>{_shown(value, check.unit)}</td>"
                f"<td class=wide>&gt; {_shown(check.warning, check.unit)}</td>"
                f"<td class=wide>&gt; {_shown(check.critical, check.unit)}</td>"
                f"<td>{_badge(s)}</td><td class=wide>{e(check.action)}</td></tr>"
            )
        out.append("</table>")
        firings = incidents_now(snaps, thresholds or {}, incidents, now) if incidents else []
        out.append(
            "<h2>Incidents</h2>"
            + ("<p>None: no alert condition holds.</p>" if not firings else "")
            + "<table><tr><th>Alert</th><th>Runbook</th><th>State</th><th class=wide>What</th>"
            "</tr>"
        )
        for f in firings:
            i = f.incident
            path = f" path {i.path}" if i.path else ""
            out.append(
                f'<tr data-alert="{e(i.alert)}" data-state="{i.severity}">'
                f'<td><a href="{e(runbook_url)}#{e(i.section)}">{e(i.alert)}</a></td>'
                f"<td>{i.priority.label}{path}</td><td>{_badge(i.severity.value)}</td>"
                f"<td class=wide>{e(i.summary)}</td></tr>"
            )
        out.append("</table>")
        out.append(
            "<h2>Queries</h2><table><tr><th>Query</th><th>State</th><th>Last success</th>"
            "<th class=wide>Every</th></tr>"
        )
        for snap in snaps:
            match snap.status:
                case Skipped(requirement):
                    q_state, word = "unknown", f"skipped: needs {requirement.advice}"
                case NeverRun():
                    q_state, word = "unknown", "not run yet"
                case Ok():
                    q_state, word = "ok", ""
                case Failing():
                    q_state, word = "critical", ""
            success = snap.last_success.wall if snap.last_success else None
            error = snap.last_error is not None
            out.append(
                f'<tr data-query="{e(snap.query.name)}" data-state="{q_state}"'
                f"{' class=witherr' if error else ''}>"
                f"<td>{e(snap.query.name)}</td><td>{_badge(q_state)} {e(word)}</td>"
                f"<td>{_ago(success, now)}</td>"
                f"<td class=wide>{format_duration(snap.query.interval)}</td></tr>"
            )
            if snap.last_error is not None:  # on a row of its own: readable on a phone
                out.append(
                    f"<tr class=errrow><td colspan=4><span class=err>last error"
                    f" {_ago(snap.last_error.at.wall, now)}:"
                    f" {e(snap.last_error.message[:200])}</span></td></tr>"
                )
        out.append("</table>")
    out.append("</body></html>")
    return "".join(out).encode()


# A render is served for this long, or this times the targets if longer: with hundreds of
# targets a render costs tenths of a second of CPU, and a person reading it needs no more.
FRESH_SECONDS = 1.0
FRESH_SECONDS_PER_TARGET = 0.02


class StatusPage:
    """The page at `/`: `current()` is what HTTP hands out, rendered on request and kept while
    fresh; `render_now()` renders at once (tests, and `current()` in its worker thread)."""

    def __init__(
        self,
        targets: Sequence[tuple[str, TargetStore]],
        links: Sequence[tuple[str, str]],
        clock: Callable[[], float],
        quickref: Path = QUICKREF,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._targets = list(targets)
        self._links = list(links)
        self._clock = clock
        self._monotonic = monotonic
        self._runbook_url, self._checks = load_checks(quickref)
        self._thresholds = load_thresholds(quickref)
        self._incidents = shipped(self._thresholds)
        self.fresh_for = max(FRESH_SECONDS, FRESH_SECONDS_PER_TARGET * len(self._targets))
        self._body: bytes | None = None
        self._rendered_at = float("-inf")
        self._rendering: asyncio.Future[bytes] | None = None

    def render_now(self) -> bytes:
        self._body = render(
            self._targets,
            self._runbook_url,
            self._checks,
            self._clock(),
            self._links,
            self._thresholds,
            self._incidents,
        )
        return self._body

    async def current(self) -> bytes:
        """The page as of at most `fresh_for` seconds ago: the last render if it is that
        recent, else a new one, made in a worker thread (the event loop and every scrape go
        on meanwhile) and shared by every request that arrives while it is made."""
        if self._body is not None and self._monotonic() - self._rendered_at < self.fresh_for:
            return self._body
        if self._rendering is None or self._rendering.done():
            self._rendering = asyncio.ensure_future(self._render())
        # Shielded: a client that hangs up does not cancel the render the others wait for.
        return await asyncio.shield(self._rendering)

    async def _render(self) -> bytes:
        started = self._monotonic()
        body = await asyncio.to_thread(self.render_now)
        self._rendered_at = started
        return body
