"""When queries run: the per-query loops, the ping, and the per-process budget of log lines.

The scheduler owns timing only. How one query runs is `runner.run_query`; what a run means for
the served state is `TargetStore.apply` (through the pure `transition`); whether the database
is up is written by the Pinger alone.

When each query runs: every target x query has a fixed phase within its interval (`phase`),
so the runs of many targets are spread evenly over each interval instead of arriving together.
The first run comes within `FIRST_RUN_WINDOW_SECONDS` x targets (at most one interval) after
start or reload, spread the same way; after it, each run falls on its slot of the interval.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

from exporter.config import Config, Query
from exporter.db import Database
from exporter.errors import ErrorReason
from exporter.runner import ping, reachable
from exporter.snapshot import Clock, Event, Outcome, Skipped, SystemClock
from exporter.store import TargetStore

# One target's first runs come within this; n targets' within n times it (at most an interval).
FIRST_RUN_WINDOW_SECONDS = 0.25

Runner = Callable[[Query], Awaitable[Outcome]]


class EventLog(Protocol):
    """Where events go: a `Logger`, or a `Budgeted` one."""

    def bind(self, **fields: object) -> EventLog: ...
    def debug(self, event: str, **fields: object) -> None: ...
    def info(self, event: str, **fields: object) -> None: ...
    def warning(self, event: str, **fields: object) -> None: ...
    def error(self, event: str, **fields: object) -> None: ...


def log_events(log: EventLog, events: list[Event]) -> None:
    for event in events:
        getattr(log, event.level)(event.name, **event.fields)


# --- when runs happen -----------------------------------------------------------------------


class Slot(NamedTuple):
    """A target's place among the targets of this process: `rank` of `of` (by name)."""

    rank: int = 0
    of: int = 1


ALONE = Slot()  # the one target of a process that watches one database


def phase(slot: Slot, name: str) -> float:
    """Where, as a fraction of its interval, this target's runs of query `name` fall.

    Derived, not drawn at random: a restart puts every run back on its slot (no new burst, and
    nothing bunched by an unlucky draw), and two replicas with the same targets agree. The
    target's share is its rank over the number of targets, so n targets are exactly
    interval/n apart (a hash of the target's name would clump: with 500 targets the busiest
    second of an interval would carry about twice the mean). The query's share is a hash of
    its name, so one target's queries do not all start together either.
    """
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return (slot.rank / slot.of + int.from_bytes(digest, "big") / 2**64) % 1.0


def first_delay(slot: Slot, name: str, interval: float) -> float:
    """Seconds from start (or reload) to a query's first run: its phase within a window of
    FIRST_RUN_WINDOW_SECONDS per target, at most one interval. One target's first values
    come within a quarter second; 500 targets' first runs are as spread as later ones."""
    window = min(interval, FIRST_RUN_WINDOW_SECONDS * slot.of)
    return phase(slot, name) * window


def next_delay(interval: float, offset: float, started: float, now: float) -> float:
    """Seconds from `now` to the query's next slot: the wall-clock times that are `offset`
    seconds into an interval, the first at least half an interval after the last run started
    (and not before `now`: a run that overran its interval waits for the next slot)."""
    base = max(started + interval / 2, now)
    return (offset - base) % interval + base - now


