"""When a query first runs: a fraction of a second after start, and after a reload that adds or
changes it, never up to its interval later (an hourly query would show nothing for an hour).

In virtual time (the scheduler's injectable clock and sleep), the bound itself; through the
real daemon, an hourly query's value appears within seconds of start and of a SIGHUP.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.config import Config, Query, load_config
from exporter.demo.cluster import Cluster
from exporter.logs import get_logger
from exporter.scheduler import FIRST_RUN_WINDOW_SECONDS, Scheduler
from exporter.snapshot import Outcome, Values
from exporter.store import TargetStore
from tests.conftest import exporter_dsn
from tests.harness import Exporter, exporter_env, write_queries
from tests.test_transition import VALUES, FakeTime

HOURLY = """\
  - name: {name}
    help: Hourly.
    sql: SELECT {value} AS v
    interval: 1h
    timeout: 5s
    metrics:
      - {{name: test_{name}, help: Hourly., value: v}}
"""


def hourly(*names: str, value: int = 1) -> str:
    return "version: 1\nqueries:\n" + "".join(HOURLY.format(name=n, value=value) for n in names)


async def _first_runs(before: Config, after: Config, reload_at: float) -> dict[str, float]:
    """Seconds from start (queries of `before`) or from the reload (queries new or changed in
    `after`) to each query's first run."""
    clock = FakeTime()
    first: dict[str, float] = {}
    since = {q.name: 0.0 for q in before.enabled}

    async def run(query: Query) -> Outcome:
        first.setdefault(f"{query.name}@{since[query.name]:g}", clock.t - since[query.name])
        return Outcome(query, 0.0, Values(fragment=VALUES))

    store = TargetStore(before)
    scheduler = Scheduler(store, get_logger(), run=run, clock=clock, sleep=clock.sleep)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(before, stop))
    reloaded = False
    while clock.t < reload_at + 7200:
        await clock.advance()
        if not reloaded and clock.t >= reload_at:
            old = {q.name: q for q in before.enabled}
            for query in after.enabled:
                if old.get(query.name) != query:
                    since[query.name] = clock.t  # the moment of the SIGHUP
            store.replace_config(after)
            scheduler.apply(after)
            reloaded = True
    stop.set()
    await asyncio.wait_for(task, 1.0)
    return first


def test_each_query_first_runs_within_the_window_of_start_and_of_a_reload(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(hourly("alpha", "beta"))
    (tmp_path / "b.yaml").write_text(
        hourly("alpha", "beta", value=2) + HOURLY.format(name="gamma", value=3)
    )
    before, after = load_config(tmp_path / "a.yaml"), load_config(tmp_path / "b.yaml")
    first = asyncio.run(_first_runs(before, after, reload_at=5000.0))
    starts = {k: v for k, v in first.items() if k.endswith("@0")}
    reloads = {k: v for k, v in first.items() if not k.endswith("@0")}
    assert set(starts) == {"alpha@0", "beta@0"}
    assert {k.split("@")[0] for k in reloads} == {"alpha", "beta", "gamma"}
    for name, delay in first.items():
        assert 0 <= delay <= FIRST_RUN_WINDOW_SECONDS, f"{name}: first run {delay:.1f} s late"


StartExporter = Callable[..., Exporter]


@pytest.mark.slow
def test_an_hourly_query_reports_within_seconds_of_start_and_of_a_reload(
    pg: Cluster, tmp_path: Path, start_exporter: StartExporter
) -> None:
    queries = tmp_path / "queries.yaml"
    queries.write_text(hourly("alpha", "beta"))
    exporter = start_exporter(exporter_env(exporter_dsn(pg), queries))
    # Generous for a busy machine, and still a small fraction of the hour a late first run is.
    for name in ("alpha", "beta"):
        exporter.wait_metric(f"test_{name}", lambda v: v == 1, 20)
    write_queries(
        queries, HOURLY.format(name="alpha", value=2) + HOURLY.format(name="gamma", value=3)
    )
    exporter.send(signal.SIGHUP)
    exporter.wait_metric("test_alpha", lambda v: v == 2, 20)  # changed: runs again at once
    exporter.wait_metric("test_gamma", lambda v: v == 3, 20)  # added
