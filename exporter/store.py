"""Stores: the latest state, and the page pre-rendered from it that HTTP hands out.

- `TargetStore`: one watched database: a snapshot per query and whether the database is up.
- `ExporterStore`: the process: build info, the queries file's reload state, process metrics.
- `Joined`: several stores served as one page (/metrics with a single database).

A store re-renders once per event-loop turn however many things changed in it (when the
database goes down every query fails in the same instant), and its page is final bytes: a
scrape only picks them. A body (a format, plain or gzipped) once asked for is made by every
later render (`Page.assemble(..., replacing=)`), so that no scrape joins or compresses, and a
format no client asks for is never made.

`TargetStore.apply(outcome, now)` is the one way a run changes what is served: it hands the
query's snapshot and the outcome to the pure `transition` and installs the result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from exporter import selfmetrics
from exporter.config import Config
from exporter.exposition import Fragment, Page
from exporter.snapshot import Clock, Event, Instant, Outcome, Snapshot, SystemClock, transition


class Coalesced:
    """Calls `action` once per event-loop turn however often it is asked to in that turn
    (when the database goes down every query fails in the same instant), or at once outside
    an event loop."""

    def __init__(self, action: Callable[[], None]) -> None:
        self._action = action
        self._pending = False

    def __call__(self) -> None:
        if self._pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._action()
            return
        self._pending = True
        loop.call_soon(self._run)

    def _run(self) -> None:
        self._pending = False
        self._action()


class Store:
    """A page assembled from fragments, re-rendered when they change; listeners re-render
    with it. `render()` asks for a render this event-loop turn; `render_now()` does it."""

    def __init__(self) -> None:
        self.page = Page.assemble(())
        self._listeners: list[Callable[[], None]] = []
        self.render = Coalesced(self.render_now)

    def fragments(self) -> tuple[Fragment, ...]:
        """The fragments of the last render (its page is made of them)."""
        return self.page.fragments

    def build(self) -> Iterable[Fragment]:
        raise NotImplementedError

    def on_render(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def render_now(self) -> None:
        self.page = Page.assemble(self.build(), replacing=self.page)
        for listener in self._listeners:
            listener()


class TargetStore(Store):
    """One database: the latest snapshot of each enabled query, and whether it is reachable."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self._snapshots: dict[str, Snapshot] = {q.name: Snapshot(q) for q in config.enabled}
        self.database_up = False
        self._own = _OwnMetrics()
        self.render_now()

    @property
    def snapshots(self) -> Sequence[Snapshot]:
        return tuple(self._snapshots.values())

    def snapshot(self, name: str) -> Snapshot | None:
        return self._snapshots.get(name)

    def replace_config(self, config: Config) -> None:
        """Adopt a reloaded config: unchanged queries keep their state, changed ones keep only
        their counters, new ones start empty."""
        old = self._snapshots
        self._snapshots = {}
        for query in config.enabled:
            before = old.get(query.name)
            if before is None:
                self._snapshots[query.name] = Snapshot(query)
            else:
                self._snapshots[query.name] = (
                    before if before.query == query else before.carried_to(query)
                )
        self.render()

    def apply(self, outcome: Outcome, now: Instant) -> list[Event] | None:
        """Install what `outcome` makes of its query's snapshot (`transition`) and return the
        events to log; None, and nothing changed, if the query changed or left meanwhile (a
        reload: the run was of SQL no longer served)."""
        current = self._snapshots.get(outcome.query.name)
        if current is None or current.query != outcome.query:
            return None
        self._snapshots[outcome.query.name], events = transition(current, outcome, now)
        self.render()
        return events

    def set_database_up(self, up: bool) -> None:
        if up != self.database_up:
            self.database_up = up
            self.render()

    def build(self) -> Iterable[Fragment]:
        for snap in self._snapshots.values():
            yield snap.values.fragment
        yield self._own.fragment(tuple(self._snapshots.values()), database_up=self.database_up)


