"""`homepage-cms-exporter triage`: the runbook's incident procedures as one read-only command.

Triage runs the shipped queries once (the same `run_query` the daemon uses), evaluates every
incident of exporter/incidents.py on their samples (the conditions the alerting rules are
rendered from), and for each incident that holds reads the offending rows and prints the
statements a human runs (exporter/triage/drilldown.py). It never runs them: every statement is
read-only here, as the exporter role.

Exit codes: 0 no incident, 1 P3, 2 P2, 3 P1 (the worst finding decides, even when another check
could not run), 4 cannot tell (unreachable, no CMS schema here, or a check failed and nothing
was found).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from exporter.config import Config
from exporter.db import Database
from exporter.errors import QueryError
from exporter.incidents import (
    RENDER,
    Incident,
    evaluate,
    load_thresholds,
    samples_of,
    shipped,
)
from exporter.runner import ping, reachable, run_query
from exporter.snapshot import Outcome, Skipped, Values
from exporter.targets import Target
from exporter.triage.drilldown import Context, drilldown
from exporter.triage.report import EXIT_CANNOT_TELL, Finding, Report, write_json, write_text

__all__ = ["EXIT_CANNOT_TELL", "Report", "run_triage", "triage", "where"]

CONNECT_TIMEOUT_SECONDS = 5.0
DRILLDOWN_TIMEOUT_SECONDS = 5.0
# On-call waits for triage: no query may take longer than this (a render blocked for longer is
# "not loading"; the runbook calls one over a second slow, which is still measured).
QUERY_DEADLINE_SECONDS = 10.0
# Enough connections that the per-locale renders and the drill-downs run side by side.
POOL_SIZE = 4
# The CMS's own objects: with none of them here, this is not the CMS's database.
CMS_PRESENT = (
    "SELECT to_regclass('public.homepage_sections') IS NOT NULL"
    " OR to_regprocedure('public.get_homepage_content(text)') IS NOT NULL AS present"
)


def where(target: Target) -> str:
    """The database triage looked at, without a secret: a target's name, or user@host:port/db."""
    return target.name if target.in_targets_file else target.database.where()


async def _run_queries(
    db: Database, config: Config, target: Target, incidents: Sequence[Incident]
) -> list[Outcome]:
    params, cap = target.params, target.max_series_per_query
    # Only the queries an incident reads: the 6-hourly scans of version content, say, decide
    # nothing here and would only spend the deadline.
    read = {m for i in incidents for m in i.metrics}
    queries = [
        dataclasses.replace(q, timeout=min(q.timeout, QUERY_DEADLINE_SECONDS))
        for q in config.enabled
        if q.name == RENDER or any(m.name in read for m in q.metrics)
    ]
    # The render probe runs each locale within its own deadline (each: locales, in run_query
    # as in the daemon): a slow locale is measured as slow, one that cannot render fails it.
    return list(await asyncio.gather(*(run_query(db, q, params, cap) for q in queries)))


async def triage(
    target: Target,
    config: Config,
    *,
    thresholds: Mapping[str, Any] | None = None,
    incidents: Sequence[Incident] | None = None,
) -> Report:
    """Every incident evaluated once against `target`; never raises for database trouble."""
    started = time.monotonic()
    t = load_thresholds() if thresholds is None else thresholds
    chosen = shipped(t) if incidents is None else incidents
    report = Report(where(target))
    async with target.database.open(at_least=POOL_SIZE) as db:
        error = await ping(db, min(target.database.connect_timeout, CONNECT_TIMEOUT_SECONDS))
        if not reachable(error) and error is not None:
            report.unreachable = error.message
            report.seconds = time.monotonic() - started
            return report
        present = await db.fetch(CMS_PRESENT, (), DRILLDOWN_TIMEOUT_SECONDS)
        if not present.rows or not present.rows[0][0]:
            report.no_cms = report.target
            report.seconds = time.monotonic() - started
            return report
        outcomes = await _run_queries(db, config, target, chosen)
        errors: dict[str, str] = {}
        up: dict[str, bool] = {}
        for o in outcomes:
            match o.result:
                case QueryError(reason=reason, message=message):
                    errors[o.query.name] = f"{reason}: {message}"
                    up[o.query.name] = False
                case Skipped(requirement):
                    report.skipped[o.query.name] = str(requirement)
                case Values():
                    up[o.query.name] = True
        report.failed.update(errors)
        samples = samples_of((f for o in outcomes for f in o.values.families), up)
        firings = evaluate(samples, t, time.time(), chosen)
        ctx = Context(db, target.locales, t, errors, DRILLDOWN_TIMEOUT_SECONDS, target.params)

        async def explain(firing: Any) -> Finding:
            try:
                return await drilldown(firing.incident.alert)(ctx, firing)
            except QueryError as exc:
                report.failed[f"drill-down {firing.incident.alert}"] = (
                    f"{exc.reason}: {exc.message}"
                )
                return Finding(
                    firing.incident,
                    firing.incident.summary,
                    "the offending rows could not be read",
                    [{**labels, "value": value} for labels, value in firing.series],
                )

        report.findings = list(await asyncio.gather(*(explain(f) for f in firings)))
    report.findings.sort(key=lambda f: (-f.priority, f.resolution_path or "Z", f.incident.alert))
    report.checks = len(outcomes)
    report.seconds = time.monotonic() - started
    return report


def run_triage(target: Target, config: Config, *, as_json: bool, out: TextIO) -> int:
    report = asyncio.run(triage(target, config))
    (write_json if as_json else write_text)(report, out)
    return report.exit_code
