"""Shared fixtures: one throwaway PostgreSQL cluster for the session, the exporter as a process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exporter.demo.cluster import Cluster
from exporter.demo.database import EXPORTER_ROLE, create_cms_database
from tests.harness import EXPORTER_PASSWORD, Exporter

CMS = "cms"
BARE = "cms_bare"


@pytest.fixture(scope="session")
def pg() -> Iterator[Cluster]:
    """PostgreSQL with pg_cron and pg_stat_statements preloaded, as on Supabase.

    Database `cms` has the reference schema with both extensions; `cms_bare` has neither.
    """
    cluster = Cluster(cron_database=CMS)
    with cluster:
        create_cms_database(cluster, CMS, exporter_password=EXPORTER_PASSWORD)
        create_cms_database(cluster, BARE, exporter_password=EXPORTER_PASSWORD, extensions=False)
        yield cluster


def exporter_dsn(cluster: Cluster, database: str = CMS, **kw: str) -> str:
    """The URL of the least-privileged role the project documents."""
    return cluster.url(EXPORTER_ROLE, kw.get("password", EXPORTER_PASSWORD), database)


@pytest.fixture
def start_exporter() -> Iterator[Callable[..., Exporter]]:
    """Start exporters; each is stopped (and its log dropped) at teardown."""
    started: list[Exporter] = []

    def start(env: dict[str, str], *args: str, healthy: bool = True) -> Exporter:
        exporter = Exporter(env, args or ("run",))
        started.append(exporter)
        return exporter.wait_healthy() if healthy else exporter

    yield start
    for exporter in started:
        exporter.close()


@pytest.fixture
def queries_file(tmp_path: Path) -> Path:
    return tmp_path / "queries.yaml"


@pytest.fixture(scope="session")
def template(pg: Cluster) -> str:
    """The reference schema, the exporter role and its policies, ready to clone per test."""
    from tests.queries_harness import TEMPLATE

    create_cms_database(pg, TEMPLATE, exporter_password=EXPORTER_PASSWORD, extensions=False)
    return TEMPLATE


@pytest.fixture
def db(pg: Cluster, template: str) -> str:
    """A fresh, empty CMS database for one test."""
    from tests.queries_harness import fresh_database

    return fresh_database(pg)
