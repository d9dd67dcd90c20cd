"""The pure transition and the scheduler's loops, with a fake clock: no database, no sleeping.

What the daemon promises about a query's state (values kept while fresh, withdrawn once stale,
counters, one log line per failure and per recovery, skips, reloads that keep counters) is
decided by `transition`; the scheduler only times runs. Both are tested here in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
from pathlib import Path

import pytest

from exporter.config import Config, Query, load_config
from exporter.errors import ErrorReason, QueryError
from exporter.exposition import Fragment
from exporter.logs import get_logger
from exporter.mapping import Family, Sample
from exporter.scheduler import INTERVAL_JITTER, Scheduler
from exporter.snapshot import Event, Instant, Outcome, Requirement, Snapshot, transition
from exporter.store import TargetStore

QUERIES = """\
version: 1
queries:
  - name: alpha
    help: First.
    sql: SELECT 1 AS v
    interval: 10s
    timeout: 1s
    metrics:
      - {name: test_alpha, help: A., value: v}
  - name: beta
    help: Second.
    sql: SELECT 2 AS v
    interval: 30s
    timeout: 1s
    stale_after: 60s
    metrics:
      - {name: test_beta, help: B., value: v}
"""
VALUES = Fragment(b"test_alpha 1.0\n", b"test_alpha 1.0\n")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "queries.yaml"
    path.write_text(QUERIES)
    return load_config(path)


def at(seconds: float, wall_offset: float = 1_700_000_000.0) -> Instant:
    return Instant(wall_offset + seconds, seconds)


def ok(snapshot: Snapshot, series: int = 1) -> Outcome:
    metric = snapshot.query.metrics[0]
    families = (Family(metric, tuple(Sample((), float(i)) for i in range(series))),)
    return Outcome(snapshot.query, 0.01, families=families, fragment=VALUES, rows=series)


def failed(snapshot: Snapshot, reason: ErrorReason = ErrorReason.CONNECTION) -> Outcome:
    return Outcome(snapshot.query, 0.02, error=QueryError(reason, "server closed the connection"))


def names(events: list[Event]) -> list[str]:
    return [e.name for e in events]


def test_a_success_installs_values_and_counts_the_run(config: Config) -> None:
    start = Snapshot(config.enabled[0])
    after, events = transition(start, ok(start), at(5))
    assert after.fragment == VALUES
    assert after.up is True
    assert after.series == 1
    assert after.runs == 1
    assert after.last_success == at(5)
    assert events == []


def test_values_are_kept_while_fresh_then_withdrawn_once(config: Config) -> None:
    query = config.enabled[0]  # interval 10 s: stale after 30 s
    s, _ = transition(Snapshot(query), ok(Snapshot(query)), at(0))
    s, events = transition(s, failed(s), at(29))
    assert s.fragment == VALUES, "a failure within stale_after keeps the last values"
    assert s.series == 1
    assert s.up is False
    assert names(events) == ["query_failed"]
    s, events = transition(s, failed(s), at(30.5))
    assert s.fragment.text == b"", "past stale_after the values go"
    assert s.series == 0
    assert names(events) == ["query_values_withdrawn"]
    s, events = transition(s, failed(s), at(60))
    assert events == [], "withdrawn once, failing reported once"
    assert s.errors == {ErrorReason.CONNECTION: 3}
    assert s.failed_runs == 3
    assert s.runs == 4


def test_staleness_is_measured_on_the_monotonic_clock(config: Config) -> None:
    query = config.enabled[0]
    s, _ = transition(Snapshot(query), ok(Snapshot(query)), Instant(1_700_000_000.0, 100.0))
    # The wall clock jumps a day ahead (NTP step); only 5 s really passed.
    s, _ = transition(s, failed(s), Instant(1_700_086_400.0, 105.0))
    assert s.fragment == VALUES


def test_a_new_reason_is_logged_and_recovery_is_logged_once(config: Config) -> None:
    query = config.enabled[0]
    s = Snapshot(query)
    s, first = transition(s, failed(s, ErrorReason.TIMEOUT), at(0))
    s, same = transition(s, failed(s, ErrorReason.TIMEOUT), at(10))
    s, other = transition(s, failed(s, ErrorReason.PERMISSION), at(20))
    s, recovered = transition(s, ok(s), at(30))
    s, quiet = transition(s, ok(s), at(40))
    assert names(first) == ["query_failed"]
    assert same == []
    assert names(other) == ["query_failed"]
    assert names(recovered) == ["query_recovered"]
    assert recovered[0].fields == {"failed_runs": 3}
    assert quiet == []
    assert s.errors == {ErrorReason.TIMEOUT: 2, ErrorReason.PERMISSION: 1}
    assert s.failing is None
    assert s.failed_runs == 0


def test_a_skip_is_said_once_and_does_not_count_as_a_run(config: Config) -> None:
    query = config.enabled[0]
    skip = Outcome(query, 0.0, skipped=Requirement("extension", "pg_cron"))
    s, events = transition(Snapshot(query), skip, at(0))
    s, again = transition(s, skip, at(10))
    assert str(s.skipped) == "extension:pg_cron"
    assert s.runs == 0
    assert names(events) == ["query_skipped"]
    assert again == []


def test_a_reload_keeps_unchanged_queries_and_the_counters_of_changed_ones(
    config: Config, tmp_path: Path
) -> None:
    store = TargetStore(config)
    alpha = store.snapshot("alpha")
    assert alpha is not None
    s, _ = transition(alpha, failed(alpha), at(0))
    s, _ = transition(s, ok(s), at(1))
    store.publish(s)
    changed = tmp_path / "changed.yaml"
    changed.write_text(QUERIES.replace("SELECT 2 AS v", "SELECT 3 AS v"))
    beta = store.snapshot("beta")
    assert beta is not None
    b, _ = transition(beta, ok(beta), at(0))
    store.publish(b)
    store.replace_config(load_config(changed))
    kept, restarted = store.snapshot("alpha"), store.snapshot("beta")
    assert kept is not None
    assert restarted is not None
    assert kept.fragment == VALUES
    assert kept.runs == 2
    assert restarted.fragment.text == b"", "values from the old SQL are not served"
    assert restarted.runs == 1, "counters carry over: a counter never goes back"


def test_once_a_client_wants_gzip_every_render_compresses_ahead_of_scrapes(
    config: Config,
) -> None:
    store = TargetStore(config)
    assert store.page.compressed() == set()
    store.want_gzip(openmetrics=False)
    store.render_now()
    assert store.page.compressed() == {False}, "the render compressed, not the next scrape"
    store.set_database_up(True)  # any change re-renders
    assert store.page.compressed() == {False}
    assert b"homepage_exporter_database_up 1.0" in store.page.text


# --- the scheduler's loops, on a fake clock ------------------------------------------------------


class FakeTime:
    """A clock that moves only from one sleeper's wake-up to the next (virtual time)."""

    def __init__(self) -> None:
        self.t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = 0

    def now(self) -> Instant:
        return Instant(1_700_000_000.0 + self.t, self.t)

    async def sleep(self, seconds: float) -> None:
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._order += 1
        heapq.heappush(self._sleepers, (self.t + seconds, self._order, wake))
        await wake

    async def advance(self) -> None:
        """Let every runnable task run, then jump to the earliest wake-up."""
        for _ in range(10):
            await asyncio.sleep(0)
        while self._sleepers:
            when, _, wake = heapq.heappop(self._sleepers)
            if not wake.done():  # a cancelled loop's sleep
                self.t = max(self.t, when)
                wake.set_result(None)
                return


