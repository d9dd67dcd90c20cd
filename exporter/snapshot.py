"""What a query last told us, and the one pure rule that turns the next run into the next state.

    transition(previous snapshot, outcome of a run, now) -> (next snapshot, events to log)

The scheduler and `once` both use it; it reads no clock and touches no store, so every rule
(keep the last values while they are fresh, withdraw them once stale, count runs and errors,
log a failure once and its recovery once) is unit-tested with a fake clock and no sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Protocol

from exporter.config import Query
from exporter.contract import Requirement as Requirement  # re-exported: Outcome names it
from exporter.errors import ErrorReason, QueryError
from exporter.exposition import EMPTY, Fragment
from exporter.mapping import Family


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one run of one query produced: values, a classified error, or a skip."""

    query: Query
    duration: float
    families: tuple[Family, ...] = ()
    fragment: Fragment = EMPTY
    rows: int = 0
    error: QueryError | None = None
    skipped: Requirement | None = None

    @property
    def series(self) -> int:
        return sum(len(f.samples) for f in self.families)


@dataclass(frozen=True, slots=True)
class Instant:
    """A moment by both clocks: wall time for what we export, monotonic time for ages."""

    wall: float
    monotonic: float


class Clock(Protocol):
    def now(self) -> Instant: ...


class SystemClock:
    def now(self) -> Instant:
        return Instant(time.time(), time.monotonic())


_NO_ERRORS: Mapping[ErrorReason, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything known about one query; replaced whole after every run, never mutated."""

    query: Query
    fragment: Fragment = EMPTY
    families: tuple[Family, ...] = ()  # the values behind `fragment`
    up: bool | None = None
    skipped: Requirement | None = None
    duration: float | None = None
    last_success: Instant | None = None
    last_error: str | None = None
    last_error_at: Instant | None = None
    runs: int = 0
    errors: Mapping[ErrorReason, int] = field(default_factory=lambda: _NO_ERRORS)
    failing: ErrorReason | None = None  # the reason of the current run of failures
    failed_runs: int = 0

    @property
    def series(self) -> int:
        return sum(len(f.samples) for f in self.families)

    def carried_to(self, query: Query) -> Snapshot:
        """This query's counters under a changed definition (after a reload); values start over:
        they came from the old SQL."""
        return Snapshot(
            query,
            runs=self.runs,
            errors=self.errors,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
        )


@dataclass(frozen=True, slots=True)
class Event:
    """A line to log: the level, the event name and its fields."""

    level: str  # "info" or "warning"
    name: str
    fields: Mapping[str, object] = field(default_factory=dict)


def transition(prev: Snapshot, outcome: Outcome, now: Instant) -> tuple[Snapshot, list[Event]]:
    """The next snapshot of `prev`'s query after `outcome`, and what to log about it."""
    events: list[Event] = []
    if outcome.skipped is not None:
        if prev.skipped != outcome.skipped:
            events.append(Event("info", "query_skipped", {"requirement": str(outcome.skipped)}))
        return Snapshot(
            prev.query, skipped=outcome.skipped, runs=prev.runs, errors=prev.errors
        ), events
    runs = prev.runs + 1
    if outcome.error is None:
        if prev.failing is not None:
            events.append(Event("info", "query_recovered", {"failed_runs": prev.failed_runs}))
        return (
            Snapshot(
                prev.query,
                fragment=outcome.fragment,
                families=outcome.families,
                up=True,
                duration=outcome.duration,
                last_success=now,
                last_error=prev.last_error,
                last_error_at=prev.last_error_at,
                runs=runs,
                errors=prev.errors,
            ),
            events,
        )
    error = outcome.error
    errors = dict(prev.errors)
    errors[error.reason] = errors.get(error.reason, 0) + 1
    if prev.failing != error.reason:
        events.append(
            Event("warning", "query_failed", {"reason": error.reason.value, "error": error.message})
        )
    fresh = (
        prev.last_success is not None
        and now.monotonic - prev.last_success.monotonic <= prev.query.stale_after
    )
    if not fresh and prev.series:
        events.append(
            Event("info", "query_values_withdrawn", {"stale_after": prev.query.stale_after})
        )
    return (
        replace(
            prev,
            fragment=prev.fragment if fresh else EMPTY,
            families=prev.families if fresh else (),
            last_error=f"{error.reason}: {error.message}",
            last_error_at=now,
            up=False,
            skipped=None,
            duration=outcome.duration,
            runs=runs,
            errors=MappingProxyType(errors),
            failing=error.reason,
            failed_runs=prev.failed_runs + 1,
        ),
        events,
    )
