"""What a query last told us, and the one pure rule that turns the next run into the next state.

    transition(previous snapshot, outcome of a run, now) -> (next snapshot, events to log)

The scheduler and `once` both use it; it reads no clock and touches no store, so every rule
(keep the last values while they are fresh, withdraw them once stale, count runs and errors,
log a failure once and its recovery once) is unit-tested with a fake clock and no sleeping.

A query's status is one of four, each carrying only what it means (`match` on it; mypy checks
that every reader handles all four):

    NeverRun                  nothing ran yet (after start, or after its SQL changed)
    Ok(values, at, duration)  the last run succeeded at `at` and produced `values`
    Failing(reason, runs, duration, last_success, values)
                              the last `runs` runs failed, the latest for `reason`; `values`
                              are the last success's while fresh, else none
    Skipped(requirement)      not run: the server lacks what the query requires

Only a query that ran has values to serve, a duration and (if it ever succeeded) a last
success: they live in its status, not beside it, so no snapshot can say "never ran" and
"succeeded at 10:02" at once.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Protocol

from exporter.config import Query
from exporter.contract import Requirement as Requirement  # re-exported: Skipped names it
from exporter.errors import ErrorReason, QueryError
from exporter.exposition import EMPTY, Fragment
from exporter.mapping import Family


@dataclass(frozen=True, slots=True)
class Values:
    """What a successful run produced: its families and their encoded fragment, together."""

    families: tuple[Family, ...] = ()
    fragment: Fragment = EMPTY
    rows: int = 0  # the rows they were mapped from

    @property
    def series(self) -> int:
        return sum(f.series for f in self.families)


NO_VALUES = Values()


@dataclass(frozen=True, slots=True)
class NeverRun:
    """Nothing ran yet."""


@dataclass(frozen=True, slots=True)
class Ok:
    """The last run succeeded at `at`, took `duration` seconds and produced `values`."""

    values: Values
    at: Instant
    duration: float

    @property
    def last_success(self) -> Instant:
        return self.at


@dataclass(frozen=True, slots=True)
class Failing:
    """The last `runs` runs failed (in a row); the latest for `reason`, after `duration`
    seconds. `last_success` is the success before them, if any; `values` are its values,
    served while they are fresh (the query's `stale_after`), then none."""

    reason: ErrorReason
    runs: int
    duration: float
    last_success: Instant | None = None
    values: Values = NO_VALUES


@dataclass(frozen=True, slots=True)
class Skipped:
    """Not run: the server lacks what the query requires."""

    requirement: Requirement


Status = NeverRun | Ok | Failing | Skipped
NEVER_RUN = NeverRun()


def is_up(status: Status) -> bool | None:
    """What query_up says: True or False once the query ran, None if it never ran or is skipped."""
    match status:
        case Ok():
            return True
        case Failing():
            return False
        case NeverRun() | Skipped():
            return None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one run of one query produced: values, a classified error, or a skip."""

    query: Query
    duration: float
    result: Values | QueryError | Skipped

    @property
    def error(self) -> QueryError | None:
        return self.result if isinstance(self.result, QueryError) else None

    @property
    def values(self) -> Values:
        """The run's values; none unless it succeeded."""
        return self.result if isinstance(self.result, Values) else NO_VALUES


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
class LastError:
    """The latest failure of a query, kept after it recovers: what went wrong, and when."""

    message: str
    at: Instant


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything known about one query; replaced whole after every run, never mutated."""

    query: Query
    status: Status = NEVER_RUN
    last_error: LastError | None = None
    runs: int = 0
    errors: Mapping[ErrorReason, int] = field(default_factory=lambda: _NO_ERRORS)

    @property
    def values(self) -> Values:
        """What is served for the query: the last success's while fresh, else none."""
        return self.status.values if isinstance(self.status, Ok | Failing) else NO_VALUES

    @property
    def duration(self) -> float | None:
        """How long the last run took; None if none ran."""
        return self.status.duration if isinstance(self.status, Ok | Failing) else None

    @property
    def last_success(self) -> Instant | None:
        """When the query last succeeded (since it last started over), if ever."""
        return self.status.last_success if isinstance(self.status, Ok | Failing) else None

    def carried_to(self, query: Query) -> Snapshot:
        """This query's counters under a changed definition (after a reload); values start over:
        they came from the old SQL."""
        return Snapshot(query, runs=self.runs, errors=self.errors, last_error=self.last_error)


class Level(enum.StrEnum):
    """How loud an event is: the name of the logger method that writes it."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Event:
    """A line to log: the level, the event name and its fields."""

    level: Level
    name: str
    fields: Mapping[str, object] = field(default_factory=dict)


def transition(prev: Snapshot, outcome: Outcome, now: Instant) -> tuple[Snapshot, list[Event]]:
    """The next snapshot of `prev`'s query after `outcome`, and what to log about it."""
    events: list[Event] = []
    result = outcome.result
    if isinstance(result, Skipped):
        if prev.status != result:
            need = result.requirement
            # A missing extension is the server's choice; a missing object of the schema
            # contract is a deployment mistake, said with what to run.
            fields: dict[str, object] = {"requirement": str(need)}
            if need.kind.is_deployment_mistake:
                fields["fix"] = need.advice.removeprefix(str(need)).strip(" ()")
            level = Level.WARNING if need.kind.is_deployment_mistake else Level.INFO
            events.append(Event(level, "query_skipped", fields))
        return Snapshot(prev.query, status=result, runs=prev.runs, errors=prev.errors), events
    runs = prev.runs + 1
    failing = prev.status if isinstance(prev.status, Failing) else None
    if isinstance(result, Values):
        if failing is not None:
            events.append(Event(Level.INFO, "query_recovered", {"failed_runs": failing.runs}))
        return (
            Snapshot(
                prev.query,
                status=Ok(result, now, outcome.duration),
                last_error=prev.last_error,
                runs=runs,
                errors=prev.errors,
            ),
            events,
        )
    error = result
    errors = dict(prev.errors)
    errors[error.reason] = errors.get(error.reason, 0) + 1
    if failing is None or failing.reason != error.reason:
        # A database that cannot be reached is one line, the ping's (database_unreachable),
        # not one per query: each query's own connection failure is a detail for debugging.
        level = Level.DEBUG if error.reason is ErrorReason.CONNECTION else Level.WARNING
        events.append(
            Event(level, "query_failed", {"reason": error.reason.value, "error": error.message})
        )
    last_success = prev.last_success
    fresh = (
        last_success is not None
        and now.monotonic - last_success.monotonic <= prev.query.stale_after
    )
    if not fresh and prev.values.series:
        events.append(
            Event(Level.INFO, "query_values_withdrawn", {"stale_after": prev.query.stale_after})
        )
    return (
        replace(
            prev,
            status=Failing(
                error.reason,
                1 if failing is None else failing.runs + 1,
                outcome.duration,
                last_success,
                prev.values if fresh else NO_VALUES,
            ),
            last_error=LastError(f"{error.reason}: {error.message}", now),
            runs=runs,
            errors=MappingProxyType(errors),
        ),
        events,
    )
