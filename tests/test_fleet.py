"""Many targets in one process, against a real PostgreSQL: one connection per target, opened
when needed, and the ones an overlap of runs opened closed again once idle.

When runs happen (spread over each interval, no burst at start or reload) is held in virtual
time by tests/test_transition.py; what it costs at 100 to 500 targets is measured by
bench/fleet.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.db import APPLICATION_NAME
from exporter.demo.cluster import Cluster
from tests.harness import EXPORTER_PASSWORD, Exporter, Scrape, exporter_env, wait_for, write_queries

pytestmark = pytest.mark.slow
StartExporter = Callable[..., Exporter]
TARGETS = 20
ROLE = "homepage_fleet_test"
FAST = """\
  - name: fast{i}
    help: Quick.
    sql: SELECT {i} AS v
    interval: 1s
    timeout: 1s
    metrics:
      - {{name: test_fast{i}, help: Quick., value: v}}
"""
SLOW = """\
  - name: slow
    help: Holds its connection for three seconds, once.
    sql: SELECT 1 AS v FROM pg_sleep(3)
    interval: 1h
    timeout: 10s
    metrics:
      - {name: test_slow, help: One., value: v}
"""


def fleet(folder: Path, pg: Cluster, db: str, queries: str, **extra: str) -> dict[str, str]:
    # Twenty databases stand in for twenty: a role without the exporter role's limit of five
    # connections (its queries read nothing).
    pg.psql(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN"
        f" CREATE ROLE {ROLE} LOGIN PASSWORD '{EXPORTER_PASSWORD}'; END IF; END $$"
    )
    path = folder / "targets.yaml"
    url = pg.url(ROLE, EXPORTER_PASSWORD, db)
    path.write_text(
        "targets:\n"
        + "".join(f"  - name: t{i:02d}\n    database_url: {url}\n" for i in range(TARGETS))
    )
    return exporter_env(
        "postgresql://unused@127.0.0.1:1/x",
        write_queries(folder / "queries.yaml", queries),
        targets_file=str(path),
        **extra,
    )


def connections(pg: Cluster, db: str) -> int:
    return int(
        pg.psql(
            "SELECT count(*) FROM pg_stat_activity"
            f" WHERE datname = '{db}' AND application_name = '{APPLICATION_NAME}'"
        )
    )


def every_target_reports(exporter: Exporter, query: str) -> bool:
    for i in range(TARGETS):
        status, _, body = exporter.get(f"/probe?target=t{i:02d}")
        page = Scrape(body.decode())
        if status != 200 or page.get("homepage_exporter_query_up", query=query) != 1:
            return False
    return True


def test_many_targets_hold_at_most_one_connection_each(
    pg: Cluster, db: str, start_exporter: StartExporter, tmp_path: Path
) -> None:
    queries = "".join(FAST.format(i=i) for i in range(4))
    exporter = start_exporter(fleet(tmp_path, pg, db, queries))
    wait_for(lambda: every_target_reports(exporter, "fast3"), 20, "every target to report")
    seen = []
    deadline = time.monotonic() + 5  # five intervals of every query, sampled throughout
    while time.monotonic() < deadline:
        seen.append(connections(pg, db))
        time.sleep(0.05)
    assert max(seen) <= TARGETS, f"four queries a second each, yet {max(seen)} connections"
    assert min(seen) >= 1


def test_connections_opened_for_an_overlap_close_when_idle(
    pg: Cluster, db: str, start_exporter: StartExporter, tmp_path: Path
) -> None:
    """With two connections allowed, a three-second query beside a one-second one needs a
    second connection per target; once the slow one is done, the spare is closed."""
    queries = FAST.format(i=0) + SLOW
    exporter = start_exporter(fleet(tmp_path, pg, db, queries, pool_size="2"))
    wait_for(lambda: connections(pg, db) > TARGETS, 20, "overlapping runs to open spares")
    wait_for(lambda: every_target_reports(exporter, "slow"), 30, "every slow run to finish")
    # Idle ones close after two ping intervals (2 s here); generous bounds for a busy CI.
    wait_for(lambda: connections(pg, db) <= TARGETS, 30, "the spare connections to close")
    assert every_target_reports(exporter, "fast0"), "the fast query kept running meanwhile"
