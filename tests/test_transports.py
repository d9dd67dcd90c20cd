"""How production reaches the database: through PgBouncer in transaction mode, and over TLS."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from exporter.demo.cluster import Cluster
from exporter.demo.database import EXPORTER_ROLE, create_cms_database
from exporter.settings import SHIPPED_QUERIES
from tests.conftest import CMS
from tests.harness import EXPORTER_PASSWORD, Exporter, exporter_env, serve_tls, wait_for
from tests.pooler import PGBOUNCER, pgbouncer

pytestmark = pytest.mark.slow
StartExporter = Callable[..., Exporter]


def fast_shipped_queries(tmp: Path) -> Path:
    data = yaml.safe_load(SHIPPED_QUERIES.read_text())
    for query in data["queries"]:
        query["interval"] = query["timeout"] = "2s"
    path = tmp / "queries.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.skipif(PGBOUNCER is None, reason="pgbouncer is not installed")
def test_every_shipped_query_runs_through_pgbouncer_in_transaction_mode(
    pg: Cluster, start_exporter: StartExporter, tmp_path: Path
) -> None:
    with pgbouncer(pg, CMS, {EXPORTER_ROLE: EXPORTER_PASSWORD}) as port:
        url = f"postgresql://{EXPORTER_ROLE}:{EXPORTER_PASSWORD}@127.0.0.1:{port}/{CMS}"
        exporter = start_exporter(
            exporter_env(
                url, fast_shipped_queries(tmp_path), statement_cache_size="0", pool_size="2"
            )
        )

        # Several cycles of every query: a leaked prepared statement would fail the second one.
        def all_up_three_times() -> bool:
            scrape = exporter.scrape()
            ups = scrape.all("homepage_exporter_query_up")
            durations = scrape.all("homepage_exporter_query_duration_seconds")
            return len(ups) >= 18 and all(v == 1 for v in ups.values()) and bool(durations)

        wait_for(all_up_three_times, 20, "every query up through pgbouncer")
        time.sleep(5)  # two more cycles
        scrape = exporter.scrape()
        errors = scrape.all("homepage_exporter_query_errors_total")
        assert errors
        assert sum(errors.values()) == 0, {k: v for k, v in errors.items() if v}
        assert scrape.get("homepage_exporter_query_up", query="homepage_render") == 1


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[Cluster]:
    """A server that takes the exporter's role over TLS only, with a self-signed certificate."""
    cluster = Cluster(
        preload=(),
        hba=(
            f"hostnossl all {EXPORTER_ROLE} 127.0.0.1/32 reject",
            f"hostssl all {EXPORTER_ROLE} 127.0.0.1/32 scram-sha-256",
        ),
    )
    cluster.init()
    try:
        serve_tls(cluster)
        cluster.start()
        create_cms_database(cluster, CMS, exporter_password=EXPORTER_PASSWORD, extensions=False)
        yield cluster
    finally:
        cluster.destroy()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_sslmode_require_against_a_self_signed_server(
    tls_cluster: Cluster, start_exporter: StartExporter, tmp_path: Path
) -> None:
    url = tls_cluster.url(EXPORTER_ROLE, EXPORTER_PASSWORD, CMS) + "?sslmode=require"
    exporter = start_exporter(exporter_env(url, fast_shipped_queries(tmp_path)))
    exporter.wait_metric("homepage_exporter_query_up", lambda v: v == 1, 10, query="sections")
    ssl = tls_cluster.psql(
        "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
        f" WHERE a.usename = '{EXPORTER_ROLE}'"
    )
    assert ssl.strip() == "t"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_without_tls_the_server_refuses_and_the_exporter_says_so(
    tls_cluster: Cluster, tmp_path: Path
) -> None:
    url = tls_cluster.url(EXPORTER_ROLE, EXPORTER_PASSWORD, CMS) + "?sslmode=disable"
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check", "--connect"],
        env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no encryption" in result.stdout or "SSL off" in result.stdout, result.stdout
    assert EXPORTER_PASSWORD not in result.stdout + result.stderr