class Scheduler:
    """Runs every enabled query on its own interval, each target x query on its own slot
    of the interval (see `phase`), never overlapping itself.

    `run` is how one query runs (run_query on this target's database, in production);
    `slot` is this target's place among the process's targets; `clock` and `sleep` are
    injectable so the loops are tested in virtual time. `on_connection_error` is told when a
    run could not reach the database (the Pinger then checks at once), `on_contact` when a
    run got an answer from it (the Pinger need not ask meanwhile).
    """

    def __init__(
        self,
        store: TargetStore,
        log: EventLog,
        *,
        run: Runner,
        slot: Slot = ALONE,
        on_connection_error: Callable[[], None] = lambda: None,
        on_contact: Callable[[], None] = lambda: None,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._log = log
        self._run = run
        self._slot = slot
        self._on_connection_error = on_connection_error
        self._on_contact = on_contact
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._tasks: dict[str, tuple[Query, asyncio.Task[None]]] = {}
        self._group: asyncio.TaskGroup | None = None

    @property
    def loops(self) -> list[tuple[Query, asyncio.Task[None]]]:
        """Every loop task still alive, with the query it runs."""
        return [(q, task) for q, task in self._tasks.values() if not task.done()]

    async def run(self, config: Config, stop: asyncio.Event) -> None:
        """Run `config`'s queries until `stop` is set; then cancel every loop and return."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            self.apply(config)
            await stop.wait()
            for _, task in self._tasks.values():
                task.cancel()
        self._group = None
        self._tasks.clear()

    def apply(self, config: Config) -> None:
        """Start, stop or restart loops so that exactly `config`'s enabled queries run, each
        in one loop: applying the same config again starts nothing."""
        if self._group is None:
            return
        wanted = {q.name: q for q in config.enabled}
        for name, (running, task) in list(self._tasks.items()):
            if wanted.get(name) != running or task.done():
                task.cancel()
                del self._tasks[name]
        for name, query in wanted.items():
            if name not in self._tasks:
                task = self._group.create_task(self._loop(query), name=name)
                self._tasks[name] = (query, task)

    async def _loop(self, query: Query) -> None:
        log = self._log.bind(query=query.name)
        offset = phase(self._slot, query.name) * query.interval
        await self._sleep(first_delay(self._slot, query.name, query.interval))
        while True:
            started = self._clock.now().wall
            outcome = await self._run(query)
            events = self._store.apply(outcome, self._clock.now())
            if events is None:
                return  # reloaded away meanwhile; apply() has started its successor
            log_events(log, events)
            error = outcome.error
            if error is not None and error.reason is ErrorReason.CONNECTION:
                self._on_connection_error()
            elif not isinstance(outcome.result, Skipped) and reachable(error):
                self._on_contact()
            await self._sleep(next_delay(query.interval, offset, started, self._clock.now().wall))


class Pinger:
    """`SELECT 1` every `interval`, or at once when a query could not connect: the only writer
    of `database_up`. A query that got an answer within the interval is answer enough: no
    ping is sent then (with hundreds of targets, pings were a third of all statements)."""

    def __init__(
        self,
        db: Database,
        store: TargetStore,
        log: EventLog,
        *,
        interval: float,
        timeout: float,
        slot: Slot = ALONE,
    ) -> None:
        self._db = db
        self._store = store
        self._log = log
        self._interval = interval
        self._timeout = timeout
        self._slot = slot
        self._now = asyncio.Event()
        self._contact: float | None = None  # monotonic time a query last got an answer

    def ping_now(self) -> None:
        self._contact = None
        self._now.set()

    def contact(self) -> None:
        self._contact = time.monotonic()
        if not self._store.database_up:
            self._now.set()  # a query got through while we say down (at start): ask now

    async def run(self, stop: asyncio.Event) -> None:
        was_up: bool | None = None
        # Spread like the queries' first runs: 500 targets do not all connect in one instant.
        await self._wait(stop, first_delay(self._slot, "ping", self._interval))
        while not stop.is_set():
            asked = self._now.is_set()
            self._now.clear()
            recent = self._contact is not None and (
                time.monotonic() - self._contact < self._interval
            )
            if was_up and not asked and (recent or self._db.busy):
                # A run got an answer within the interval, or one is in flight on every
                # connection (it will say itself whether the database answers): a ping would
                # only queue behind it.
                error, up = None, True
            else:
                error = await ping(self._db, self._timeout)
                up = reachable(error)
            if not up and was_up is not False and error is not None:
                self._log.warning(
                    "database_unreachable", reason=error.reason.value, error=error.message
                )
            elif up and was_up is False:
                self._log.info("database_reachable")
            if error is not None and error.reason is ErrorReason.CONNECTION:
                # Not for a ping that only timed out (a busy server or pooler): reconnecting
                # everything then would add a storm of new connections to what was too much.
                self._db.connection_lost()
            elif up:
                await self._db.reconnected()
            was_up = up
            self._store.set_database_up(up)
            await self._wait(stop, self._interval)

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        """Until `seconds` pass, a query asks for a ping, or `stop`."""
        wakers = {asyncio.ensure_future(self._now.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(wakers, timeout=seconds, return_when="FIRST_COMPLETED")
        finally:
            for waker in wakers:
                waker.cancel()


# --- how much is logged ---------------------------------------------------------------------


class LogBudget:
    """The process's budget of log lines about its targets: a token bucket, `burst` lines at
    once and `per_second` after that. Lines beyond it are counted by event and said in one
    `log_lines_suppressed` line as soon as the budget allows one (`flush`, or the next line):
    500 targets going down at once log `burst` lines and a summary, not thousands."""

    def __init__(
        self,
        log: EventLog,
        *,
        burst: int = 50,
        per_second: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._burst = float(burst)
        self._rate = per_second
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._held: Counter[str] = Counter()

    def _take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def allow(self, event: str) -> bool:
        """Whether a line for `event` may go out now (after any summary that is due)."""
        self.flush()
        if self._take():
            return True
        self._held[event] += 1
        return False

    def flush(self) -> None:
        """Say what was held back, if anything was and the budget has a line for it."""
        if self._held and self._take():
            held, self._held = self._held, Counter()
            self._log.warning("log_lines_suppressed", suppressed=held.total(), **held)


class Budgeted:
    """An `EventLog` whose info, warning and error lines are paid from a shared `LogBudget`
    (debug lines are off in production and free)."""

    def __init__(self, log: EventLog, budget: LogBudget) -> None:
        self._log = log
        self._budget = budget

    def bind(self, **fields: object) -> Budgeted:
        return Budgeted(self._log.bind(**fields), self._budget)

    def debug(self, event: str, **fields: object) -> None:
        self._log.debug(event, **fields)

    def info(self, event: str, **fields: object) -> None:
        if self._budget.allow(event):
            self._log.info(event, **fields)

    def warning(self, event: str, **fields: object) -> None:
        if self._budget.allow(event):
            self._log.warning(event, **fields)

    def error(self, event: str, **fields: object) -> None:
        if self._budget.allow(event):
            self._log.error(event, **fields)
