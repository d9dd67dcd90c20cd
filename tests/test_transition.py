"""The pure transition and the scheduler's loops, with a fake clock: no database, no sleeping.

What the daemon promises about a query's state (values kept while fresh, withdrawn once stale,
counters, one log line per failure and per recovery, skips, reloads that keep counters) is
decided by `transition`; the scheduler only times runs. Both are tested here in milliseconds.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gzip
import heapq
from pathlib import Path

import pytest

from exporter.config import Config, Query, load_config
from exporter.contract import Kind
from exporter.errors import ErrorReason, QueryError
from exporter.exposition import Encoding, Format, Fragment
from exporter.logs import get_logger
from exporter.mapping import Family, Sample
from exporter.scheduler import (
    FIRST_RUN_WINDOW_SECONDS,
    Budgeted,
    LogBudget,
    Scheduler,
    Slot,
    log_events,
    next_delay,
    phase,
)
from exporter.selfmetrics import target_families
from exporter.snapshot import (
    NEVER_RUN,
    Event,
    Failing,
    Instant,
    LastError,
    Ok,
    Outcome,
    Requirement,
    Skipped,
    Snapshot,
    Values,
    transition,
)
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
    return Outcome(snapshot.query, 0.01, Values(families, VALUES, rows=series))


def failed(snapshot: Snapshot, reason: ErrorReason = ErrorReason.CONNECTION) -> Outcome:
    return Outcome(snapshot.query, 0.02, QueryError(reason, "server closed the connection"))


def names(events: list[Event]) -> list[str]:
    return [e.name for e in events]


def test_a_success_installs_values_and_counts_the_run(config: Config) -> None:
    start = Snapshot(config.enabled[0])
    after, events = transition(start, ok(start), at(5))
    assert after.values.fragment == VALUES
    assert after.status == Ok(ok(start).values, at(5), 0.01)
    assert after.values.series == 1
    assert after.runs == 1
    assert after.last_success == at(5)
    assert events == []


def test_values_are_kept_while_fresh_then_withdrawn_once(config: Config) -> None:
    query = config.enabled[0]  # interval 10 s: stale after 30 s
    s, _ = transition(Snapshot(query), ok(Snapshot(query)), at(0))
    s, events = transition(s, failed(s), at(29))
    assert s.values.fragment == VALUES, "a failure within stale_after keeps the last values"
    assert s.values.series == 1
    assert s.status == Failing(ErrorReason.CONNECTION, 1, 0.02, at(0), s.values)
    assert names(events) == ["query_failed"]
    s, events = transition(s, failed(s), at(30.5))
    assert s.values.fragment.text == b"", "past stale_after the values go"
    assert s.values.series == 0
    assert names(events) == ["query_values_withdrawn"]
    s, events = transition(s, failed(s), at(60))
    assert events == [], "withdrawn once, failing reported once"
    assert s.errors == {ErrorReason.CONNECTION: 3}
    assert s.status == Failing(ErrorReason.CONNECTION, 3, 0.02, at(0)), "values withdrawn"
    assert s.runs == 4


def test_staleness_is_measured_on_the_monotonic_clock(config: Config) -> None:
    query = config.enabled[0]
    s, _ = transition(Snapshot(query), ok(Snapshot(query)), Instant(1_700_000_000.0, 100.0))
    # The wall clock jumps a day ahead (NTP step); only 5 s really passed.
    s, _ = transition(s, failed(s), Instant(1_700_086_400.0, 105.0))
    assert s.values.fragment == VALUES


def test_a_new_reason_is_logged_and_recovery_is_logged_once(config: Config) -> None:
    query = config.enabled[0]
    s = Snapshot(query)
    s, first = transition(s, failed(s, ErrorReason.TIMEOUT), at(0))
    s, same = transition(s, failed(s, ErrorReason.TIMEOUT), at(10))
    s, other = transition(s, failed(s, ErrorReason.PERMISSION), at(20))
    assert isinstance(s.status, Failing)
    assert (s.status.reason, s.status.runs) == (ErrorReason.PERMISSION, 3), "a run, any reason"
    s, recovered = transition(s, ok(s), at(30))
    s, quiet = transition(s, ok(s), at(40))
    assert names(first) == ["query_failed"]
    assert same == []
    assert names(other) == ["query_failed"]
    assert names(recovered) == ["query_recovered"]
    assert recovered[0].fields == {"failed_runs": 3}
    assert quiet == []
    assert s.errors == {ErrorReason.TIMEOUT: 2, ErrorReason.PERMISSION: 1}
    assert isinstance(s.status, Ok)
    assert s.last_error == LastError("permission: server closed the connection", at(20))


def test_a_skip_is_said_once_and_does_not_count_as_a_run(config: Config) -> None:
    query = config.enabled[0]
    skip = Outcome(query, 0.0, Skipped(Requirement(Kind.EXTENSION, "pg_cron")))
    s, events = transition(Snapshot(query), skip, at(0))
    s, again = transition(s, skip, at(10))
    assert s.status == Skipped(Requirement(Kind.EXTENSION, "pg_cron"))
    assert str(s.status.requirement) == "extension:pg_cron"
    assert s.runs == 0
    assert names(events) == ["query_skipped"]
    assert again == []


def test_a_reload_keeps_unchanged_queries_and_the_counters_of_changed_ones(
    config: Config, tmp_path: Path
) -> None:
    store = TargetStore(config)
    alpha = store.snapshot("alpha")
    assert alpha is not None
    assert store.apply(failed(alpha), at(0)) is not None
    assert store.apply(ok(alpha), at(1)) is not None
    changed = tmp_path / "changed.yaml"
    changed.write_text(QUERIES.replace("SELECT 2 AS v", "SELECT 3 AS v"))
    beta = store.snapshot("beta")
    assert beta is not None
    assert store.apply(ok(beta), at(0)) is not None
    store.replace_config(load_config(changed))
    kept, restarted = store.snapshot("alpha"), store.snapshot("beta")
    assert kept is not None
    assert restarted is not None
    assert kept.values.fragment == VALUES
    assert kept.runs == 2
    assert restarted.values.fragment.text == b"", "values from the old SQL are not served"
    assert restarted.status == NEVER_RUN
    assert restarted.runs == 1, "counters carry over: a counter never goes back"


def test_a_run_of_sql_reloaded_away_changes_nothing(config: Config, tmp_path: Path) -> None:
    """A run that started before a reload and ends after it ran the old SQL: its values and
    counts are not the new query's, and its loop must learn that it was replaced."""
    store = TargetStore(config)
    alpha = store.snapshot("alpha")
    assert alpha is not None
    changed = tmp_path / "changed.yaml"
    changed.write_text(QUERIES.replace("SELECT 1 AS v", "SELECT 5 AS v"))
    store.replace_config(load_config(changed))
    reloaded = store.snapshot("alpha")
    assert reloaded is not None
    assert store.apply(ok(alpha), at(1)) is None, "the old definition's run was applied"
    assert store.snapshot("alpha") is reloaded
    assert b"test_alpha" not in store.page.text
    assert store.apply(ok(reloaded), at(2)) == []


