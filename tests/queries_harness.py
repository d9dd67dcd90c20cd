"""Running one shipped query, in process, as the exporter role, against a known database state."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

from exporter.config import Query, load_config
from exporter.demo.cluster import Cluster
from exporter.scheduler import run_query
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
        async with target.open_database() as db:
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
