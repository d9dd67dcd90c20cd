"""At 10x the runbook's capacity warnings every default query finishes inside its timeout; at
10x and at 100x every shipped statement (the queries, and the triage drill-downs the 10x state
sets off) uses the index the runbook expects and scans no table that grows without bound, except
where its interval bounds the cost. 100x is the planner's view of the 10x rows (tests/scale.py:
the files and statistics of a state 10 times larger), so nothing is timed on it. Durations are
reported by bench/, never asserted here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from exporter.config import Query, load_config
from exporter.demo.cluster import Cluster
from exporter.runner import run_query
from exporter.settings import SHIPPED_QUERIES
from exporter.snapshot import Outcome
from exporter.targets import load_targets
from exporter.triage import Report, triage
from exporter.triage.drilldown import Context
from tests import scale
from tests.queries_harness import settings_for, shipped

pytestmark = pytest.mark.slow

SCALE_DB = "cms_scale10"
PLANNED_DB = "cms_scale100"


@pytest.fixture(scope="module")
def scaled(pg: Cluster) -> Iterator[str]:
    scale.load(pg, SCALE_DB, 10)
    yield SCALE_DB
    pg.psql(f'DROP DATABASE "{SCALE_DB}" WITH (FORCE)')


@pytest.fixture(scope="module")
def planned(pg: Cluster, scaled: str) -> Iterator[str]:
    """The 10x rows as the planner would see them at 100x."""
    scale.plan_as_if(pg, scaled, PLANNED_DB, 10)
    yield PLANNED_DB
    pg.psql(f'DROP DATABASE "{PLANNED_DB}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["10x", "100x"])
def at(request: pytest.FixtureRequest) -> str:
    """A database whose plans are those of the fixture at 10x, then at 100x."""
    return str(request.getfixturevalue("scaled" if request.param == "10x" else "planned"))


Statement = tuple[str, tuple[object, ...]]


@pytest.fixture(scope="module")
def triaged(pg: Cluster, scaled: str) -> tuple[Report, list[Statement]]:
    """triage on the 10x state, once, and every statement its drill-downs ran (with arguments)."""
    ran: list[Statement] = []
    rows = Context.rows

    async def recorded(self: Context, sql: str, *args: object) -> list[dict[str, Any]]:
        ran.append((sql, args))
        return await rows(self, sql, *args)

    settings = settings_for(pg, scaled, locales="en,de,fr")
    (target,) = load_targets(settings)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Context, "rows", recorded)
        report = asyncio.run(triage(target, load_config(settings.queries_file)))
    return report, ran


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
        async with target.database.open() as db:
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


def test_the_planner_sees_a_hundred_times_the_capacity_warnings(pg: Cluster, planned: str) -> None:
    def estimate(sql: str) -> float:
        (explained,) = json.loads(pg.psql("EXPLAIN (FORMAT JSON) " + sql, database=planned))
        return float(explained["Plan"]["Plan Rows"])

    assert estimate("SELECT * FROM homepage_sections WHERE locale = 'en'") == 5000  # warning 50
    assert estimate("SELECT * FROM media_assets") == 10_000_000  # warning 100,000
    # Warning: 500 versions per section. The busiest section, and the fixture's third of it on
    # average (the planner's estimate for a section it has no frequency for).
    busiest = pg.psql(
        "SELECT id FROM homepage_sections WHERE display_order = 1 AND locale = 'en'",
        database=planned,
    ).strip()
    assert estimate(f"SELECT * FROM section_versions WHERE section_id = '{busiest}'") >= 50_000
    average = estimate(
        "SELECT * FROM section_versions WHERE section_id = (SELECT id FROM homepage_sections"
        " WHERE display_order = 700 AND locale = 'de')"
    )
    assert 10_000 <= average <= 25_000, average
    # The indexes are the loaded ones, 100 times larger where the versions are.
    size = "SELECT pg_relation_size('idx_section_versions_history')"
    assert int(pg.psql(size, database=planned)) == 100 * int(pg.psql(size, database=SCALE_DB))


def test_pending_schedules_are_read_through_their_partial_index(pg: Cluster, at: str) -> None:
    query = shipped("scheduled_publishes")
    assert "idx_section_schedules_pending" in plan(pg, at, bound(query, pg, at))


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
    pg: Cluster, at: str, name: str
) -> None:
    """At 10x and 100x the capacity warnings, the plan of every shipped statement reads the
    tables that grow without bound through an index, except the aggregates whose cost their
    interval bounds."""
    query = shipped(name)
    if query.requires or query.min_server_version:
        pytest.skip("needs an extension this database does not have")
    (explained,) = json.loads(pg.psql("EXPLAIN (FORMAT JSON) " + bound(query, pg, at), database=at))
    scanned = set(_seq_scans(explained["Plan"]))
    unexpected = {t for t in scanned & set(GROWING) if (name, t) not in FULL_SCANS_BY_DESIGN}
    assert unexpected == set(), explained


def test_no_triage_drilldown_scans_a_growing_table(
    pg: Cluster, at: str, triaged: tuple[Report, list[Statement]]
) -> None:
    """The statements triage's drill-downs ran on the 10x state, with the same arguments,
    planned at 10x and at 100x: none reads a growing table in full."""
    _, ran = triaged
    assert ran, "the 10x state set off no drill-down: nothing to check"

    async def explain_each() -> list[tuple[str, set[str]]]:
        conn = await asyncpg.connect(pg.url(database=at))
        try:
            plans = []
            for sql, args in ran:
                (explained,) = json.loads(
                    await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
                )
                plans.append((sql, set(_seq_scans(explained["Plan"])) & set(GROWING)))
            return plans
        finally:
            await conn.close()

    scanning = [(sql, tables) for sql, tables in asyncio.run(explain_each()) if tables]
    assert scanning == []


def render_plan(pg: Cluster, database: str) -> str:
    # get_homepage_content is not inlined (SET search_path), so read the plan it executes.
    return pg.psql_log(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
        " SET auto_explain.log_nested_statements = on; SET client_min_messages = log;"
        " SELECT count(*) FROM get_homepage_content('en');",
        database=database,
    )


def test_the_homepage_render_uses_the_render_index(pg: Cluster, scaled: str) -> None:
    # At 100x the render returns 4,320 of 15,000 sections: reading the 430 pages of
    # homepage_sections in order is cheaper there, and sections do not grow without bound.
    assert "idx_homepage_sections_render" in render_plan(pg, scaled)


def test_the_homepage_render_reads_versions_through_their_primary_key(pg: Cluster, at: str) -> None:
    output = render_plan(pg, at)
    assert "section_versions_pkey" in output
    assert not [t for t in GROWING if f"Seq Scan on {t} " in output], output


def test_version_history_lookups_use_the_history_index(pg: Cluster, at: str) -> None:
    lookup = (
        "SELECT version_number, created_at FROM section_versions"
        " WHERE section_id = (SELECT id FROM homepage_sections LIMIT 1)"
        " ORDER BY version_number DESC LIMIT 20"
    )
    assert "idx_section_versions_history" in plan(pg, at, lookup)


def test_triage_runs_every_check_within_its_deadline_at_ten_times(
    triaged: tuple[Report, list[Statement]],
) -> None:
    """At 10x the capacity warnings no check of `triage` runs out of its deadline (3 s each;
    the whole run's time is reported by bench/, not asserted here)."""
    report, _ = triaged
    assert report.unreachable is None
    assert report.failed == {}
    assert report.exit_code in (0, 1, 2, 3)


def nested_plans(pg: Cluster, database: str, sql: str) -> list[dict[str, Any]]:
    """The plans of every statement `sql` runs, its functions' own included (auto_explain,
    its log lines sent to this client): what EXPLAIN of a function call does not show."""

    async def logged() -> list[str]:
        conn = await asyncpg.connect(pg.url(database=database))
        lines: list[str] = []
        conn.add_log_listener(lambda _conn, message: lines.append(message.message))
        try:
            for setting in (
                "LOAD 'auto_explain'",
                "SET auto_explain.log_min_duration = 0",
                "SET auto_explain.log_nested_statements = on",
                "SET auto_explain.log_format = json",
                "SET client_min_messages = log",
            ):
                await conn.execute(setting)
            await conn.fetch(sql)
            await asyncio.sleep(0)  # the listener runs on the loop: let it take the last line
        finally:
            await conn.close()
        return lines

    return [json.loads(line.split("plan:", 1)[1])["Plan"] for line in asyncio.run(logged())]


def test_what_is_live_is_counted_through_the_section_index(pg: Cluster, at: str) -> None:
    """homepage_render's `live_links()` builds its statement in the database (the link
    tables' section column comes from their foreign key): at 10x and 100x that statement
    reads section_products by section, through its index, never whole."""
    plans = nested_plans(pg, at, "SELECT * FROM homepage_exporter.live_links(ARRAY['en', 'de'])")
    built = [p for p in plans if "section_products" in json.dumps(p)]
    assert built, plans
    text = json.dumps(built)
    assert "section_products" not in set().union(*(_seq_scans(p) for p in built)), text
    assert "idx_section_products_section" in text