def test_a_served_gzip_body_is_compressed_ahead_by_the_next_render_only(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    compressions: list[int] = []
    real = gzip.compress

    def counted(data: bytes, compresslevel: int, mtime: int) -> bytes:
        compressions.append(len(data))
        compressed: bytes = real(data, compresslevel=compresslevel, mtime=mtime)
        return compressed

    monkeypatch.setattr(gzip, "compress", counted)
    store = TargetStore(config)
    store.render_now()
    assert compressions == [], "nobody asked for gzip: nothing is compressed"
    first = store.page.body(Format.TEXT, Encoding.GZIP)  # the first gzip scrape compresses
    assert len(compressions) == 1
    store.set_database_up(True)  # any change re-renders: the render compresses that format
    assert len(compressions) == 2
    assert gzip.decompress(store.page.body(Format.TEXT, Encoding.GZIP)) == store.page.text
    assert len(compressions) == 2, "the scrape after the render compressed nothing"
    assert store.page.body(Format.TEXT, Encoding.GZIP) != first
    assert b"homepage_exporter_database_up 1.0" in store.page.text
    store.page.body(Format.OPENMETRICS)  # uncompressed: nothing to make
    assert len(compressions) == 2
    store.set_database_up(False)  # the served page's successor compresses ahead again ...
    assert len(compressions) == 3
    store.set_database_up(True)  # ... but one replaced unread passes nothing on
    assert len(compressions) == 3, "a page nobody asked for was compressed"
    assert b"homepage_exporter_database_up 1.0" in gzip.decompress(
        store.page.body(Format.TEXT, Encoding.GZIP)
    )
    assert len(compressions) == 4


def test_the_targets_own_metrics_are_the_bytes_prometheus_client_would_encode(
    tmp_path: Path,
) -> None:
    """TargetStore splices each query's own samples, encoded when its snapshot changes, under
    the families' HELP and TYPE lines (store._OwnMetrics): byte for byte what encoding all the
    snapshots at once gives, in both formats, whatever state each query is in."""
    path = tmp_path / "queries.yaml"
    third = "  - {name: gamma, help: Third., sql: SELECT 3 AS v, interval: 10s, timeout: 1s,\n"
    third += "     metrics: [{name: test_gamma, help: C., value: v}]}\n"
    path.write_text(QUERIES + third)
    store = TargetStore(load_config(path))

    def spliced_is_whole() -> None:
        whole = Fragment.encode(target_families(store.snapshots, database_up=store.database_up))
        assert store.fragments()[-1] == whole

    spliced_is_whole()  # every query never run
    alpha, beta, gamma = store.snapshots
    store.apply(ok(alpha, series=3), at(1))
    store.apply(failed(beta, ErrorReason.TIMEOUT), at(1))
    skipped = Outcome(gamma.query, 0.0, Skipped(Requirement(Kind.EXTENSION, 'pg_"cron"\\')))
    store.apply(skipped, at(1))
    store.render_now()
    spliced_is_whole()
    store.set_database_up(True)
    store.apply(failed(store.snapshots[0]), at(2))
    store.apply(ok(store.snapshots[1]), at(2))
    store.render_now()
    spliced_is_whole()


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


Runs = dict[str, list[float]]


async def _drive(
    config: Config,
    reloads: list[Config],
    until: float,
    *,
    targets: int = 1,
    reload_at: float | None = None,
) -> tuple[dict[tuple[int, str], list[float]], int, bool]:
    """Run one scheduler per target on `config` in virtual time until the clock passes
    `until`, applying each of `reloads` (a SIGHUP each) at `reload_at` (default: half-way).
    The times each (target, query) ran, how many loops were alive at the end, and whether
    every loop stopped with the daemon."""
    clock = FakeTime()
    runs: dict[tuple[int, str], list[float]] = {}
    schedulers: list[Scheduler] = []
    stores: list[TargetStore] = []
    for rank in range(targets):
        store = TargetStore(config)

        async def run(query: Query, rank: int = rank) -> Outcome:
            runs.setdefault((rank, query.name), []).append(clock.t)
            return Outcome(query, 0.0, Values(fragment=VALUES))

        stores.append(store)
        schedulers.append(
            Scheduler(
                store,
                get_logger(),
                run=run,
                slot=Slot(rank, targets),
                clock=clock,
                sleep=clock.sleep,
            )
        )
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(config, stop)) for s in schedulers]
    pending = list(reloads)
    when = until / 2 if reload_at is None else reload_at
    while clock.t < until:
        await clock.advance()
        if pending and clock.t >= when:
            for new in pending:
                for store, scheduler in zip(stores, schedulers, strict=True):
                    store.replace_config(new)
                    scheduler.apply(new)
            pending.clear()
    loops = sum(len(s.loops) for s in schedulers)
    stop.set()
    # A loop the scheduler lost track of would never stop: give up after a (real) second.
    done, _ = await asyncio.wait(tasks, timeout=1.0)
    for task in tasks:
        if task not in done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    return runs, loops, len(done) == len(tasks)


