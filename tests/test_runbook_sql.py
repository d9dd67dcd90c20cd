"""The runbook's own SQL, run as written: the failures docs/runbook-sql.md describes are real."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.demo.cluster import Cluster, ClusterError
from tests.queries_harness import values

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
            await asyncio.sleep(0.3)
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
