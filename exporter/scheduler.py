"""Running queries: one run (shared by `run`, `once`, `check`), the per-query loops, the ping.

The scheduler owns timing only. What a run means for the served state is `transition` (pure,
in snapshot.py); whether the database is up is written by the ping alone.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from exporter.config import Config, Query
from exporter.db import Database
from exporter.errors import ErrorReason, QueryError
from exporter.exposition import Fragment, to_client_families
from exporter.logs import Logger
from exporter.mapping import Family, map_rows
from exporter.snapshot import Clock, Instant, Outcome, Requirement, SystemClock, transition
from exporter.store import TargetStore

FIRST_RUN_JITTER_SECONDS = 0.25
INTERVAL_JITTER = 0.05

Runner = Callable[[Query], Awaitable[Outcome]]


def _map_and_encode(
    query: Query, columns: Sequence[str], rows: Sequence[Sequence[object]], max_series: int
) -> tuple[tuple[Family, ...], Fragment]:
    families = map_rows(query, columns, rows, max_series=max_series)
    return families, Fragment.encode(to_client_families(families, query.interval))


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
                return Outcome(query, 0.0, skipped=Requirement("extension", missing[0]))
            if query.min_server_version and info.major_version < query.min_server_version:
                return Outcome(
                    query, 0.0, skipped=Requirement("server_version", str(query.min_server_version))
                )
        # Each row yields at least one series: fetching stops one row past the cap.
        cap = query.series_cap(max_series)
        args = [params[p] for p in query.params]
        result = await db.fetch(query.sql, args, query.timeout, max_rows=cap)
        # Encoding a large result takes time: a worker thread keeps /metrics answering meanwhile.
        families, fragment = await asyncio.to_thread(
            _map_and_encode, query, result.columns, result.rows, max_series
        )
    except QueryError as exc:
        return Outcome(query, time.perf_counter() - started, error=exc)
    return Outcome(
        query,
        time.perf_counter() - started,
        families=families,
        fragment=fragment,
        rows=len(result.rows),
    )


async def ping(db: Database, timeout: float) -> QueryError | None:
    """`SELECT 1`: None if the database answered, else why not."""
    try:
        await db.fetch("SELECT 1", (), timeout)
    except QueryError as exc:
        return exc
    return None


def reachable(error: QueryError | None) -> bool:
    """Whether a ping's result means the database is up (a permission error still answered)."""
    return error is None or error.reason not in (ErrorReason.CONNECTION, ErrorReason.TIMEOUT)


def record(store: TargetStore, outcome: Outcome, now: Instant, log: Logger) -> bool:
    """Publish what `outcome` makes of its query's snapshot (transition) and log its events;
    False if the query left or changed in the store meanwhile (a reload), and nothing changed."""
    previous = store.snapshot(outcome.query.name)
    if previous is None or previous.query != outcome.query:
        return False
    snapshot, events = transition(previous, outcome, now)
    for event in events:
        getattr(log, event.level)(event.name, **event.fields)
    store.publish(snapshot)
    return True


class Scheduler:
    """Runs every enabled query on its own interval, never overlapping itself.

    `run` is how one query runs (run_query on this target's database, in production);
    `clock`, `rng` and `sleep` are injectable so the loops are tested without waiting.
    `on_connection_error` is told when a run could not reach the database (the Pinger then
    checks at once).
    """

    def __init__(
        self,
        store: TargetStore,
        log: Logger,
        *,
        run: Runner,
        on_connection_error: Callable[[], None] = lambda: None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._log = log
        self._run = run
        self._on_connection_error = on_connection_error
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
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
        await self._sleep(self._rng.uniform(0, min(FIRST_RUN_JITTER_SECONDS, query.interval)))
        while True:
            started = self._clock.now().monotonic
            outcome = await self._run(query)
            if not record(self._store, outcome, self._clock.now(), log):
                return  # reloaded away meanwhile; apply() has started its successor
            if outcome.error is not None and outcome.error.reason is ErrorReason.CONNECTION:
                self._on_connection_error()
            jitter = self._rng.uniform(1 - INTERVAL_JITTER, 1 + INTERVAL_JITTER)
            elapsed = self._clock.now().monotonic - started
            await self._sleep(max(0.0, query.interval * jitter - elapsed))


class Pinger:
    """`SELECT 1` every `interval`, or at once when a query could not connect: the only writer
    of `database_up`."""

    def __init__(
        self, db: Database, store: TargetStore, log: Logger, *, interval: float, timeout: float
    ) -> None:
        self._db = db
        self._store = store
        self._log = log
        self._interval = interval
        self._timeout = timeout
        self._now = asyncio.Event()

    def ping_now(self) -> None:
        self._now.set()

    async def run(self, stop: asyncio.Event) -> None:
        was_up: bool | None = None
        while not stop.is_set():
            self._now.clear()
            error = await ping(self._db, self._timeout)
            up = reachable(error)
            if not up and was_up is not False and error is not None:
                self._log.warning(
                    "database_unreachable", reason=error.reason.value, error=error.message
                )
                self._db.forget_server_info()
            elif up and was_up is False:
                self._log.info("database_reachable")
                # Connections from before the outage point at a dead server process.
                await self._db.pool.expire_connections()
            was_up = up
            self._store.set_database_up(up)
            wakers = {asyncio.ensure_future(self._now.wait()), asyncio.ensure_future(stop.wait())}
            try:
                await asyncio.wait(wakers, timeout=self._interval, return_when="FIRST_COMPLETED")
            finally:
                for waker in wakers:
                    waker.cancel()