def _one(runs: dict[tuple[int, str], list[float]]) -> Runs:
    return {name: times for (_, name), times in runs.items()}


def most_in_any_window(times: list[float], width: float) -> int:
    """The most runs that start within any window of `width` seconds (half-open)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, t + width - 1e-9) - i for i, t in enumerate(ordered)),
        default=0,
    )


def test_each_query_runs_on_its_interval(config: Config) -> None:
    runs = _one(asyncio.run(_drive(config, [], until=300))[0])
    for name, interval in (("alpha", 10.0), ("beta", 30.0)):
        gaps = [b - a for a, b in zip(runs[name][1:], runs[name][2:], strict=False)]
        assert gaps
        assert all(g == pytest.approx(interval) for g in gaps), "after the first, every interval"
        assert interval / 2 <= runs[name][1] - runs[name][0] < interval * 1.5


def test_one_targets_first_runs_come_within_a_quarter_second(config: Config) -> None:
    runs = _one(asyncio.run(_drive(config, [], until=60))[0])
    firsts = [times[0] for times in runs.values()]
    assert len(firsts) == 2
    assert all(0 <= t <= 0.25 for t in firsts), "values a quarter second after start"


def test_many_targets_first_runs_are_spread_and_come_within_their_window(
    config: Config,
) -> None:
    """40 targets: each query's first runs within 40 x a quarter second (10 s, one alpha
    interval), one every quarter second, not 80 runs in the first quarter second."""
    n = 40
    runs, _, _ = asyncio.run(_drive(config, [], until=40, targets=n))
    for name in ("alpha", "beta"):
        firsts = [runs[rank, name][0] for rank in range(n)]
        assert max(firsts) < min(10.0, FIRST_RUN_WINDOW_SECONDS * n)
        for k in (1, 4):
            assert most_in_any_window(firsts, k * FIRST_RUN_WINDOW_SECONDS) <= k


@pytest.mark.parametrize("n", [10, 40])
def test_runs_of_n_targets_are_spread_evenly_over_each_interval(config: Config, n: int) -> None:
    """No more than k runs of a query in any interval/n x k, from the start on."""
    runs, _, _ = asyncio.run(_drive(config, [], until=200, targets=n))
    for name, interval in (("alpha", 10.0), ("beta", 30.0)):
        times = [t for rank in range(n) for t in runs[rank, name]]
        assert len(times) >= n * (200 // interval)
        spacing = min(interval / n, FIRST_RUN_WINDOW_SECONDS)  # the first runs' is tighter
        for k in (1, 3, n // 2):
            assert most_in_any_window(times, k * spacing) <= 2 * k, (name, k)
        steady = [t for t in times if t >= interval * 1.5]
        for k in (1, 3, n // 2):
            assert most_in_any_window(steady, k * interval / n) <= k, (name, k)


def test_no_burst_after_a_reload(config: Config, tmp_path: Path) -> None:
    """A SIGHUP that changes a query restarts its loop on every target at once: its first
    runs are spread like at start, not all in the same quarter second."""
    changed = tmp_path / "changed.yaml"
    changed.write_text(QUERIES.replace("interval: 30s", "interval: 20s"))
    n = 40
    runs, _, _ = asyncio.run(
        _drive(config, [load_config(changed)], until=160, targets=n, reload_at=100)
    )
    after = [t for rank in range(n) for t in runs[rank, "beta"] if t >= 100]
    assert len(after) >= n * 2
    assert most_in_any_window(after, FIRST_RUN_WINDOW_SECONDS) <= 2
    assert most_in_any_window(after, 1.0) <= 2 * (1.0 / FIRST_RUN_WINDOW_SECONDS)
    alpha = [t for rank in range(n) for t in runs[rank, "alpha"] if t >= 100]
    assert most_in_any_window(alpha, 10.0 / n) <= 1, "an unchanged query keeps its slots"


def test_restarts_and_replicas_put_every_run_on_the_same_slots() -> None:
    slot = Slot(3, 7)
    assert phase(slot, "alpha") == phase(Slot(3, 7), "alpha")
    assert phase(slot, "alpha") != phase(slot, "beta")
    offset = phase(slot, "alpha") * 10
    # Two processes started at different moments pick the same wall-clock slots.
    for started in (1_700_000_000.0, 1_700_000_003.7):
        delay = next_delay(10, offset, started, started + 0.01)
        assert (started + 0.01 + delay - offset) % 10 == pytest.approx(0, abs=1e-6)


def test_a_run_that_overran_waits_for_its_next_slot() -> None:
    # Started at 100 (its slot: offset 0 of a 10 s interval), finished at 123.
    assert next_delay(10, 0.0, 100.0, 123.0) == pytest.approx(7.0)
    # A run that ended early still waits at least half an interval from its start.
    assert next_delay(10, 0.0, 100.0, 100.1) == pytest.approx(9.9)


def test_repeated_reloads_never_start_a_second_loop_for_a_query(config: Config) -> None:
    """Three SIGHUPs with the same file: still one loop per query, and each query's run rate
    is its interval's, not two or three times it."""
    raw, loops, stopped = asyncio.run(_drive(config, [config, config, config], until=600))
    runs = _one(raw)
    assert stopped, "every loop stopped with the daemon"
    assert loops == 2
    assert 600 / 10 * 0.9 <= len(runs["alpha"]) <= 600 / 10 * 1.1
    assert 600 / 30 * 0.9 <= len(runs["beta"]) <= 600 / 30 * 1.1


