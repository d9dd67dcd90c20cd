"""The user's schema, not ours: every shipped query on a CMS shaped as the runbook shows it.

tests/fixtures/runbook_only/ is a second Homepage CMS, written from the DBA runbook alone by
someone who had not read exporter/sql/schema.sql: the runbook's table and column names, and other
choices wherever the runbook is silent (a bigint schedule id, `homepage_section_id` and
`target_version_id`, the statuses executed/errored/withdrawn, `executed_at` and
`failure_reason`, no `processed_at` or `error_message`). Told that vocabulary through settings,
the exporter must answer every query there, or skip it naming what is missing, and never fail;
triage must reach the same verdicts as on the reference schema.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import load_config
from exporter.contract import Kind
from exporter.demo.cluster import Cluster
from exporter.demo.database import load_exporter_role, sql_file
from exporter.settings import SHIPPED_QUERIES
from exporter.snapshot import Skipped
from tests.conftest import exporter_dsn
from tests.harness import EXPORTER_PASSWORD
from tests.queries_harness import Values, run_named

pytestmark = pytest.mark.slow
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "runbook_only"
# The fixture's words where the runbook is silent, as a user would set them.
VOCABULARY = {
    "schedule_published": "executed",
    "schedule_failed": "errored",
    "schedule_cancelled": "withdrawn",
    "schedule_section_column": "homepage_section_id",
    "schedule_version_column": "target_version_id",
    "schedule_processed_column": "executed_at",
    "schedule_error_column": "failure_reason",
    "locales": "en,de",
}
QUERIES = [q.name for q in load_config(SHIPPED_QUERIES).enabled]
_count = iter(range(1_000_000))


def _database(pg: Cluster, *, role_script: bool = True) -> str:
    name = f"runbook_cms_{next(_count)}"
    pg.psql(f'CREATE DATABASE "{name}"')
    pg.psql_file(FIXTURE / "schema.sql", database=name)
    pg.psql_file(FIXTURE / "seed.sql", database=name)
    if role_script:
        load_exporter_role(pg, name, EXPORTER_PASSWORD)
    pg.psql("ANALYZE", database=name)
    return name


@pytest.fixture
def runbook_cms(pg: Cluster) -> str:
    return _database(pg)


def _cli(url: str, *args: str, vocabulary: bool = True) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEPAGE_EXPORTER_")}
    env["DATABASE_URL"] = url
    if vocabulary:
        env.update({f"HOMEPAGE_EXPORTER_{k.upper()}": v for k, v in VOCABULARY.items()})
    result = subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in result.stdout + result.stderr
    return result.returncode, result.stdout


@pytest.mark.parametrize("name", QUERIES)
def test_every_query_answers_or_is_skipped_naming_what_is_missing(
    pg: Cluster, runbook_cms: str, name: str
) -> None:
    outcome = run_named(pg, runbook_cms, name, **VOCABULARY)
    assert outcome.error is None, (name, outcome.error)
    if isinstance(outcome.result, Skipped):  # only an extension this database does not have
        assert outcome.result.requirement.kind is Kind.EXTENSION, outcome.result


def test_the_schedule_checks_read_the_cms_own_words(pg: Cluster, runbook_cms: str) -> None:
    statuses = Values(run_named(pg, runbook_cms, "schedule_statuses", **VOCABULARY))
    assert statuses("homepage_section_schedules", status="completed") == 4
    assert statuses("homepage_section_schedules", status="pending") == 1
    assert statuses("homepage_section_schedules_processed_7d", status="completed") == 4
    # A publish fails now: the fixture records it as errored, with its failure_reason.
    pg.psql(
        "UPDATE section_schedules SET status = 'errored', executed_at = now(),"
        " failure_reason = 'version does not belong to section'"
        " WHERE status = 'pending'",
        database=runbook_cms,
    )
    failures = Values(run_named(pg, runbook_cms, "publish_failures", **VOCABULARY))
    assert failures("homepage_publish_failures_last_hour") == 1
    info = failures.labels("homepage_publish_failure_newest_info")
    ((_, section, locale, error),) = info
    assert (section, locale, error) == ("spring_drop", "en", "version does not belong to section")


def test_without_the_optional_columns_the_runbook_columns_answer(
    pg: Cluster, runbook_cms: str
) -> None:
    """Settings left at the reference schema's names (processed_at, error_message, section_id do
    not exist here): the failure time falls back to the runbook's updated_at, the error and the
    section are unnamed, and nothing fails."""
    pg.psql(
        "UPDATE section_schedules SET status = 'failed' WHERE false;"  # no such status here
        " ALTER TABLE section_schedules DROP CONSTRAINT section_schedules_status_check;"
        " ALTER TABLE section_schedules DROP CONSTRAINT section_schedules_failure_reason_ck;"
        " UPDATE section_schedules SET status = 'failed', updated_at = now()"
        " WHERE status = 'pending'",
        database=runbook_cms,
    )
    failures = Values(run_named(pg, runbook_cms, "publish_failures", locales="en,de"))
    assert failures("homepage_publish_failures_last_hour") == 1
    lag = Values(run_named(pg, runbook_cms, "scheduled_publishes", locales="en,de"))
    assert lag("homepage_scheduled_publish_lag_seconds") == 0
    # The week's outcomes, too, by updated_at: without processed_at, not none of them.
    statuses = Values(run_named(pg, runbook_cms, "schedule_statuses", locales="en,de"))
    assert statuses("homepage_section_schedules", status="failed") == 1
    assert statuses("homepage_section_schedules_processed_7d", status="failed") == 1


def test_before_the_role_script_check_says_to_run_it(pg: Cluster) -> None:
    name = _database(pg, role_script=False)
    code, out = _cli(exporter_dsn(pg, name), "check", "--connect")
    assert code == 1
    skip = next(line for line in out.splitlines() if " homepage_render " in line)
    assert skip.startswith("skip")
    assert "function:homepage_exporter.render_as_anon(text[])" in skip
    assert "run exporter/sql/exporter_role.sql" in skip


def test_triage_reaches_the_same_verdicts(pg: Cluster, runbook_cms: str) -> None:
    url = exporter_dsn(pg, runbook_cms)
    code, out = _cli(url, "triage", "--json")
    assert code == 0, out
    # The pending launch of spring_drop is 20 minutes overdue: P2, naming the section.
    pg.psql(
        "UPDATE section_schedules SET publish_at = now() - interval '20 minutes'"
        " WHERE status = 'pending'",
        database=runbook_cms,
    )
    code, out = _cli(url, "triage", "--json")
    data = json.loads(out)
    assert code == 2, data
    (lag,) = [f for f in data["findings"] if f["alert"] == "ScheduledPublishLag"]
    assert lag["rows"][0]["section_key"] == "spring_drop"
    assert data["failed_checks"] == {}


PARTITION = """
ALTER TABLE homepage_sections DROP CONSTRAINT homepage_sections_published_version_fk;
ALTER TABLE section_versions RENAME TO section_versions_unpartitioned;
CREATE TABLE section_versions (LIKE section_versions_unpartitioned INCLUDING DEFAULTS)
  PARTITION BY RANGE (created_at);
