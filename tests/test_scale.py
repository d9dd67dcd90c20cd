"""At 10x the runbook's capacity warnings, every default query finishes inside its timeout and
uses the index the runbook expects. Durations are reported by bench/, never asserted here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.config import Query, load_config
from exporter.demo.cluster import Cluster
from exporter.demo.database import create_cms_database
from exporter.scheduler import run_query
from exporter.settings import SHIPPED_QUERIES
from exporter.snapshot import Outcome
from exporter.targets import load_targets
from tests.harness import EXPORTER_PASSWORD
from tests.queries_harness import settings_for, shipped

pytestmark = pytest.mark.slow

SCALE_DB = "cms_scale10"
FIXTURE = Path(__file__).resolve().parent.parent / "bench" / "fixture.sql"


@pytest.fixture(scope="module")
def scaled(pg: Cluster) -> Iterator[str]:
    create_cms_database(pg, SCALE_DB, exporter_password=EXPORTER_PASSWORD, extensions=False)
    pg.psql_file(FIXTURE, database=SCALE_DB, scale="10")
    yield SCALE_DB
    pg.psql(f'DROP DATABASE "{SCALE_DB}" WITH (FORCE)')


def plan(pg: Cluster, database: str, sql: str) -> str:
    return pg.psql("EXPLAIN (COSTS OFF) " + sql, database=database)


def test_the_fixture_is_at_ten_times_the_capacity_warnings(pg: Cluster, scaled: str) -> None:
    per_locale = pg.psql(
        "SELECT max(n) FROM (SELECT count(*) n FROM homepage_sections GROUP BY locale) s",
        database=scaled,
    )
    assert int(per_locale) == 500  # warning: 50 sections per locale
    most = pg.psql(
        "SELECT max(n) FROM (SELECT count(*) n FROM section_versions GROUP BY section_id) s",
        database=scaled,
    )
    assert int(most) == 5000  # warning: 500 versions per section
    assert int(pg.psql("SELECT count(*) FROM media_assets", database=scaled)) == 1_000_000


def test_every_default_query_finishes_within_its_timeout(pg: Cluster, scaled: str) -> None:
    settings = settings_for(pg, scaled, locales="en,de,fr", media_storage_quota_bytes=10**12)

    async def run_each() -> list[Outcome]:
        (target,) = load_targets(settings)
        cap = settings.max_series_per_query
        async with target.open_database() as db:
            # One at a time: each query's time is its own, not a wait for the pool.
            queries = load_config(SHIPPED_QUERIES).enabled
            return [await run_query(db, q, target.params, cap) for q in queries]

    for outcome in asyncio.run(run_each()):
        assert outcome.error is None, (outcome.query.name, outcome.error)
        assert outcome.duration < outcome.query.timeout


def bound(query: Query, pg: Cluster, database: str) -> str:
    """The query's SQL with its parameters as literals, as the settings give them: what EXPLAIN
    can plan (the server plans an unnamed statement with its values too)."""
    params = settings_for(pg, database, locales="en,de,fr").query_params()
    sql = query.sql
    for index, name in reversed(list(enumerate(query.params, start=1))):
        value = params[name]
        literal = (
            "ARRAY[" + ", ".join(f"'{v}'" for v in value) + "]::text[]"
            if isinstance(value, list)
            else "NULL"
            if value is None
            else f"'{value}'"
        )
        sql = sql.replace(f"${index}", literal)
    return sql


def test_pending_schedules_are_read_through_their_partial_index(pg: Cluster, scaled: str) -> None:
    query = shipped("scheduled_publishes")
    assert "idx_section_schedules_pending" in plan(pg, scaled, bound(query, pg, scaled))


# The CMS tables that grow without bound, and the queries that read all of one by design:
# whole-table aggregates run hourly or every 6 hours (queries.yaml says why for each).
GROWING = ("section_versions", "section_versions_archive", "section_schedules", "media_assets")
FULL_SCANS_BY_DESIGN = {
    ("media", "media_assets"),  # total media bytes against the quota: hourly
    ("media_unused", "media_assets"),  # media no version references: every 6 hours
    ("media_unused", "section_versions"),
    ("media_unused", "section_versions_archive"),
    ("versions", "section_versions"),  # versions per section and growth: hourly
    ("version_archive", "section_versions"),  # the archive backlog: hourly
    ("schedule_statuses", "section_schedules"),  # the week's outcomes, every 5 minutes
}


def _seq_scans(node: dict[str, Any]) -> Iterator[str]:
    if node.get("Node Type") == "Seq Scan":
        yield str(node.get("Relation Name"))
    for child in node.get("Plans", []):
        yield from _seq_scans(child)


@pytest.mark.parametrize("name", [q.name for q in load_config(SHIPPED_QUERIES).enabled])
def test_no_query_scans_a_growing_table_unless_it_is_meant_to(
    pg: Cluster, scaled: str, name: str
) -> None:
    """At 10x the capacity warnings, the plan of every shipped statement reads the tables that
    grow without bound through an index, except the aggregates whose cost their interval bounds."""
    query = shipped(name)
    if query.requires or query.min_server_version:
        pytest.skip("needs an extension this database does not have")
    (explained,) = json.loads(
        pg.psql("EXPLAIN (FORMAT JSON) " + bound(query, pg, scaled), database=scaled)
    )
    scanned = set(_seq_scans(explained["Plan"]))
    unexpected = {t for t in scanned & set(GROWING) if (name, t) not in FULL_SCANS_BY_DESIGN}
    assert unexpected == set(), explained


def test_the_homepage_render_uses_the_render_index(pg: Cluster, scaled: str) -> None:
    # get_homepage_content is not inlined (SET search_path), so read the plan it executes.
    output = pg.psql_log(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
        " SET auto_explain.log_nested_statements = on; SET client_min_messages = log;"
        " SELECT count(*) FROM get_homepage_content('en');",
        database=scaled,
    )
    assert "idx_homepage_sections_render" in output


def test_version_history_lookups_use_the_history_index(pg: Cluster, scaled: str) -> None:
    lookup = (
        "SELECT version_number, created_at FROM section_versions"
        " WHERE section_id = (SELECT id FROM homepage_sections LIMIT 1)"
        " ORDER BY version_number DESC LIMIT 20"
    )
    assert "idx_section_versions_history" in plan(pg, scaled, lookup)


def test_triage_runs_every_check_within_its_deadline_at_ten_times(pg: Cluster, scaled: str) -> None:
    """At 10x the capacity warnings no check of `triage` runs out of its deadline (3 s each;
    the whole run's time is reported by bench/, not asserted here)."""
    from exporter.config import load_config
    from exporter.triage import triage

    settings = settings_for(pg, scaled, locales="en,de,fr")
    (target,) = load_targets(settings)
    report = asyncio.run(triage(target, load_config(settings.queries_file)))
    assert report.unreachable is None
    assert report.failed == {}
    assert report.exit_code in (0, 1, 2, 3)