def test_a_reload_that_changes_a_query_replaces_its_loop(config: Config, tmp_path: Path) -> None:
    changed = tmp_path / "changed.yaml"
    changed.write_text(QUERIES.replace("interval: 30s", "interval: 20s"))
    new = load_config(changed)
    raw, loops, _ = asyncio.run(_drive(config, [new, new], until=600))
    assert loops == 2
    # beta: 30 s for the first half, 20 s for the second: 10 + 15 runs, give or take one each.
    assert 23 <= len(_one(raw)["beta"]) <= 27


# --- the log budget -------------------------------------------------------------------------


class Lines:
    """An EventLog that keeps what it was given."""

    def __init__(self, into: list[tuple[str, dict[str, object]]] | None = None) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = [] if into is None else into
        self._bound: dict[str, object] = {}

    def bind(self, **fields: object) -> Lines:
        bound = Lines(self.lines)
        bound._bound = {**self._bound, **fields}
        return bound

    def _add(self, event: str, fields: dict[str, object]) -> None:
        self.lines.append((event, {**self._bound, **fields}))

    def debug(self, event: str, **fields: object) -> None:
        self._add(event, fields)

    def info(self, event: str, **fields: object) -> None:
        self._add(event, fields)

    def warning(self, event: str, **fields: object) -> None:
        self._add(event, fields)

    def error(self, event: str, **fields: object) -> None:
        self._add(event, fields)


