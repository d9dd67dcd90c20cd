"""One run of one query, shared by the daemon, `once`, `check` and `triage`; and the ping.

    run_query(database, query, params, max_series) -> Outcome

A run checks what the query requires (extensions, server version, the schema contract), runs
its statement read-only (once per value with `each:`, each value on its own deadline), and
maps and encodes the rows. It never raises for database trouble: every failure is an
`Outcome` carrying a classified `QueryError`, and a missing requirement is a `Skipped`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

from exporter.config import Query
from exporter.contract import Kind, Requirement, first_missing
from exporter.db import Database, Result
from exporter.errors import ErrorReason, QueryError
from exporter.exposition import Fragment, to_client_families
from exporter.mapping import map_rows
from exporter.snapshot import Outcome, Skipped, Values

# Results with more rows than this are mapped and encoded in a worker thread (see run_query).
INLINE_ROWS = 200
# A query run once per locale may take this many of its timeouts in all, however many locales.
EACH_BUDGET_TIMEOUTS = 3


def _map_and_encode(
    query: Query, columns: Sequence[str], rows: Sequence[Sequence[object]], max_series: int
) -> Values:
    families = map_rows(query, columns, rows, max_series=max_series)
    fragment = Fragment.encode(to_client_families(families, query.interval))
    return Values(families, fragment, rows=len(rows))


async def run_query(
    db: Database, query: Query, params: Mapping[str, object], max_series: int
) -> Outcome:
    """Run a query once, read-only, and map its rows; never raises for database trouble.
    `params`: the values a query may declare as positional parameters, by name."""
    started = time.perf_counter()
    try:
        if query.requires or query.min_server_version:
            info = await db.server_info(query.timeout)
            missing = [e for e in query.requires if e not in info.extensions]
            if missing:
                return Outcome(query, 0.0, Skipped(Requirement(Kind.EXTENSION, missing[0])))
            if query.min_server_version and info.major_version < query.min_server_version:
                needed = Requirement(Kind.SERVER_VERSION, str(query.min_server_version))
                return Outcome(query, 0.0, Skipped(needed))
        # The schema contract: a column the CMS lacks, or the role script not run, is a skip
        # naming it (a deployment mistake), not a failing query that pages as a blind check.
        lacking = await first_missing(db, query.needs, query.timeout)
        if lacking is not None:
            return Outcome(query, 0.0, Skipped(lacking))
        # Each row yields at least one series: fetching stops one row past the cap.
        cap = query.series_cap(max_series)
        result = await _fetch(db, query, params, cap)
        if len(result.rows) <= INLINE_ROWS:
            # A few rows encode in well under a millisecond: cheaper here than a thread hop
            # (which, with hundreds of targets, cost more CPU than the encoding itself).
            values = _map_and_encode(query, result.columns, result.rows, max_series)
        else:
            # Encoding a large result takes time: a worker thread keeps /metrics answering.
            values = await asyncio.to_thread(
                _map_and_encode, query, result.columns, result.rows, max_series
            )
    except QueryError as exc:
        return Outcome(query, time.perf_counter() - started, exc)
    return Outcome(query, time.perf_counter() - started, values)


async def _fetch(db: Database, query: Query, params: Mapping[str, object], cap: int) -> Result:
    """The query's rows; with `each`, one statement per value (one locale at a time, on the
    target's connection), each within the query's timeout, all within a budget of
    EACH_BUDGET_TIMEOUTS timeouts. Any value that fails fails the run, naming the value: a
    locale that cannot render in time is not loading."""
    if query.each is None:
        return await db.fetch(
            query.sql, [params[p] for p in query.params], query.timeout, max_rows=cap
        )
    values = list(params[query.each])  # type: ignore[call-overload]
    deadline = time.monotonic() + query.timeout * EACH_BUDGET_TIMEOUTS
    columns: tuple[str, ...] = ()
    rows: list[tuple[object, ...]] = []
    duration = 0.0
    for value in values:
        left = deadline - time.monotonic()
        if left <= 0:
            raise QueryError(
                ErrorReason.TIMEOUT,
                f"{query.each} {value!r} not run: the budget of"
                f" {EACH_BUDGET_TIMEOUTS} timeouts was spent on the ones before",
            )
        one = {**params, query.each: [value]}
        try:
            part = await db.fetch(
                query.sql,
                [one[p] for p in query.params],
                min(query.timeout, left),
                max_rows=max(1, cap + 1 - len(rows)),
            )
        except QueryError as exc:
            budget = (
                f" (the budget of {EACH_BUDGET_TIMEOUTS} timeouts ran out)"
                if exc.reason is ErrorReason.TIMEOUT and left < query.timeout
                else ""
            )
            raise QueryError(exc.reason, f"{query.each} {value!r}: {exc.message}{budget}") from None
        columns = part.columns
        rows.extend(part.rows)
        duration += part.duration
    return Result(columns, tuple(rows), duration)


async def ping(db: Database, timeout: float) -> QueryError | None:
    """`SELECT 1`: None if the database answered, else why not."""
    try:
        await db.ping(timeout)
    except QueryError as exc:
        return exc
    return None


def reachable(error: QueryError | None) -> bool:
    """Whether a ping's result means the database is up (a permission error still answered)."""
    return error is None or error.reason not in (ErrorReason.CONNECTION, ErrorReason.TIMEOUT)
