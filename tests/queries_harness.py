"""Running one shipped query, in process, as the exporter role, against a known database state."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import asyncpg

from exporter.config import Query, load_config
from exporter.demo.cluster import Cluster
from exporter.runner import run_query
from exporter.settings import SHIPPED_QUERIES, Settings, load_settings
from exporter.snapshot import Outcome, Skipped
from exporter.targets import load_targets
from tests.conftest import TEMPLATE, exporter_dsn

_names = itertools.count()


def shipped(name: str) -> Query:
    return next(q for q in load_config(SHIPPED_QUERIES).queries if q.name == name)


@dataclass(frozen=True)
class Values:
    """A query's samples: metric name -> {labels as a sorted tuple -> value}."""

    outcome: Outcome

    def __call__(self, metric: str, **labels: str) -> float | None:
        for family in self.outcome.values.families:
            if family.metric.name != metric:
                continue
            for sample in family.samples:
                got = dict(zip(family.metric.labels, sample.labels, strict=True))
                if got == labels:
                    return sample.value
            return None
        raise KeyError(f"{metric} is not a metric of {self.outcome.query.name}")

    def labels(self, metric: str) -> set[tuple[str, ...]]:
        family = next(f for f in self.outcome.values.families if f.metric.name == metric)
        return {s.labels for s in family.samples}


def settings_for(pg: Cluster, database: str, **overrides: object) -> Settings:
    return load_settings({"database_url": exporter_dsn(pg, database), **overrides})


def run_named(pg: Cluster, database: str, name: str, **overrides: object) -> Outcome:
    settings = settings_for(pg, database, **overrides)

    async def go() -> Outcome:
        (target,) = load_targets(settings)
        async with target.database.open() as db:
            return await run_query(db, shipped(name), target.params, settings.max_series_per_query)

    return asyncio.run(go())


def values(pg: Cluster, database: str, name: str, **overrides: object) -> Values:
    outcome = run_named(pg, database, name, **overrides)
    assert outcome.error is None, outcome.error
    assert not isinstance(outcome.result, Skipped), outcome.result
    return Values(outcome)


def fresh_database(pg: Cluster) -> str:
    """A new database cloned from the reference schema template (no rows, no statistics)."""
    name = f"state_{next(_names)}"
    pg.psql(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
    return name


async def until_sessions(conn: asyncpg.Connection, where: str, count: int = 1) -> None:
    """Poll pg_stat_activity (other sessions of this database) until at least `count` match
    `where`: a test reads the state it set up once the server says it holds, not after a
    sleep long enough on a quiet machine. Fails after 20 s."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        f" AND datname = current_database() AND ({where})"
    )
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        # Inside a transaction pg_stat_activity is read once and kept (stats_fetch_consistency);
        # the holder of a lock polls from its own open transaction.
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        if await conn.fetchval(sql) >= count:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no {count} session(s) where {where} after 20 s")
        await asyncio.sleep(0.02)


WAITING_ON_A_LOCK = "wait_event_type = 'Lock'"
