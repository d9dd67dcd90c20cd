"""Backups as the runbook runs them: its script's faults, and ours, with real pg_dump/pg_restore."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.demo.cluster import Cluster
from exporter.demo.database import sql_file
from tests.queries_harness import fresh_database

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "backup-homepage-cms.sh"
STATE = """
INSERT INTO homepage_sections (id, section_key, locale, status, is_active) VALUES
  ('00000000-0000-0000-0000-000000000001', 'hero', 'en', 'published', true);
INSERT INTO section_versions (id, section_id, version_number, content, is_published) VALUES
  ('00000000-0000-0000-0000-0000000000f1', '00000000-0000-0000-0000-000000000001', 1,
   '{"title": "Spring"}', true);
UPDATE homepage_sections SET published_version_id = '00000000-0000-0000-0000-0000000000f1';
INSERT INTO media_assets (file_path, file_size) VALUES ('homepage/hero.webp', 1234);
"""


@pytest.fixture
def cms(pg: Cluster) -> str:
    db = fresh_database(pg)
    pg.psql(STATE, database=db)
    return db


def _tools(pg: Cluster) -> dict[str, str]:
    path = f"{pg.bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return {**os.environ, "PATH": path}


def _run_script(pg: Cluster, url: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**_tools(pg), "DATABASE_URL": url, "BACKUP_DIR": str(tmp / "backups"),
           "TEXTFILE_DIR": str(tmp / "textfile")}  # fmt: skip
    return subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, check=False, timeout=120
    )


def _metrics(tmp: Path) -> dict[str, float]:
    text = (tmp / "textfile" / "homepage_backup.prom").read_text()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_runbooks_verification_always_fails(pg: Cluster, cms: str, tmp_path: Path) -> None:
    """It gzips a custom-format dump, then asks pg_restore --list to read the .gz."""
    dump = tmp_path / "homepage_cms.dump"
    subprocess.run(
        [str(pg.bindir / "pg_dump"), f"--dbname={pg.url(database=cms)}",
         "-t", "public.homepage_sections", "--no-acl", "--no-owner", "-F", "c", "-f", str(dump)],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(["gzip", str(dump)], check=True)
    listed = subprocess.run(
        [str(pg.bindir / "pg_restore"), "--list", f"{dump}.gz"], capture_output=True, check=False
    )
    assert listed.returncode != 0  # "Backup verification failed!", every time


def test_our_script_verifies_records_and_restores(pg: Cluster, cms: str, tmp_path: Path) -> None:
    before = time.time()
    result = _run_script(pg, pg.url(database=cms), tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = _metrics(tmp_path)
    assert before - 1 <= metrics["homepage_backup_last_success_timestamp_seconds"] <= time.time()
    assert metrics["homepage_backup_last_run_timestamp_seconds"] >= before - 1
    assert metrics["homepage_backup_last_size_bytes"] > 1000
    (dump,) = (tmp_path / "backups").glob("homepage_cms_*.dump")

    # RTO path: the dump restores into an empty database with RLS, policies, indexes and grants.
    pg.psql("CREATE DATABASE restored")
    pg.psql_file(sql_file("schema.sql"), database="restored")  # roles, functions; tables dropped:
    pg.psql("DROP TABLE homepage_sections, section_versions, section_versions_archive,"
            " section_schedules, section_products, section_categories, media_assets CASCADE",
            database="restored")  # fmt: skip
    subprocess.run(
        [str(pg.bindir / "pg_restore"), f"--dbname={pg.url(database='restored')}",
         "--exit-on-error", "--single-transaction", str(dump)],
        check=True, capture_output=True,
    )  # fmt: skip
    facts = pg.psql(
        "SELECT (SELECT relrowsecurity FROM pg_class WHERE relname = 'homepage_sections'),"
        " (SELECT count(*) FROM pg_policies WHERE tablename = 'homepage_sections'),"
        " (SELECT count(*) FROM pg_indexes WHERE tablename = 'homepage_sections') > 2,"
        " has_table_privilege('anon', 'homepage_sections', 'SELECT'),"
        " (SELECT count(*) FROM get_homepage_content('en'))",
        database="restored",
    ).strip()
    assert facts == "t|2|t|t|1"
    pg.psql("DROP DATABASE restored")


def test_a_failed_run_keeps_the_last_success_and_says_so(
    pg: Cluster, cms: str, tmp_path: Path
) -> None:
    assert _run_script(pg, pg.url(database=cms), tmp_path).returncode == 0
    textfile = tmp_path / "textfile" / "homepage_backup.prom"
    success = _metrics(tmp_path)["homepage_backup_last_success_timestamp_seconds"]
    # That success an hour ago (no waiting for the clock to tick between the two runs).
    success -= 3600
    textfile.write_text(
        re.sub(
            r"(?m)^(homepage_backup_last_success_timestamp_seconds) \S+$",
            rf"\1 {success:.0f}",
            textfile.read_text(),
        )
    )
    broken = pg.url(database="no_such_database")
    result = _run_script(pg, broken, tmp_path)
    assert result.returncode == 1
    assert "pg_dump failed" in result.stderr
    metrics = _metrics(tmp_path)
    assert metrics["homepage_backup_last_success_timestamp_seconds"] == success
    assert metrics["homepage_backup_last_run_timestamp_seconds"] > success  # HomepageBackupFailed
    assert not list((tmp_path / "backups").glob("*.partial"))


def test_the_runbooks_restore_option_b_breaks_the_tables(
    pg: Cluster, cms: str, tmp_path: Path
) -> None:
    """pg_restore --clean -t ... on the live database: tables with foreign keys cannot be
    dropped, and the ones it recreates come back without RLS, policies or indexes."""
    assert _run_script(pg, pg.url(database=cms), tmp_path).returncode == 0
    (dump,) = (tmp_path / "backups").glob("homepage_cms_*.dump")
    option_b = subprocess.run(
        [str(pg.bindir / "pg_restore"), f"--dbname={pg.url(database=cms)}", "--clean",
         "--if-exists", "-t", "homepage_sections", "-t", "section_versions",
         "-t", "section_schedules", "-t", "section_products", "-t", "section_categories",
         str(dump)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert option_b.returncode != 0
    assert "cannot drop table" in option_b.stderr
    broken = pg.psql(
        "SELECT relname, relrowsecurity FROM pg_class WHERE relname IN"
        " ('section_products', 'section_categories') ORDER BY 1",
        database=cms,
    ).split()
    # Recreated bare: row level security off, so the API would show every row.
    assert broken == ["section_categories|f", "section_products|f"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_the_script_refuses_without_a_database_url(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr
