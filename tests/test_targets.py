"""Several CMS databases from one process, Prometheus's multi-target way: /probe?target=NAME."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.demo.cluster import Cluster
from exporter.errors import ConfigError
from exporter.settings import Settings
from exporter.targets import load_targets
from tests.conftest import exporter_dsn
from tests.harness import EXPORTER_PASSWORD, Exporter, Scrape, exporter_env, wait_for, write_queries

pytestmark = pytest.mark.slow
StartExporter = Callable[..., Exporter]
SECTIONS = """\
  - name: sections
    help: Sections.
    sql: SELECT count(*) AS n FROM homepage_sections
    interval: 1s
    timeout: 1s
    metrics:
      - {name: test_sections, help: Sections., value: n}
"""


def targets_file(folder: Path, pg: Cluster, eu: str, us: str) -> Path:
    password = folder / "eu-password"
    password.write_text(EXPORTER_PASSWORD + "\n")
    path = folder / "targets.yaml"
    path.write_text(f"""
targets:
  - name: eu
    database_url: {pg.url("homepage_exporter", None, eu)}
    database_password_file: {password}
    locales: [en, de]
  - name: us
    database_url: {exporter_dsn(pg, us)}
  - name: broken
    database_url: {exporter_dsn(pg, "no_such_database")}
""")
    return path


def test_each_target_has_its_own_page_pool_and_up_metrics(
    pg: Cluster, start_exporter: StartExporter, tmp_path: Path, db: str
) -> None:
    from tests.queries_harness import fresh_database

    us = fresh_database(pg)
    pg.psql("INSERT INTO homepage_sections (section_key) VALUES ('a'), ('b')", database=db)
    pg.psql("INSERT INTO homepage_sections (section_key) VALUES ('c')", database=us)
    queries = write_queries(tmp_path / "queries.yaml", SECTIONS)
    env = exporter_env(
        "postgresql://unused@127.0.0.1:1/x",
        queries,
        targets_file=str(targets_file(tmp_path, pg, db, us)),
    )
    exporter = start_exporter(env)

    def probe(target: str) -> Scrape | None:
        status, _, body = exporter.get(f"/probe?target={target}")
        assert status == 200
        scrape = Scrape(body.decode())
        return (
            scrape
            if scrape.get("homepage_exporter_query_up", query="sections") is not None
            else None
        )

    eu = wait_for(lambda: probe("eu"), 10, "eu to report")
    us_page = wait_for(lambda: probe("us"), 10, "us to report")
    broken = wait_for(lambda: probe("broken"), 10, "broken to report")
    assert isinstance(eu, Scrape)
    assert isinstance(us_page, Scrape)
    assert isinstance(broken, Scrape)
    assert eu.get("test_sections") == 2
    assert us_page.get("test_sections") == 1
    assert eu.get("homepage_exporter_database_up") == 1
    assert broken.get("homepage_exporter_database_up") == 0
    assert broken.get("test_sections") is None
    # No target label on every series: Prometheus's instance tells targets apart.
    assert 'target="' not in eu.text
    assert "process_resident_memory_bytes" not in eu.text
    own = exporter.scrape()
    assert own.get("process_resident_memory_bytes") is not None
    assert own.get("test_sections") is None
    assert exporter.get("/probe")[0] == 400
    assert exporter.get("/probe?target=nope")[0] == 404
    assert "target=broken" in exporter.logs
    assert 'database \\"no_such_database\\" does not exist' in exporter.logs


def test_single_database_mode_has_no_probe(
    pg: Cluster, start_exporter: StartExporter, queries_file: Path
) -> None:
    write_queries(queries_file, SECTIONS)
    exporter = start_exporter(exporter_env(exporter_dsn(pg), queries_file))
    assert exporter.get("/probe?target=x")[0] == 404


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("targets: []\n", "targets: Tuple should have at least 1 item"),
        (
            "targets:\n  - name: eu\n    database_url: postgresql://h/d\n    colour: red\n",
            "targets.eu.colour: unknown key",
        ),
        (
            "targets:\n  - name: Bad Name\n    database_url: postgresql://h/d\n",
            "targets.Bad Name.name: String should match pattern",
        ),
        (
            "targets:\n  - {name: a, database_url: 'postgresql://h/d'}\n"
            "  - {name: a, database_url: 'postgresql://h/e'}\n",
            "targets.yaml:3: targets.a.name: name is used twice",
        ),
        (
            "targets:\n  - {name: a, database_url: 'mysql://h/d'}\n",
            "targets.a.database_url: expected a URL like",
        ),
        (
            "targets:\n  - {name: a, database_url: 'postgresql://h/d', database_password_file: /nope}\n",
            "cannot read /nope",
        ),
        (
            "targets:\n  - name: a\n    database_url: postgresql://h/d\n"
            "    database_url: postgresql://h/e\n",
            "targets.yaml:4: targets[0].database_url: duplicate key (first at line 3)",
        ),
        (
            "base: &b {database_url: 'postgresql://h/d'}\ntargets:\n  - {name: a, <<: *b}\n",
            "targets.yaml:3: invalid YAML: aliases (*name) are not supported",
        ),
    ],
    ids=[
        "empty",
        "unknown-key",
        "bad-name",
        "duplicate",
        "bad-url",
        "password-file",
        "duplicate-key",
        "alias",
    ],
)
def test_bad_targets_files_name_the_target_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_targets(Settings(targets_file=path))
    assert expected in str(caught.value)


def test_check_connect_reports_every_target(pg: Cluster, tmp_path: Path, db: str) -> None:
    queries = write_queries(tmp_path / "queries.yaml", SECTIONS)
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check", "--connect"],
        env={
            "HOMEPAGE_EXPORTER_TARGETS_FILE": str(targets_file(tmp_path, pg, db, db)),
            "HOMEPAGE_EXPORTER_QUERIES_FILE": str(queries),
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1  # the broken target
    assert result.stdout.count("target eu") == 1
    assert "target broken" in result.stdout
    assert EXPORTER_PASSWORD not in result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
@pytest.mark.parametrize(
    "config", ["prometheus.yml", "prometheus-multi-target.yml", "compose/prometheus.yml"]
)
def test_deploy_prometheus_configs_are_valid(config: str) -> None:
    path = Path(__file__).resolve().parent.parent / "deploy" / config
    result = subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
