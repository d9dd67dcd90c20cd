"""Running queries: one run (shared by `run`, `once`, `check`) and the per-query loops."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from exporter.config import Config, Query
from exporter.db import Database, ErrorReason, QueryError
from exporter.exposition import Fragment, to_client_families
from exporter.logs import Logger
from exporter.mapping import Family, map_rows
from exporter.schema import Param
from exporter.settings import Settings
from exporter.snapshot import Snapshot, Store

FIRST_RUN_JITTER_SECONDS = 0.25
INTERVAL_JITTER = 0.05


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one run of one query produced: values, a classified error, or a skip."""

    query: Query
    duration: float
    families: tuple[Family, ...] = ()
    fragment: Fragment | None = None
    rows: int = 0
    error: QueryError | None = None
    skipped: str | None = None

    @property
    def series(self) -> int:
        return sum(len(f.samples) for f in self.families)


def query_args(query: Query, settings: Settings) -> list[object]:
    """The positional parameters a query declared, from settings."""
    values: dict[Param, object] = {
        Param.LOCALES: list(settings.locales),
        Param.MEDIA_STORAGE_QUOTA_BYTES: settings.media_storage_quota_bytes,
    }
    return [values[p] for p in query.params]


def _map_and_encode(
    query: Query, columns: Sequence[str], rows: Sequence[Sequence[object]], max_series: int
) -> tuple[tuple[Family, ...], Fragment]:
    families = map_rows(query, columns, rows, max_series=max_series)
    return families, Fragment.encode(to_client_families(families, query.interval))


async def run_query(db: Database, query: Query, settings: Settings) -> Outcome:
    """Run a query once, read-only, and map its rows; never raises for database trouble."""
    started = time.perf_counter()
    try:
        if query.requires or query.min_server_version:
            info = await db.server_info(query.timeout)
            missing = [e for e in query.requires if e not in info.extensions]
            if missing:
                return Outcome(query, 0.0, skipped=f"extension:{missing[0]}")
            if query.min_server_version and info.major_version < query.min_server_version:
                return Outcome(query, 0.0, skipped=f"server_version>={query.min_server_version}")
        # Each row yields at least one series: fetching stops one row past the cap.
        limit = query.series_cap(settings.max_series_per_query)
        result = await db.fetch(
            query.sql, query_args(query, settings), query.timeout, max_rows=limit
        )
        # Encoding a large result takes time: a worker thread keeps /metrics answering meanwhile.
        families, fragment = await asyncio.to_thread(
            _map_and_encode, query, result.columns, result.rows, settings.max_series_per_query
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


class Scheduler:
    """Runs every enabled query on its own interval, never overlapping itself."""

    def __init__(
        self,
        db: Database,
        store: Store,
        settings: Settings,
        log: Logger,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._store = store
        self._settings = settings
        self._log = log
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._tasks: dict[str, tuple[Query, asyncio.Task[None]]] = {}
        self._group: asyncio.TaskGroup | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then cancel every loop and return."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            ping = group.create_task(self._ping_loop(), name="ping")
            self.apply(self._store.config)
            await stop.wait()
            ping.cancel()
            for _, task in self._tasks.values():
                task.cancel()
        self._group = None
        self._tasks.clear()

    def apply(self, config: Config) -> None:
        """Start, stop or restart loops so that exactly `config`'s enabled queries run."""
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
        state = _LoopState()
        await asyncio.sleep(self._rng.uniform(0, min(FIRST_RUN_JITTER_SECONDS, query.interval)))
        while True:
            started = time.monotonic()
            outcome = await run_query(self._db, query, self._settings)
            self._record(outcome, state, log)
            jitter = self._rng.uniform(1 - INTERVAL_JITTER, 1 + INTERVAL_JITTER)
            await asyncio.sleep(max(0.0, query.interval * jitter - (time.monotonic() - started)))

    def _record(self, outcome: Outcome, state: _LoopState, log: Logger) -> None:
        query = outcome.query
        current = self._store.snapshot(query.name)
        if outcome.skipped is not None:
            if state.skipped != outcome.skipped:
                log.info("query_skipped", requirement=outcome.skipped)
            state.skipped = outcome.skipped
            self._store.publish(Snapshot(query, skipped=outcome.skipped))
            return
        state.skipped = None
        self._store.count_run(query.name)
        if outcome.error is None:
            assert outcome.fragment is not None
            if state.failing is not None:
                log.info("query_recovered", failed_runs=state.failed_runs)
            state.failing, state.failed_runs = None, 0
            state.last_success = time.monotonic()
            self._store.set_database_up(True)
            self._store.publish(
                Snapshot(
                    query,
                    fragment=outcome.fragment,
                    series=outcome.series,
                    up=True,
                    duration=outcome.duration,
                    last_success=time.time(),
                )
            )
            return
        error = outcome.error
        self._store.count_error(query.name, error.reason)
        state.failed_runs += 1
        if state.failing != error.reason:
            log.warning("query_failed", reason=error.reason.value, error=error.message)
        state.failing = error.reason
        if error.reason is ErrorReason.CONNECTION:
            self._store.set_database_up(False)
        fresh = (
            state.last_success is not None
            and time.monotonic() - state.last_success <= query.stale_after
        )
        kept = current if fresh else current.withdrawn()
        if not fresh and current.series:
            log.info("query_values_withdrawn", stale_after=query.stale_after)
        self._store.publish(
            Snapshot(
                query,
                fragment=kept.fragment,
                series=kept.series,
                up=False,
                duration=outcome.duration,
                last_success=current.last_success,
            )
        )

    async def _ping_loop(self) -> None:
        log = self._log
        was_up: bool | None = None
        timeout = min(self._settings.connect_timeout, self._settings.ping_interval)
        while True:
            try:
                await self._db.fetch("SELECT 1", (), timeout)
            except QueryError as exc:
                if exc.reason is ErrorReason.CONNECTION or exc.reason is ErrorReason.TIMEOUT:
                    if was_up is not False:
                        log.warning(
                            "database_unreachable", reason=exc.reason.value, error=exc.message
                        )
                        self._db.forget_server_info()
                    was_up = False
                    self._store.set_database_up(False)
            else:
                if was_up is False:
                    log.info("database_reachable")
                    # Connections from before the outage point at a dead server process.
                    await self._db.pool.expire_connections()
                was_up = True
                self._store.set_database_up(True)
            await asyncio.sleep(self._settings.ping_interval)


@dataclass(slots=True)
class _LoopState:
    failing: ErrorReason | None = None
    failed_runs: int = 0
    skipped: str | None = None
    last_success: float | None = None