CREATE TABLE section_versions_old PARTITION OF section_versions
  FOR VALUES FROM ('2000-01-01') TO ('2026-01-01');
CREATE TABLE section_versions_new PARTITION OF section_versions
  FOR VALUES FROM ('2026-01-01') TO ('2100-01-01');
INSERT INTO section_versions SELECT * FROM section_versions_unpartitioned;
INSERT INTO section_versions (section_id, version_number, content, created_at)
SELECT hs.id, 1000 + g, '{}', now() - (g || ' days')::interval
FROM homepage_sections hs, generate_series(1, 400) g WHERE hs.locale = 'en';
DROP TABLE section_versions_unpartitioned CASCADE;
ALTER TABLE section_versions ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Published versions viewable by everyone" ON section_versions
  FOR SELECT USING (is_published);
GRANT SELECT ON section_versions TO anon, authenticated;
ANALYZE;
"""


def test_a_partitioned_version_table_is_one_table(pg: Cluster, db: str) -> None:
    """The runbook's advice for a large section_versions: its size and rows stay measured, and
    partitions the public cannot read directly raise no RLS alarm."""
    pg.psql_file(sql_file("seed.sql"), database=db)
    pg.psql(PARTITION, database=db)
    load_exporter_role(pg, db, EXPORTER_PASSWORD)
    rows = int(pg.psql("SELECT count(*) FROM section_versions", database=db))
    stats = Values(run_named(pg, db, "table_stats"))
    assert stats("homepage_cms_table_live_rows", table="section_versions") == rows
    assert (stats("homepage_cms_table_size_bytes", table="section_versions") or 0) > 0
    assert stats("homepage_cms_table_live_rows", table="section_versions_old") is None
    rls = Values(run_named(pg, db, "table_rls"))
    assert rls("homepage_cms_table_rls_enabled", table="section_versions") == 1
    assert {labels[0] for labels in rls.labels("homepage_cms_table_rls_enabled")} >= {
        "section_versions"
    }
    partitions = {"section_versions_old", "section_versions_new"}
    assert not partitions & {labels[0] for labels in rls.labels("homepage_cms_table_rls_enabled")}
    advisor = Values(run_named(pg, db, "security_advisor"))
    assert advisor("homepage_cms_security_findings", lint="rls_disabled_in_public") == 0
    # A partition anon may read directly is what the REST API exposes: then it counts.
    pg.psql("GRANT SELECT ON section_versions_new TO anon", database=db)
    rls = Values(run_named(pg, db, "table_rls"))
    assert rls("homepage_cms_table_rls_enabled", table="section_versions_new") == 0


def test_before_the_role_script_run_says_to_run_it(pg: Cluster) -> None:
    """The daemon's own log, not only check --connect: one warning per skipped check, naming
    what is missing and what to run."""
    name = _database(pg, role_script=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEPAGE_EXPORTER_")}
    env["DATABASE_URL"] = exporter_dsn(pg, name)
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    skipped = [line for line in result.stderr.splitlines() if "event=query_skipped" in line]
    render = next(line for line in skipped if "query=homepage_render" in line)
    assert "level=warning" in render
    assert 'fix="run exporter/sql/exporter_role.sql, or run it again"' in render