class _OwnMetrics:
    """A target's own families (selfmetrics.target_families), encoded query by query.

    Each run changes one query's snapshot, yet encoding the families of all of them again
    was most of what a run cost (77 % of a 300-target process's CPU, in prometheus-client's
    name escaping). So each query's samples are encoded when its snapshot changes, and a
    render only splices them under each family's HELP and TYPE lines, in the same order the
    whole encoding has: the bytes are the same (tests/test_transition.py holds that).
    """

    def __init__(self) -> None:
        self._per_query: dict[str, tuple[Snapshot, list[bytes]]] = {}
        # Per database_up, per format: database_up's family whole, then each per-query
        # family's comment lines (HELP, TYPE), which differ between the formats for counters.
        self._heads: dict[bool, tuple[list[bytes], list[bytes]]] = {}

    def fragment(self, snapshots: Sequence[Snapshot], *, database_up: bool) -> Fragment:
        heads = self._heads.get(database_up)
        if heads is None:
            empty = Fragment.encode(selfmetrics.target_families((), database_up=database_up))
            heads = self._heads[database_up] = (_heads(empty.text), _heads(empty.openmetrics))
        rows = [self._samples(snap) for snap in snapshots]
        self._per_query = {snap.query.name: row for snap, row in zip(snapshots, rows, strict=True)}
        # A sample line reads the same in both formats: one list of lines for both.
        samples = [lines for _, lines in rows]
        text, om = heads
        return Fragment(text=_splice(text, samples), openmetrics=_splice(om, samples))

    def _samples(self, snap: Snapshot) -> tuple[Snapshot, list[bytes]]:
        cached = self._per_query.get(snap.query.name)
        if cached is not None and cached[0] is snap:
            return cached
        return snap, selfmetrics.query_samples(snap)  # written directly: it says why


def _heads(encoded: bytes) -> list[bytes]:
    """The first family whole, then each other family's comment lines (HELP, TYPE)."""
    families = [b"# HELP " + part for part in encoded.split(b"# HELP ")[1:]]
    return [families[0], *(_comments(f) for f in families[1:])]


def _comments(family: bytes) -> bytes:
    """A family's comment lines (HELP, TYPE), without its samples."""
    end = 0
    while family.startswith(b"#", end):
        end = family.index(b"\n", end) + 1
    return family[:end]


def _splice(heads: list[bytes], per_query: list[list[bytes]]) -> bytes:
    """database_up as it is, then each family's comment lines and every query's samples."""
    out = [heads[0]]
    for i, comments in enumerate(heads[1:]):
        out.append(comments)
        out.extend([samples[i] for samples in per_query])
    return b"".join(out)


class ExporterStore(Store):
    """The process's own page: build info, reload state, process and runtime metrics."""

    def __init__(self, clock: Clock | None = None) -> None:
        super().__init__()
        self._clock = clock or SystemClock()
        self.reload_successful = True
        self.reload_timestamp = self._clock.now().wall
        self._process = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._process)
        PlatformCollector(registry=self._process)
        GCCollector(registry=self._process)
        self.render_now()

    def reloaded(self, ok: bool) -> None:
        self.reload_successful = ok
        if ok:
            self.reload_timestamp = self._clock.now().wall
        self.render()

    def build(self) -> Iterable[Fragment]:
        own = selfmetrics.exporter_families(
            reload_successful=self.reload_successful, reload_timestamp=self.reload_timestamp
        )
        yield Fragment.encode([*own, *self._process.collect()])


class Joined(Store):
    """Several stores as one page, re-rendered whenever one of them renders."""

    def __init__(self, parts: Sequence[Store]) -> None:
        super().__init__()
        self._parts = tuple(parts)
        for part in self._parts:
            part.on_render(self.render)
        self.render_now()

    def build(self) -> Iterable[Fragment]:
        for part in self._parts:
            yield from part.fragments()
