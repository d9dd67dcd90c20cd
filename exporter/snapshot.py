"""Per-query snapshots and the store that turns the latest ones into the served page."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from exporter import selfmetrics
from exporter.config import Config, Query
from exporter.db import ErrorReason
from exporter.exposition import EMPTY, Fragment, Page


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one query last told us; replaced whole after every run, never mutated."""

    query: Query
    fragment: Fragment = EMPTY
    series: int = 0
    up: bool | None = None
    skipped: str | None = None
    duration: float | None = None
    last_success: float | None = None

    def withdrawn(self) -> Snapshot:
        return replace(self, fragment=EMPTY, series=0)


class Store:
    """Holds the latest snapshot per query and the page assembled from them."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        process_metrics: bool = True,
        database_metrics: bool = True,
    ) -> None:
        """`process_metrics`: include process_*/python_* (once per process, not per target).
        `database_metrics`: include homepage_exporter_database_up (a target's store does)."""
        self._clock = clock
        self._database_metrics = database_metrics
        self._config = config
        self._snapshots: dict[str, Snapshot] = {q.name: Snapshot(q) for q in config.enabled}
        self._errors: dict[str, collections.Counter[ErrorReason]] = collections.defaultdict(
            collections.Counter
        )
        self._runs: collections.Counter[str] = collections.Counter()
        self.database_up = False
        self.reload_successful = True
        self.reload_timestamp = clock()
        self._process = CollectorRegistry(auto_describe=False)
        if process_metrics:
            ProcessCollector(registry=self._process)
            PlatformCollector(registry=self._process)
            GCCollector(registry=self._process)
        self.page = Page.assemble(())
        self._render_pending = False
        self.render_now()

    @property
    def config(self) -> Config:
        return self._config

    def snapshot(self, name: str) -> Snapshot:
        return self._snapshots[name]

    def replace_config(self, config: Config) -> None:
        """Adopt a reloaded config: unchanged queries keep their values, the rest start empty."""
        old = self._snapshots
        self._snapshots = {
            q.name: old[q.name] if q.name in old and old[q.name].query == q else Snapshot(q)
            for q in config.enabled
        }
        self._config = config
        self.reload_successful = True
        self.reload_timestamp = self._clock()
        self.render()

    def publish(self, snapshot: Snapshot) -> None:
        """Install a query's new snapshot (ignored if the query left the config meanwhile)."""
        current = self._snapshots.get(snapshot.query.name)
        if current is None or current.query != snapshot.query:
            return
        self._snapshots[snapshot.query.name] = snapshot
        self.render()

    def count_error(self, name: str, reason: ErrorReason) -> None:
        self._errors[name][reason] += 1

    def count_run(self, name: str) -> None:
        self._runs[name] += 1

    def set_database_up(self, up: bool) -> None:
        if up != self.database_up:
            self.database_up = up
            self.render()

    def render(self) -> None:
        """Re-render soon: once per event-loop turn however many snapshots changed in it
        (when the database goes down, every query fails in the same instant), or right away
        outside an event loop."""
        if self._render_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.render_now()
            return
        self._render_pending = True
        loop.call_soon(self.render_now)

    def render_now(self) -> None:
        """Assemble the page from cached fragments plus freshly built self metrics."""
        self._render_pending = False
        own = selfmetrics.families(
            self._snapshots.values(),
            self._errors,
            self._runs,
            database_up=self.database_up if self._database_metrics else None,
            reload_successful=self.reload_successful,
            reload_timestamp=self.reload_timestamp,
        )
        own_fragment = Fragment.encode([*own, *self._process.collect()])
        self.page = Page.assemble([*(s.fragment for s in self._snapshots.values()), own_fragment])