def test_500_targets_going_down_log_a_bounded_number_of_lines_and_one_summary(
    config: Config,
) -> None:
    seconds = [0.0]
    out = Lines()
    budget = LogBudget(out, burst=50, per_second=1.0, clock=lambda: seconds[0])
    stores = [TargetStore(config) for _ in range(500)]
    logs = [Budgeted(out.bind(target=f"t{i}"), budget) for i in range(500)]

    def everything_fails(at: float) -> None:
        async def fail() -> None:  # in an event loop, as in the daemon: renders coalesce
            for store, log in zip(stores, logs, strict=True):
                for snap in store.snapshots:
                    now = Instant(1e9 + at, at)
                    outcome = failed(snap, ErrorReason.TIMEOUT)  # a warning each
                    log_events(log.bind(query=snap.query.name), store.apply(outcome, now) or [])

        asyncio.run(fail())

    everything_fails(0.0)  # 1,000 state changes in one instant
    assert len(out.lines) == 50
    assert {event for event, _ in out.lines} == {"query_failed"}
    seconds[0] = 5.0
    budget.flush()
    assert len(out.lines) == 51
    event, fields = out.lines[-1]
    assert event == "log_lines_suppressed"
    assert fields["suppressed"] == 950
    assert fields["query_failed"] == 950
    budget.flush()
    assert len(out.lines) == 51, "one summary of what was held back, not one per flush"
    everything_fails(10.0)  # still failing for the same reason: not a state change
    seconds[0] = 60.0
    budget.flush()
    assert len(out.lines) == 51


def test_the_budget_refills_at_its_rate_and_says_what_it_held_back(config: Config) -> None:
    seconds = [0.0]
    out = Lines()
    budget = LogBudget(out, burst=5, per_second=2.0, clock=lambda: seconds[0])
    log = Budgeted(out, budget)
    for step in range(100):  # a line every 0.1 s for 10 s: 100 asked, at most 5 + 2 x 10
        seconds[0] = step * 0.1
        log.warning("database_unreachable", step=step)
    seconds[0] = 20.0
    budget.flush()
    summaries = [f for e, f in out.lines if e == "log_lines_suppressed"]
    assert len(out.lines) <= 5 + 2 * 10 + 1
    passed = len(out.lines) - len(summaries)
    assert passed + sum(int(str(f["suppressed"])) for f in summaries) == 100