async def _drive(config: Config, reloads: list[Config], until: float) -> dict[str, list[float]]:
    """Run the scheduler on `config` until the fake clock passes `until`, applying each of
    `reloads` (a SIGHUP each) half-way; the times each query ran, by name, and under "_loops"
    how many loops were alive at the end."""
    clock = FakeTime()
    store = TargetStore(config)
    runs: dict[str, list[float]] = {}

    async def run(query: Query) -> Outcome:
        runs.setdefault(query.name, []).append(clock.t)
        return Outcome(query, 0.0, fragment=VALUES)

    scheduler = Scheduler(
        store, get_logger(), run=run, clock=clock, rng=random.Random(7), sleep=clock.sleep
    )
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(config, stop))
    pending = list(reloads)
    while clock.t < until:
        await clock.advance()
        if pending and clock.t > until / 2:
            for new in pending:
                store.replace_config(new)
                scheduler.apply(new)
            pending.clear()
    loops = len(scheduler.loops)
    stop.set()
    # A loop the scheduler lost track of would never stop: give up after a (real) second.
    done, _ = await asyncio.wait({task}, timeout=1.0)
    if not done:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    runs["_loops"] = [float(loops)]
    runs["_stopped"] = [1.0 if done else 0.0]
    return runs


def test_each_query_runs_on_its_interval_within_jitter(config: Config) -> None:
    runs = asyncio.run(_drive(config, [], until=300))
    for name, interval in (("alpha", 10.0), ("beta", 30.0)):
        gaps = [b - a for a, b in zip(runs[name], runs[name][1:], strict=False)]
        assert gaps
        assert all(
            interval * (1 - INTERVAL_JITTER) <= g <= interval * (1 + INTERVAL_JITTER) for g in gaps
        )


def test_repeated_reloads_never_start_a_second_loop_for_a_query(config: Config) -> None:
    """Three SIGHUPs with the same file: still one loop per query, and each query's run rate
    is its interval's, not two or three times it."""
    runs = asyncio.run(_drive(config, [config, config, config], until=600))
    assert runs["_stopped"] == [1.0], "every loop stopped with the daemon"
    assert runs["_loops"] == [2.0]
    assert 600 / 10 * 0.9 <= len(runs["alpha"]) <= 600 / 10 * 1.1
    assert 600 / 30 * 0.9 <= len(runs["beta"]) <= 600 / 30 * 1.1


def test_a_reload_that_changes_a_query_replaces_its_loop(config: Config, tmp_path: Path) -> None:
    changed = tmp_path / "changed.yaml"
    changed.write_text(QUERIES.replace("interval: 30s", "interval: 20s"))
    new = load_config(changed)
    runs = asyncio.run(_drive(config, [new, new], until=600))
    assert runs["_loops"] == [2.0]
    # beta: 30 s for the first half, 20 s for the second: 10 + 15 runs, give or take jitter.
    assert 22 <= len(runs["beta"]) <= 28
