"""The runbook's own SQL, run as written: the failures docs/runbook-sql.md describes are real."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.demo.cluster import Cluster, ClusterError
from tests.conftest import CMS
from tests.queries_harness import WAITING_ON_A_LOCK, until_sessions, values

CLEANUP = """
BEGIN;
WITH versions_to_keep AS (
  SELECT DISTINCT id FROM (
    SELECT id FROM section_versions WHERE is_published = true
    UNION
    SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY section_id
                    ORDER BY version_number DESC) as rn FROM section_versions) ranked
    WHERE rn <= 50
  ) keep
),
versions_to_archive AS (
  SELECT id, section_id, version_number, content, created_at FROM section_versions
  WHERE id NOT IN (SELECT id FROM versions_to_keep) AND created_at < NOW() - INTERVAL '6 months'
)
INSERT INTO section_versions_archive SELECT * FROM versions_to_archive;
DELETE FROM section_versions WHERE id IN (SELECT id FROM versions_to_archive);
COMMIT;
"""


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        (
            "SELECT schemaname, tablename, indexname, idx_scan FROM pg_stat_user_indexes",
            'column "tablename" does not exist',
        ),
        (
            "SELECT tablename, n_dead_tup FROM pg_stat_user_tables WHERE tablename LIKE 'homepage%'",
            'column "tablename" does not exist',
        ),
        (CLEANUP, 'relation "versions_to_archive" does not exist'),
    ],
    ids=["index-usage", "table-bloat", "weekly-version-cleanup"],
)
def test_runbook_statements_that_fail_on_postgresql_15(
    pg: Cluster, db: str, sql: str, error: str
) -> None:
    with pytest.raises(ClusterError, match=error):
        pg.psql(sql, database=db)


def test_runbook_publish_lag_is_null_when_nothing_is_overdue(pg: Cluster, db: str) -> None:
    pg.psql(
        """
    INSERT INTO homepage_sections (id, section_key) VALUES ('00000000-0000-0000-0000-000000000001', 'a');
    INSERT INTO section_schedules (section_id, version_id, publish_at)
    VALUES ('00000000-0000-0000-0000-000000000001', gen_random_uuid(), now() - interval '4 minutes');
    """,
        database=db,
    )
    runbook = pg.psql(
        """
    SELECT COUNT(*), MAX(NOW() - publish_at) IS NULL FROM section_schedules
    WHERE status = 'pending' AND publish_at <= NOW() - INTERVAL '5 minutes'
    """,
        database=db,
    )
    assert runbook.strip() == "0|t"  # no number at all: an alert on it can never fire
    lag = values(pg, db, "scheduled_publishes")("homepage_scheduled_publish_lag_seconds")
    assert lag is not None
    assert 235 <= lag <= 250


def test_runbook_failed_publish_query_lag_is_always_null(pg: Cluster, db: str) -> None:
    """PARTITION BY id puts every row alone in its window: previous_status is never set."""
    pg.psql(
        """
    INSERT INTO homepage_sections (section_key, status) VALUES ('a', 'draft'), ('b', 'draft');
    UPDATE homepage_sections SET status = 'published', updated_at = now();
    UPDATE homepage_sections SET status = 'draft', updated_at = now();
    """,
        database=db,
    )
    rows = pg.psql(
        """
    SELECT section_key, LAG(status) OVER (PARTITION BY id ORDER BY updated_at) IS NULL
    FROM homepage_sections WHERE updated_at > NOW() - INTERVAL '1 hour' AND status = 'draft'
    ORDER BY section_key
    """,
        database=db,
    )
    assert rows.split() == ["a|t", "b|t"]


def test_runbook_lock_query_names_sessions_that_block_nothing(pg: Cluster, db: str) -> None:
    """The join condition never ties the waiting lock to its holder: every other session is
    reported as the blocker, so an idle bystander shows up."""
    import asyncio

    import asyncpg

    async def scenario() -> list[int]:
        holder = await asyncpg.connect(pg.url(database=db))
        waiter = await asyncpg.connect(pg.url(database=db))
        bystander = await asyncpg.connect(pg.url(database=db))
        try:
            await holder.execute("BEGIN; LOCK TABLE media_assets IN ACCESS EXCLUSIVE MODE")
            task = asyncio.create_task(waiter.execute("SELECT count(*) FROM media_assets"))
            await until_sessions(bystander, WAITING_ON_A_LOCK)
            rows = await bystander.fetch(
                """
                SELECT locking.pid AS locking_pid
                FROM pg_stat_activity locked
                JOIN pg_locks ON pg_locks.pid = locked.pid
                JOIN pg_stat_activity locking
                  ON pg_locks.granted = false AND locking.pid != locked.pid
                WHERE locked.pid = $1""",
                waiter.get_server_pid(),
            )
            await holder.execute("ROLLBACK")
            await task
            return [r["locking_pid"] for r in rows]
        finally:
            for conn in (holder, waiter, bystander):
                await conn.close()

    blamed = asyncio.run(scenario())
    assert len(blamed) > 1  # the true holder and unrelated sessions alike


def test_our_weekly_cleanup_script_archives_what_the_metric_counts(pg: Cluster, db: str) -> None:
    runbook = (Path(__file__).resolve().parent.parent / "docs" / "runbook.md").read_text()
    section = runbook.split("### Weekly version cleanup", 1)[1]
    script = section.split("```sql\n", 1)[1].split("```", 1)[0]
    pg.psql(
        """
    INSERT INTO homepage_sections (id, section_key) VALUES ('00000000-0000-0000-0000-00000000000a', 'a');
    INSERT INTO section_versions (section_id, version_number, created_at, is_published)
    SELECT '00000000-0000-0000-0000-00000000000a', g,
           CASE WHEN g <= 8 THEN now() - interval '7 months' ELSE now() END, g = 3
    FROM generate_series(1, 60) g;
    """,
        database=db,
    )
    before = values(pg, db, "version_archive")("homepage_section_versions_archivable")
    assert before == 7
    pg.psql_file_text(script, database=db)
    assert pg.psql("SELECT count(*) FROM section_versions_archive", database=db).strip() == "7"
    assert pg.psql("SELECT count(*) FROM section_versions", database=db).strip() == "53"
    assert values(pg, db, "version_archive")("homepage_section_versions_archivable") == 0


def test_dr_step_4_never_lists_the_publishing_function(pg: Cluster, db: str) -> None:
    """`LIKE '%section%' OR ... LIKE '%homepage%'` cannot match process_scheduled_publishes."""
    listed = pg.psql(
        "SELECT routine_name FROM information_schema.routines WHERE routine_schema = 'public'"
        " AND routine_name LIKE '%section%' OR routine_name LIKE '%homepage%'",
        database=db,
    ).split()
    assert "process_scheduled_publishes" not in listed
    assert "get_homepage_content" in listed


def test_p2_path_a_unschedule_raises_when_the_job_is_missing(pg: Cluster) -> None:
    if "pg_cron" not in pg.preload:
        pytest.skip("pg_cron is not available here")
    with pytest.raises(ClusterError, match="could not find valid entry for job"):
        pg.psql("SELECT cron.unschedule('no-such-job')", database=CMS)
    # What docs/runbook.md says instead: a no-op when the job is gone.
    pg.psql(
        "SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = 'no-such-job'", database=CMS
    )


def test_length_counts_characters_not_bytes(pg: Cluster, db: str) -> None:
    """Capacity 'Version Storage Growth': SUM(LENGTH(content::text)) as total_content_bytes."""
    pg.psql(
        "INSERT INTO homepage_sections (id, section_key) VALUES"
        " ('00000000-0000-0000-0000-000000000001', 'hero');"
        " INSERT INTO section_versions (section_id, version_number, content) VALUES"
        " ('00000000-0000-0000-0000-000000000001', 1, jsonb_build_object('t', repeat('ü€', 500)))",
        database=db,
    )
    chars, octets = pg.psql(
        "SELECT sum(length(content::text)), sum(octet_length(content::text)) FROM section_versions",
        database=db,
    ).split("|")
    assert int(octets) > 2 * int(chars)  # 'ü' is 2 bytes, '€' 3: the runbook undercounts by 2.5x


def test_the_kill_switch_undo_turns_on_what_was_off_on_purpose(pg: Cluster, db: str) -> None:
    pg.psql(
        "INSERT INTO homepage_sections (section_key, locale, status, is_active) VALUES"
        " ('hero', 'en', 'published', true), ('xmas-sale', 'en', 'published', false);"
        # the runbook's kill switch, then its "re-enable"
        " UPDATE homepage_sections SET is_active = false WHERE locale = 'en';"
        " UPDATE homepage_sections SET is_active = true WHERE locale = 'en' AND status = 'published';",
        database=db,
    )
    back_on = pg.psql(
        "SELECT is_active FROM homepage_sections WHERE section_key = 'xmas-sale'", database=db
    )
    assert back_on.strip() == "t"  # last year's sale is on the homepage again


def test_the_materialized_view_trigger_misses_the_kill_switch(pg: Cluster, db: str) -> None:
    """The cache refreshes on section_versions only: switching a section off leaves it cached."""
    pg.psql(
        """
    INSERT INTO homepage_sections (id, section_key, locale, status, is_active) VALUES
      ('00000000-0000-0000-0000-000000000001', 'hero', 'en', 'published', true);
    CREATE MATERIALIZED VIEW homepage_content_cache AS SELECT * FROM get_homepage_content('en');
    CREATE UNIQUE INDEX ON homepage_content_cache(section_id);
    CREATE OR REPLACE FUNCTION refresh_homepage_cache() RETURNS TRIGGER AS $$
    BEGIN REFRESH MATERIALIZED VIEW CONCURRENTLY homepage_content_cache; RETURN NEW; END;
    $$ LANGUAGE plpgsql;
    CREATE TRIGGER refresh_cache_on_publish AFTER INSERT OR UPDATE ON section_versions
    FOR EACH ROW WHEN (NEW.is_published = true) EXECUTE FUNCTION refresh_homepage_cache();
    UPDATE homepage_sections SET is_active = false;
    """,
        database=db,
    )
    assert pg.psql("SELECT count(*) FROM homepage_content_cache", database=db).strip() == "1"
    assert pg.psql("SELECT count(*) FROM get_homepage_content('en')", database=db).strip() == "0"


def test_p2_path_c_makes_a_security_definer_function_with_a_mutable_search_path(
    pg: Cluster, db: str
) -> None:
    """ALTER FUNCTION ... SECURITY DEFINER on a function without SET search_path: the advisor
    lint function_search_path_mutable catches it."""
    pg.psql(
        "ALTER FUNCTION process_scheduled_publishes() RESET search_path;"
        " ALTER FUNCTION process_scheduled_publishes() SECURITY DEFINER;",
        database=db,
    )
    v = values(pg, db, "security_advisor")
    assert v("homepage_cms_security_findings", lint="function_search_path_mutable") == 1
