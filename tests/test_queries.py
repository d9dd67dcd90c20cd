"""Every shipped query, proven by its answers on known database states, as the exporter role."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from exporter.config import load_config
from exporter.contract import Kind
from exporter.demo.cluster import Cluster, unprivileged_user
from exporter.demo.database import create_cms_database
from exporter.settings import SHIPPED_QUERIES
from exporter.snapshot import Requirement, Skipped
from tests.conftest import BARE, CMS, CMS_TABLES, SERVERS, Servers, exporter_dsn
from tests.harness import EXPORTER_PASSWORD, wait_for
from tests.queries_harness import (
    WAITING_ON_A_LOCK,
    Values,
    run_named,
    shipped,
    until_sessions,
    values,
)
from tests.test_user_schema import _database as user_schema_database


@pytest.fixture(
    scope="module",
    # The daily loop (-m "not slow") answers on the Supabase-like 15; the whole suite on all.
    params=[pytest.param(s, marks=[] if s == "system" else [pytest.mark.slow]) for s in SERVERS],
)
def pg(request: pytest.FixtureRequest, servers: Servers) -> Cluster:
    """Every answer test runs on each PostgreSQL major version available here."""
    return servers.get(request.param)


def needs(cluster: Cluster, extension: str) -> None:
    if extension not in cluster.preload:
        pytest.skip(f"{extension} is not available on PostgreSQL {cluster.major_version} here")


SECTIONS = """
INSERT INTO homepage_sections (section_key, locale, status, is_active, display_order) VALUES
  ('hero', 'en', 'published', true, 1), ('grid', 'en', 'published', true, 2),
  ('promo', 'en', 'published', true, 3), ('draft-one', 'en', 'draft', true, 4),
  ('hero', 'de', 'published', false, 1), ('grid', 'de', 'published', false, 2),
  ('hero', 'it', 'published', true, 1);
"""


def approx(value: float | None, expected: float, within: float) -> bool:
    return value is not None and abs(value - expected) <= within


# --- scheduled publishes ------------------------------------------------------------------------


def test_publish_lag_is_the_age_of_the_oldest_due_schedule(pg: Cluster, db: str) -> None:
    pg.psql(
        SECTIONS
        + """
    INSERT INTO section_schedules (section_id, version_id, publish_at, status)
    SELECT id, gen_random_uuid(), now() - a.age, a.status
    FROM homepage_sections, (VALUES (interval '20 minutes', 'pending'),
                                    (interval '7 minutes', 'pending'),
                                    (interval '2 minutes', 'pending'),
                                    (interval '-10 minutes', 'pending'),
                                    (interval '3 hours', 'completed'),
                                    (interval '1 day', 'failed')) AS a(age, status)
    WHERE section_key = 'hero' AND locale = 'en';
    """,
        database=db,
    )
    v = values(pg, db, "scheduled_publishes")
    assert approx(v("homepage_scheduled_publish_lag_seconds"), 1200, 5)
    assert approx(v("homepage_scheduled_publish_lag_minutes"), 20, 5 / 60)
    assert v("homepage_scheduled_publishes_overdue") == 2
    assert v("homepage_scheduled_publishes_due") == 3
    assert v("homepage_scheduled_publishes_pending") == 4


def test_publish_lag_is_zero_not_absent_when_nothing_is_due(pg: Cluster, db: str) -> None:
    pg.psql(
        SECTIONS
        + """
    INSERT INTO section_schedules (section_id, version_id, publish_at)
    SELECT id, gen_random_uuid(), now() + interval '1 hour' FROM homepage_sections LIMIT 1;
    """,
        database=db,
    )
    v = values(pg, db, "scheduled_publishes")
    assert v("homepage_scheduled_publish_lag_seconds") == 0
    assert v("homepage_scheduled_publishes_overdue") == 0
    assert v("homepage_scheduled_publishes_pending") == 1


def test_publish_failures_count_what_process_scheduled_publishes_records(
    pg: Cluster, db: str
) -> None:
    pg.psql(
        SECTIONS
        + """
    INSERT INTO section_schedules (section_id, version_id, publish_at, status, updated_at,
                                   processed_at)
    SELECT id, gen_random_uuid(), now() - interval '3 hours', 'failed', now() - interval '2 hours',
           now() - interval '90 minutes'
    FROM homepage_sections WHERE locale = 'en' AND section_key = 'hero';
    -- Due schedules: one valid, two pointing at versions of no section (they must fail).
    INSERT INTO section_versions (section_id, version_number, content)
    SELECT id, 1, '{}' FROM homepage_sections WHERE locale = 'en' AND section_key = 'grid';
    INSERT INTO section_schedules (section_id, version_id, publish_at)
    SELECT hs.id, sv.id, now() - interval '1 minute'
    FROM homepage_sections hs JOIN section_versions sv ON sv.section_id = hs.id;
    INSERT INTO section_schedules (section_id, version_id, publish_at)
    SELECT id, gen_random_uuid(), now() - interval '1 minute'
    FROM homepage_sections WHERE locale = 'en' AND section_key IN ('hero', 'promo');
    SELECT count(*) FROM process_scheduled_publishes();
    """,
        database=db,
    )
    v = values(pg, db, "publish_failures")
    assert v("homepage_publish_failed_schedules") == 3
    assert v("homepage_publish_failures_last_hour") == 2
    # The newest failure of the hour is named, its error cut short.
    (newest,) = v.labels("homepage_publish_failure_newest_info")
    schedule_id, section, locale, error = newest
    assert (section, locale) in {("hero", "en"), ("promo", "en")}
    assert error.startswith("version ")
    assert "does not belong to section" in error
    assert len(error) <= 80
    assert (
        pg.psql(f"SELECT status FROM section_schedules WHERE id = '{schedule_id}'", database=db)
        == "failed\n"
    )
    statuses = values(pg, db, "schedule_statuses")
    assert statuses("homepage_section_schedules", status="completed") == 1
    assert statuses("homepage_section_schedules", status="failed") == 3
    assert statuses("homepage_section_schedules", status="pending") == 0
    assert statuses("homepage_section_schedules", status="cancelled") == 0
    assert statuses("homepage_section_schedules_processed_7d", status="completed") == 1
    assert statuses("homepage_section_schedules_processed_7d", status="failed") == 3


def test_requeueing_old_failures_lowers_the_failed_gauge_not_the_hourly_count(
    pg: Cluster, db: str
) -> None:
    """docs/runbook.md's fix for failed schedules is to re-queue them: that is no new failure."""
    pg.psql(
        SECTIONS
        + """
    INSERT INTO section_schedules (section_id, version_id, publish_at, status, processed_at)
    SELECT id, gen_random_uuid(), now() - interval '1 day', 'failed', now() - interval '20 hours'
    FROM homepage_sections, generate_series(1, 40) WHERE section_key = 'hero' AND locale = 'en';
    """,
        database=db,
    )
    before = values(pg, db, "publish_failures")
    assert before("homepage_publish_failed_schedules") == 40
    assert before("homepage_publish_failures_last_hour") == 0
    assert before.labels("homepage_publish_failure_newest_info") == set()
    pg.psql(
        "UPDATE section_schedules SET status = 'pending', error_message = NULL,"
        " publish_at = now() + interval '1 hour', updated_at = now()"
        " WHERE id = (SELECT id FROM section_schedules LIMIT 1)",
        database=db,
    )
    after = values(pg, db, "publish_failures")
    assert after("homepage_publish_failed_schedules") == 39
    assert after("homepage_publish_failures_last_hour") == 0


def test_the_oldest_due_schedule_is_named(pg: Cluster, db: str) -> None:
    pg.psql(
        SECTIONS
        + """
    INSERT INTO section_schedules (id, section_id, version_id, publish_at)
    SELECT '00000000-0000-0000-0000-0000000000aa', id, gen_random_uuid(), now() - interval '20 minutes'
    FROM homepage_sections WHERE section_key = 'grid' AND locale = 'en';
    INSERT INTO section_schedules (section_id, version_id, publish_at)
    SELECT id, gen_random_uuid(), now() - interval '3 minutes'
    FROM homepage_sections WHERE section_key = 'hero' AND locale = 'it';
    """,
        database=db,
    )
    v = values(pg, db, "scheduled_publishes")
    assert v.labels("homepage_scheduled_publish_oldest_due_info") == {
        ("00000000-0000-0000-0000-0000000000aa", "grid", "en")
    }


# --- sections and the P1 triage -------------------------------------------------------------------


def test_sections_per_locale_with_a_kill_switched_and_an_empty_locale(pg: Cluster, db: str) -> None:
    pg.psql(SECTIONS, database=db)
    v = values(pg, db, "sections", locales="en,de,fr")
    assert v("homepage_sections_live", locale="en") == 3
    assert v("homepage_sections", locale="en") == 4
    # The kill switch: sections exist, none is live.
    assert v("homepage_sections_live", locale="de") == 0
    assert v("homepage_sections_inactive", locale="de") == 2
    # A configured locale with no rows reads 0 rather than vanishing.
    assert v("homepage_sections_live", locale="fr") == 0
    # A locale in the data but not configured is still reported, as not expected to be live.
    assert v("homepage_sections_live", locale="it") == 1
    assert v("homepage_locale_expected_live", locale="it") == 0
    assert v("homepage_locale_expected_live", locale="fr") == 1
    assert v("homepage_locale_expected_live", locale="en") == 1


# Every live section with its own published version (publish_section_version, as the CMS
# publishes), then one wrong pointer of each kind the runbook's "Verify data integrity" join
# shows, each in a locale of its own; drafts, switched-off sections and history stay as a real
# CMS has them.
LIVE_VERSIONS = (
    SECTIONS
    + """
INSERT INTO homepage_sections (section_key, locale, status, is_active, display_order) VALUES
  ('hero', 'fr', 'published', true, 1), ('hero', 'es', 'published', true, 1),
  ('hero', 'ja', 'published', true, 1), ('grid', 'ja', 'published', true, 2);
INSERT INTO section_versions (section_id, version_number, content)
SELECT id, n, jsonb_build_object('title', locale || ' ' || section_key || ' v' || n)
FROM homepage_sections, generate_series(1, 3) AS n;
SELECT publish_section_version(id, (SELECT v.id FROM section_versions v
                                    WHERE v.section_id = hs.id AND v.version_number = 2))
FROM homepage_sections hs WHERE hs.status = 'published';
UPDATE homepage_sections SET is_active = false WHERE locale = 'de';
-- fr: the pointer cleared; es: moved to its newest draft; it: the English hero's version.
UPDATE homepage_sections SET published_version_id = NULL WHERE locale = 'fr';
UPDATE homepage_sections hs SET published_version_id = v.id FROM section_versions v
WHERE hs.locale = 'es' AND v.section_id = hs.id AND v.version_number = 3;
UPDATE homepage_sections d SET published_version_id = f.published_version_id
FROM homepage_sections f
WHERE d.locale = 'it' AND d.section_key = 'hero' AND f.locale = 'en' AND f.section_key = 'hero';
"""
)
PROBLEMS = ("no_version", "missing_version", "unpublished_version", "another_sections_version")


def test_live_versions_names_each_wrong_pointer_by_locale(pg: Cluster, db: str) -> None:
    pg.psql(LIVE_VERSIONS, database=db)
    v = values(pg, db, "live_versions", locales="en,de,fr,es,it,ja,pt")
    found = {
        locale: {p: v("homepage_live_sections_version_wrong", locale=locale, problem=p)
                 for p in PROBLEMS if v("homepage_live_sections_version_wrong", locale=locale, problem=p)}
        for locale in ("en", "de", "fr", "es", "it", "ja", "pt")
    }  # fmt: skip
    assert found == {
        "en": {},  # three live sections, each showing its own published version; a draft
        "de": {},  # switched off: not live, whatever it points at
        "fr": {"no_version": 1},
        "es": {"unpublished_version": 1},
        "it": {"another_sections_version": 1},
        "ja": {},
        "pt": {},  # configured, no rows: every problem reads 0, none vanishes
    }
    assert v("homepage_live_sections_version_wrong", locale="pt", problem="no_version") == 0


def test_a_dangling_pointer_is_a_missing_version(pg: Cluster, db: str) -> None:
    """A CMS without the foreign key (the runbook shows none) can point at a deleted version."""
    pg.psql(
        LIVE_VERSIONS
        + "ALTER TABLE homepage_sections DROP CONSTRAINT homepage_sections_published_version_fk;"
        "UPDATE homepage_sections SET published_version_id = gen_random_uuid()"
        " WHERE locale = 'ja' AND section_key = 'grid';",
        database=db,
    )
    v = values(pg, db, "live_versions", locales="ja")
    assert v("homepage_live_sections_version_wrong", locale="ja", problem="missing_version") == 1
    assert v("homepage_live_sections_version_wrong", locale="ja", problem="no_version") == 0


def test_anon_sees_published_active_sections_only(pg: Cluster, db: str) -> None:
    pg.psql(SECTIONS, database=db)
    v = values(pg, db, "anon_visibility", locales="en,de")
    assert v("homepage_sections_visible_to_anon", locale="en") == 3
    assert v("homepage_sections_visible_to_anon", locale="de") == 0


def test_a_policy_that_hides_the_homepage_from_anon_reads_zero(pg: Cluster, db: str) -> None:
    pg.psql(
        SECTIONS
        + """
    DROP POLICY "Published sections viewable by everyone" ON homepage_sections;
    CREATE POLICY "Published sections viewable by everyone" ON homepage_sections
      FOR SELECT TO authenticated USING (status = 'published' AND is_active = true);
    """,
        database=db,
    )
    assert values(pg, db, "anon_visibility")("homepage_sections_visible_to_anon", locale="en") == 0
    # The exporter's own view is unchanged: the sections are live, the public cannot see them.
    assert values(pg, db, "sections")("homepage_sections_live", locale="en") == 3
    render = values(pg, db, "homepage_render")
    assert render("homepage_render_sections", locale="en", role="anon") == 0


def test_render_times_each_locale_separately(pg: Cluster, db: str) -> None:
    pg.psql(
        SECTIONS
        + """
    DROP FUNCTION get_homepage_content(text);
    CREATE FUNCTION get_homepage_content(p_locale text)
    RETURNS TABLE (section_id uuid, section_key text)
    LANGUAGE plpgsql STABLE AS $$
    BEGIN
      PERFORM pg_sleep(CASE WHEN p_locale = 'de' THEN 0.4 ELSE 0 END);
      RETURN QUERY SELECT hs.id, hs.section_key FROM homepage_sections hs
        WHERE hs.locale = p_locale AND hs.is_active AND hs.status = 'published';
    END
    $$;
    GRANT EXECUTE ON FUNCTION get_homepage_content(text) TO anon, authenticated;
    """,
        database=db,
    )
    v = values(pg, db, "homepage_render", locales="de,en,it")
    de = v("homepage_render_duration_seconds", locale="de", role="anon")
    en = v("homepage_render_duration_seconds", locale="en", role="anon")
    assert de is not None
    assert 0.4 <= de < 0.8
    assert en is not None
    assert 0 <= en < 0.1
    assert v("homepage_render_sections", locale="en", role="anon") == 3
    assert v("homepage_render_sections", locale="de", role="anon") == 0  # kill-switched
    assert v("homepage_render_sections", locale="it", role="anon") == 1


def test_render_time_covers_every_column_of_an_inlinable_function(pg: Cluster, db: str) -> None:
    """A plain LANGUAGE sql STABLE function is inlined: a count(*) over it skips the columns it
    does not need. Here one column costs 0.1 s a row; the probe must pay for it as the API does."""
    pg.psql(
        SECTIONS
        + """
    CREATE FUNCTION slow_block(p_id uuid) RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
    BEGIN PERFORM pg_sleep(0.1); RETURN jsonb_build_object('id', p_id); END $$;
    GRANT EXECUTE ON FUNCTION slow_block(uuid) TO anon, authenticated;
    DROP FUNCTION get_homepage_content(text);
    CREATE FUNCTION get_homepage_content(p_locale text)
    RETURNS TABLE (section_id uuid, section_key text, content jsonb)
    LANGUAGE sql STABLE AS $$
      SELECT hs.id, hs.section_key, public.slow_block(hs.id) FROM public.homepage_sections hs
      WHERE hs.locale = p_locale AND hs.is_active AND hs.status = 'published'
    $$;
    GRANT EXECUTE ON FUNCTION get_homepage_content(text) TO anon, authenticated;
    """,
        database=db,
    )
    # What the old measurement saw: count(*) over the inlined function never calls slow_block.
    counted = pg.psql(
        "SELECT extract(epoch FROM clock_timestamp() - s) FROM (SELECT clock_timestamp() AS s) t,"
        " LATERAL (SELECT count(*) FROM get_homepage_content('en')) c",
        database=db,
    )
    assert float(counted) < 0.1
    v = values(pg, db, "homepage_render", locales="en")
    render = v("homepage_render_duration_seconds", locale="en", role="anon")
    assert render is not None
    assert 0.3 <= render < 1.0  # three live sections, 0.1 s each
    assert (v("homepage_render_bytes", locale="en", role="anon") or 0) > 100


def test_a_missing_render_function_fails_the_query(pg: Cluster, db: str) -> None:
    pg.psql("DROP FUNCTION get_homepage_content(text)", database=db)
    outcome = run_named(pg, db, "homepage_render")
    assert outcome.error is not None
    assert outcome.error.reason == "sql"
    assert "get_homepage_content" in outcome.error.message


# Products and categories: two of each per section, on every section (live or not).
CATALOG = """
INSERT INTO section_products (section_id, product_id, display_order)
SELECT id, gen_random_uuid(), g FROM homepage_sections, generate_series(1, 2) g;
INSERT INTO section_categories (section_id, category_id, display_order)
SELECT id, gen_random_uuid(), g FROM homepage_sections, generate_series(1, 2) g;
"""


def test_the_public_receives_the_products_and_categories_of_the_live_sections(
    pg: Cluster, db: str
) -> None:
    pg.psql(SECTIONS + CATALOG, database=db)
    v = values(pg, db, "homepage_render", locales="en,de")
    for role in ("anon", "authenticated"):
        # en: three live sections (the draft's products are not live, nor received).
        assert v("homepage_render_products", locale="en", role=role) == 6
        assert v("homepage_render_categories", locale="en", role=role) == 6
        assert v("homepage_render_products_missing", locale="en", role=role) == 0
        assert v("homepage_render_categories_missing", locale="en", role=role) == 0
        # de: kill-switched, nothing live and nothing received is nothing missing.
        assert v("homepage_render_products", locale="de", role=role) == 0
        assert v("homepage_render_products_missing", locale="de", role=role) == 0


def test_a_policy_that_hides_the_products_from_anon_counts_them_missing(
    pg: Cluster, db: str
) -> None:
    pg.psql(
        SECTIONS
        + CATALOG
        + """
    ALTER POLICY "Section products viewable by everyone" ON section_products TO authenticated;
    DROP POLICY "Section categories viewable by everyone" ON section_categories;
    CREATE POLICY "Section categories viewable by everyone" ON section_categories
      FOR SELECT USING (display_order = 1);
    """,
        database=db,
    )
    v = values(pg, db, "homepage_render", locales="en")
    assert v("homepage_render_sections", locale="en", role="anon") == 3  # the sections arrive
    assert v("homepage_render_products", locale="en", role="anon") == 0
    assert v("homepage_render_products_missing", locale="en", role="anon") == 6
    assert v("homepage_render_products_missing", locale="en", role="authenticated") == 0
    # A policy narrowed by its USING clause: one category of two per section, for both roles.
    for role in ("anon", "authenticated"):
        assert v("homepage_render_categories", locale="en", role=role) == 3
        assert v("homepage_render_categories_missing", locale="en", role=role) == 3


def test_a_cms_naming_the_section_otherwise_has_its_hidden_products_counted(pg: Cluster) -> None:
    """tests/fixtures/runbook_only names the catalog's section column homepage_section_id: its
    foreign key to homepage_sections says which column counts, so hidden products still show."""
    name = user_schema_database(pg)
    pg.psql(
        'ALTER POLICY "Products of visible sections readable by everyone" ON section_products'
        " TO authenticated",
        database=name,
    )
    v = values(pg, name, "homepage_render", locales="en")
    assert v("homepage_render_products", locale="en", role="authenticated") == 5
    assert v("homepage_render_products_missing", locale="en", role="authenticated") == 0
    assert v("homepage_render_products", locale="en", role="anon") == 0
    assert v("homepage_render_products_missing", locale="en", role="anon") == 5


def test_a_render_function_without_products_compares_nothing(pg: Cluster, db: str) -> None:
    """A CMS whose function returns no `products`/`categories` column: no count, so no alert,
    rather than every live product counted missing."""
    pg.psql(
        SECTIONS
        + CATALOG
        + """
    DROP FUNCTION get_homepage_content(text);
    CREATE FUNCTION get_homepage_content(p_locale text)
    RETURNS TABLE (section_id uuid, section_key text, content jsonb)
    LANGUAGE sql STABLE AS $$
      SELECT hs.id, hs.section_key, '{}'::jsonb FROM public.homepage_sections hs
      WHERE hs.locale = p_locale AND hs.is_active AND hs.status = 'published'
    $$;
    GRANT EXECUTE ON FUNCTION get_homepage_content(text) TO anon, authenticated;
    """,
        database=db,
    )
    v = values(pg, db, "homepage_render", locales="en")
    assert v("homepage_render_sections", locale="en", role="anon") == 3
    assert v("homepage_render_products", locale="en", role="anon") is None
    assert v("homepage_render_products_missing", locale="en", role="anon") is None
    assert v("homepage_render_categories_missing", locale="en", role="anon") is None


# --- row level security -----------------------------------------------------------------------------


def test_rls_is_reported_for_every_cms_table_and_only_those(pg: Cluster, db: str) -> None:
    pg.psql(
        """
    ALTER TABLE section_products DISABLE ROW LEVEL SECURITY;
    CREATE TABLE orders (id int);
    CREATE SCHEMA other; CREATE TABLE other.homepage_copy (id int);
    """,
        database=db,
    )
    v = values(pg, db, "table_rls")
    assert v("homepage_cms_table_rls_enabled", table="section_products") == 0
    for table in set(CMS_TABLES) - {"section_products"}:
        assert v("homepage_cms_table_rls_enabled", table=table) == 1, table
    assert {t for (t,) in v.labels("homepage_cms_table_rls_enabled")} == set(CMS_TABLES)
    assert v("homepage_cms_table_policies", table="homepage_sections") == 2


def test_the_runbooks_rls_check_is_wrong_and_ours_is_not(pg: Cluster, db: str) -> None:
    """Runbook health check 5: AND binds tighter than OR, so it lists RLS-enabled homepage
    tables as violations and never looks at media_assets."""
    pg.psql("ALTER TABLE media_assets DISABLE ROW LEVEL SECURITY", database=db)
    runbook = pg.psql(
        """
    SELECT tablename FROM pg_tables
    WHERE tablename LIKE 'homepage%' OR tablename LIKE 'section%' AND rowsecurity = false;
    """,
        database=db,
    ).split()
    assert runbook == ["homepage_sections"]  # RLS is on there: a false alarm; media_assets missed
    assert values(pg, db, "table_rls")("homepage_cms_table_rls_enabled", table="media_assets") == 0


# --- sizes, bloat, statistics, indexes, functions ------------------------------------------------------


def test_dead_tuple_ratio_and_statistics_times(pg: Cluster, db: str) -> None:
    pg.psql(
        """
    ALTER TABLE media_assets SET (autovacuum_enabled = false);
    INSERT INTO media_assets (file_path, file_size) SELECT 'p' || g, g FROM generate_series(1, 100) g;
    DELETE FROM media_assets WHERE file_size <= 25;
    """,
        database=db,
    )

    def settled() -> bool:
        v = values(pg, db, "table_stats")
        return v("homepage_cms_table_dead_tuple_ratio", table="media_assets") == 0.25

    wait_for(settled, 10, "statistics to reach the exporter", step=0.5)
    v = values(pg, db, "table_stats")
    assert v("homepage_cms_table_live_rows", table="media_assets") == 75
    assert v("homepage_cms_table_dead_rows", table="media_assets") == 25
    assert v("homepage_cms_table_rows_deleted_total", table="media_assets") == 25
    assert v("homepage_cms_table_last_analyzed_timestamp_seconds", table="media_assets") == 0
    size = v("homepage_cms_table_size_bytes", table="media_assets")
    assert size is not None
    assert size > 8192
    now = float(pg.psql("SELECT extract(epoch FROM now())"))
    pg.psql("ANALYZE media_assets", database=db)

    def analyzed() -> bool:
        when = values(pg, db, "table_stats")(
            "homepage_cms_table_last_analyzed_timestamp_seconds", table="media_assets"
        )
        return approx(when, now, 10)

    wait_for(analyzed, 10, "last_analyze to be reported", step=0.5)


def test_expected_indexes_missing_or_invalid(pg: Cluster, db: str) -> None:
    pg.psql(
        """
    DROP INDEX idx_section_schedules_pending;
    INSERT INTO media_assets (file_path, file_size) VALUES ('a', 1), ('b', 1);
    """,
        database=db,
    )
    # A failed CREATE INDEX CONCURRENTLY leaves an invalid index behind.
    with pytest.raises(Exception, match="could not create unique index"):
        pg.psql(
            "CREATE UNIQUE INDEX CONCURRENTLY idx_media_size ON media_assets (file_size)",
            database=db,
        )
    v = values(pg, db, "index_usage")
    assert (
        v(
            "homepage_cms_index_present",
            index="idx_section_schedules_pending",
            table="section_schedules",
        )
        == 0
    )
    assert (
        v(
            "homepage_cms_index_present",
            index="idx_homepage_sections_render",
            table="homepage_sections",
        )
        == 1
    )
    assert v("homepage_cms_index_valid", index="idx_media_size", table="media_assets") == 0
    assert (
        v(
            "homepage_cms_index_valid",
            index="idx_section_versions_history",
            table="section_versions",
        )
        == 1
    )
    assert (
        v(
            "homepage_cms_index_scans_total",
            index="idx_section_schedules_pending",
            table="section_schedules",
        )
        is None
    )


def test_index_scans_count_homepage_renders(pg: Cluster, db: str) -> None:
    pg.psql(
        SECTIONS + "SET enable_seqscan = off; SELECT count(*) FROM get_homepage_content('en');"
        "SELECT pg_stat_force_next_flush();",
        database=db,
    )

    def counted() -> bool:
        scans = values(pg, db, "index_usage")(
            "homepage_cms_index_scans_total",
            index="idx_homepage_sections_render",
            table="homepage_sections",
        )
        return scans is not None and scans >= 1

    wait_for(counted, 10, "the render index scan to be counted", step=0.5)


def test_functions_present_and_security_definer(pg: Cluster, db: str) -> None:
    pg.psql(
        """
    DROP FUNCTION revert_section_to_version(uuid, uuid);
    ALTER FUNCTION process_scheduled_publishes() SECURITY INVOKER;
    """,
        database=db,
    )
    v = values(pg, db, "functions")
    assert v("homepage_cms_function_present", function="revert_section_to_version") == 0
    assert v("homepage_cms_function_present", function="get_homepage_content") == 1
    assert v("homepage_cms_function_security_definer", function="process_scheduled_publishes") == 0
    assert v("homepage_cms_function_security_definer", function="publish_section_version") == 1


def test_the_runbooks_function_check_cannot_see_functions_as_the_exporter(
    pg: Cluster, db: str
) -> None:
    """information_schema.routines shows only routines the role owns or may execute, and a
    SECURITY DEFINER function should not be executable by PUBLIC."""
    pg.psql("REVOKE EXECUTE ON FUNCTION process_scheduled_publishes() FROM PUBLIC", database=db)
    seen = pg.psql(
        "SET ROLE homepage_exporter; SELECT count(*) FROM information_schema.routines"
        " WHERE routine_name = 'process_scheduled_publishes'",
        database=db,
    )
    assert seen.strip() == "0"
    assert (
        values(pg, db, "functions")(
            "homepage_cms_function_present", function="process_scheduled_publishes"
        )
        == 1
    )


# --- media --------------------------------------------------------------------------------------------


MEDIA = """
INSERT INTO homepage_sections (id, section_key, locale) VALUES
  ('00000000-0000-0000-0000-000000000001', 'hero', 'en');
INSERT INTO section_versions (section_id, version_number, content) VALUES
  ('00000000-0000-0000-0000-000000000001', 1,
   '{"image": "homepage/hero/1.webp",
     "slides": [{"bg": "https://x.supabase.co/storage/v1/object/public/media/homepage/hero/bg.webp?v=2"}],
     "note": "mentions homepage/other.webp in prose"}');
INSERT INTO media_assets (file_path, file_size, created_at) VALUES
  ('homepage/hero/1.webp', 100, now() - interval '200 days'),
  ('homepage/hero/bg.webp', 200, now() - interval '200 days'),
  ('homepage/old-unused.webp', 300, now() - interval '91 days'),
  ('homepage/new-unused.webp', 400, now() - interval '10 days');
"""


def test_media_referenced_in_any_form_is_never_unused(pg: Cluster, db: str) -> None:
    """Every way a CMS writes a file's address; one old file nobody references."""
    pg.psql(
        """
    INSERT INTO homepage_sections (id, section_key, locale) VALUES
      ('00000000-0000-0000-0000-000000000001', 'hero', 'en');
    INSERT INTO section_versions (section_id, version_number, content) VALUES
      ('00000000-0000-0000-0000-000000000001', 1, jsonb_build_object(
         'plain', 'homepage/plain.webp',
         'slash', '/homepage/slash.webp',
         'object', 'https://x.supabase.co/storage/v1/object/public/media/homepage/object.webp',
         'render', 'https://x.supabase.co/storage/v1/render/image/public/media/homepage/render.webp?width=800&quality=75',
         'signed', 'https://x.supabase.co/storage/v1/object/sign/media/homepage/signed.webp?token=abc',
         'html', '<p>Sale!</p><img src="https://cdn.example.com/homepage/html.webp" alt="x"><img src=''/homepage/html2.webp''>',
         'css', 'background-image: url(homepage/css.webp), url("homepage/css2.webp")',
         'srcset', '<img srcset="homepage/small.webp 480w, homepage/large.webp 1080w">',
         'nested', jsonb_build_object('deep', jsonb_build_array('x', 'homepage/deep.webp'))));
    INSERT INTO section_versions_archive (id, section_id, version_number, content, created_at)
    VALUES (gen_random_uuid(), '00000000-0000-0000-0000-000000000001', 0,
            '{"image": "homepage/archived.webp"}', now() - interval '1 year');
    INSERT INTO media_assets (file_path, file_size, created_at)
    SELECT path, 10, now() - interval '200 days'
    FROM unnest(ARRAY['homepage/plain.webp', '/homepage/slash.webp', 'homepage/object.webp',
                      'homepage/render.webp', 'homepage/signed.webp', 'homepage/html.webp',
                      'homepage/html2.webp', 'homepage/css.webp', 'homepage/css2.webp',
                      'homepage/small.webp', 'homepage/large.webp', 'homepage/deep.webp',
                      'homepage/archived.webp', 'homepage/orphan.webp']) AS path;
    """,
        database=db,
    )
    v = values(pg, db, "media_unused")
    assert v("homepage_media_unused_assets") == 1  # homepage/orphan.webp alone
    assert v("homepage_media_unused_bytes") == 10


def test_media_totals_against_a_quota(pg: Cluster, db: str) -> None:
    pg.psql(MEDIA, database=db)
    v = values(pg, db, "media", media_storage_quota_bytes=4000)
    assert v("homepage_media_assets") == 4
    assert v("homepage_media_storage_bytes") == 1000
    assert v("homepage_media_storage_percent") == 25.0
    assert v("homepage_media_storage_quota_bytes") == 4000


def test_media_percent_is_absent_without_a_quota(pg: Cluster, db: str) -> None:
    pg.psql(MEDIA, database=db)
    v = values(pg, db, "media")
    assert v("homepage_media_storage_bytes") == 1000
    assert v("homepage_media_storage_percent") is None
    assert v("homepage_media_storage_quota_bytes") is None


def test_unused_media_older_than_90_days(pg: Cluster, db: str) -> None:
    pg.psql(MEDIA, database=db)
    v = values(pg, db, "media_unused")
    assert v("homepage_media_unused_assets") == 1
    assert v("homepage_media_unused_bytes") == 300
    # The runbook's LIKE scan agrees on this state (it is only slower, quadratically).
    runbook = pg.psql(
        """
    SELECT ma.file_path FROM media_assets ma
    WHERE NOT EXISTS (SELECT 1 FROM section_versions sv
                      WHERE sv.content::text LIKE '%' || ma.file_path || '%')
      AND ma.created_at < NOW() - INTERVAL '90 days';
    """,
        database=db,
    ).split()
    assert runbook == ["homepage/old-unused.webp"]


# --- versions ---------------------------------------------------------------------------------------


def test_versions_per_section_and_archive_eligibility(pg: Cluster, db: str) -> None:
    pg.psql(
        """
    INSERT INTO homepage_sections (id, section_key, locale) VALUES
      ('00000000-0000-0000-0000-00000000000a', 'a', 'en'),
      ('00000000-0000-0000-0000-00000000000b', 'b', 'en');
    -- a: 55 versions, the oldest 5 from 7 months ago (one of them published).
    INSERT INTO section_versions (section_id, version_number, created_at, is_published)
    SELECT '00000000-0000-0000-0000-00000000000a', g,
           CASE WHEN g <= 5 THEN now() - interval '7 months' ELSE now() END, g = 2
    FROM generate_series(1, 55) g;
    -- b: 10 old versions, all within its newest 50.
    INSERT INTO section_versions (section_id, version_number, created_at)
    SELECT '00000000-0000-0000-0000-00000000000b', g, now() - interval '1 year'
    FROM generate_series(1, 10) g;
    """,
        database=db,
    )
    v = values(pg, db, "versions")
    assert v("homepage_section_versions") == 65
    assert v("homepage_section_versions_per_section_max") == 55
    a = values(pg, db, "version_archive")
    assert a("homepage_section_versions_archivable") == 4
    # 7 months old, pushed past the newest 50 today: archivable since today, not since
    # a month ago. The weekly job is not late.
    backlog = a("homepage_section_versions_archive_backlog_seconds")
    assert backlog is not None
    assert backlog < 60


def test_archive_backlog_counts_from_when_a_version_became_archivable(pg: Cluster, db: str) -> None:
    pg.psql(
        """
    INSERT INTO homepage_sections (id, section_key, locale) VALUES
      ('00000000-0000-0000-0000-00000000000a', 'a', 'en');
    -- 51 versions; the newest 50 were all made 20 days ago, the first one 8 months ago:
    -- archivable since 20 days, so two weekly runs missed it.
    INSERT INTO section_versions (section_id, version_number, created_at)
    SELECT '00000000-0000-0000-0000-00000000000a', g,
           CASE WHEN g = 1 THEN now() - interval '8 months' ELSE now() - interval '20 days' END
    FROM generate_series(1, 51) g;
    """,
        database=db,
    )
    a = values(pg, db, "version_archive")
    assert a("homepage_section_versions_archivable") == 1
    assert approx(a("homepage_section_versions_archive_backlog_seconds"), 20 * 86400, 5)


def test_empty_tables_read_zero(pg: Cluster, db: str) -> None:
    assert values(pg, db, "versions")("homepage_section_versions_per_section_max") == 0
    assert values(pg, db, "version_archive")("homepage_section_versions_archivable") == 0
    assert values(pg, db, "media_unused")("homepage_media_unused_assets") == 0


# --- pg_cron ------------------------------------------------------------------------------------------


def test_cron_job_last_finished_run_and_a_missing_job(pg: Cluster) -> None:
    needs(pg, "pg_cron")
    # Park the real job's schedule so pg_cron cannot add runs while we look.
    pg.psql(
        """
    SELECT cron.alter_job(jobid, schedule := '0 0 1 1 *') FROM cron.job
    WHERE jobname = 'process-scheduled-publishes';
    DELETE FROM cron.job_run_details;
    INSERT INTO cron.job_run_details (jobid, job_pid, database, username, command, status,
                                      return_message, start_time, end_time)
    SELECT jobid, 1, 'cms', 'postgres', command, r.status, r.msg,
           now() - r.ago, now() - r.ago + r.took
    FROM cron.job, (VALUES ('succeeded', 'SELECT 1', interval '15 minutes', interval '1 second'),
                           ('failed', 'ERROR: boom', interval '10 minutes', interval '7 seconds'),
                           ('running', NULL, interval '1 minute', NULL)) AS r(status, msg, ago, took)
    WHERE jobname = 'process-scheduled-publishes';
    UPDATE cron.job_run_details SET end_time = NULL WHERE status = 'running';
    """,
        database=CMS,
    )
    try:
        v = values(pg, CMS, "cron_jobs")
        job = {"jobname": "process-scheduled-publishes", "username": "postgres"}
        assert v("homepage_cron_job_active", **job) == 1
        assert v("homepage_cron_job_last_run_success", **job) == 0
        assert approx(v("homepage_cron_job_last_run_duration_seconds", **job), 7, 0.001)
        assert v("homepage_cron_job_failed_runs", **job) == 1
        assert v("homepage_cron_job_failed_runs_last_hour", **job) == 1
        assert v.labels("homepage_cron_job_last_run_failure_info") == {
            ("process-scheduled-publishes", "postgres", "ERROR: boom")
        }
        assert v("homepage_cron_job_running", **job) == 1
        pg.psql("SELECT cron.unschedule('process-scheduled-publishes')", database=CMS)
        gone = values(pg, CMS, "cron_jobs")
        assert gone("homepage_cron_job_active", **job) == 0
        assert gone("homepage_cron_job_last_run_success", **job) is None
    finally:
        pg.psql(
            """
        SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = 'process-scheduled-publishes';
        SELECT cron.schedule('process-scheduled-publishes', '*/5 * * * *',
                             $$SELECT process_scheduled_publishes()$$);
        DELETE FROM cron.job_run_details;
        """,
            database=CMS,
        )


ANALYTICS_JOBS = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'analytics') THEN CREATE ROLE analytics; END IF;
END $$;
SELECT cron.alter_job(jobid, schedule := '0 0 1 1 *') FROM cron.job
WHERE jobname = 'process-scheduled-publishes';
-- Another team's jobs: one named like ours, one named like another of ours (pg_cron allows
-- both: a job is unique by name *and* owner).
SELECT cron.schedule('nightly-report', '0 0 1 1 *', 'SELECT 1');
INSERT INTO cron.job (schedule, command, nodename, nodeport, database, username, jobname, active)
VALUES ('0 0 1 1 *', 'SELECT 1', 'localhost', 5432, current_database(), 'analytics',
        'nightly-report', false),
       ('0 0 1 1 *', 'SELECT 1', 'localhost', 5432, current_database(), 'analytics',
        'process-scheduled-publishes', true);
"""
RESET_JOBS = """
SELECT cron.unschedule(jobid) FROM cron.job;
SELECT cron.schedule('process-scheduled-publishes', '*/5 * * * *',
                     $$SELECT process_scheduled_publishes()$$);
TRUNCATE cron.job_run_details;
"""


def test_same_named_cron_jobs_of_two_owners_are_two_jobs(pg: Cluster) -> None:
    """pg_cron lets another role use our job's name: both are reported, apart, and the
    query does not fail on two rows with the same labels (which blinded every cron alert)."""
    needs(pg, "pg_cron")
    pg.psql(
        ANALYTICS_JOBS
        + """
    INSERT INTO cron.job_run_details (jobid, job_pid, database, username, command, status,
                                      return_message, start_time, end_time)
    SELECT jobid, 1, database, username, 'SELECT 1',
           CASE WHEN username = 'analytics' THEN 'failed' ELSE 'succeeded' END,
           CASE WHEN username = 'analytics' THEN 'ERROR: theirs' ELSE 'SELECT 1' END,
           now() - interval '2 minutes', now() - interval '2 minutes' + interval '1 second'
    FROM cron.job;
    """,
        database=CMS,
    )
    try:
        v = values(pg, CMS, "cron_jobs")
        assert v.labels("homepage_cron_job_active") == {
            ("process-scheduled-publishes", "postgres"),
            ("process-scheduled-publishes", "analytics"),
            ("nightly-report", "postgres"),
            ("nightly-report", "analytics"),
        }
        ours = {"jobname": "process-scheduled-publishes", "username": "postgres"}
        theirs = {"jobname": "process-scheduled-publishes", "username": "analytics"}
        assert v("homepage_cron_job_last_run_success", **ours) == 1
        assert v("homepage_cron_job_last_run_success", **theirs) == 0
        assert v("homepage_cron_job_active", jobname="nightly-report", username="analytics") == 0
        assert v.labels("homepage_cron_job_last_run_failure_info") == {
            ("process-scheduled-publishes", "analytics", "ERROR: theirs"),
            ("nightly-report", "analytics", "ERROR: theirs"),
        }
    finally:
        pg.psql(RESET_JOBS, database=CMS)


HISTORY_ROWS = 3_100_000


@pytest.mark.slow
def test_cron_check_reads_the_newest_runs_by_index_whatever_the_history(pg: Cluster) -> None:
    """A year of runs of six jobs (pg_cron never purges): the plan walks job_run_details's
    primary key from the newest run, never the whole table, and the answers are still those
    of the newest runs (bench/cron_history.py measures the time)."""
    needs(pg, "pg_cron")
    pg.psql(
        """
    SELECT cron.unschedule(jobid) FROM cron.job;
    SELECT cron.schedule(name, '0 0 1 1 *', 'SELECT 1')
    FROM unnest(ARRAY['process-scheduled-publishes', 'a', 'b', 'c', 'd', 'e']) AS name;
    TRUNCATE cron.job_run_details;
    """,
        database=CMS,
    )
    try:
        # Oldest first, as pg_cron writes them: six jobs in turn, one run a minute each; the
        # CMS's job failed once, long ago.
        pg.psql(
            f"""
        INSERT INTO cron.job_run_details (jobid, job_pid, database, username, command, status,
                                          return_message, start_time, end_time)
        SELECT j.jobids[1 + g % 6], 1, 'cms', 'postgres', 'SELECT 1',
               CASE WHEN g = 6 THEN 'failed' ELSE 'succeeded' END, 'SELECT 1',
               now() - (({HISTORY_ROWS} - g) / 6 + 2) * interval '1 minute',
               now() - (({HISTORY_ROWS} - g) / 6 + 2) * interval '1 minute' + interval '1 second'
        FROM generate_series(1, {HISTORY_ROWS}) AS g,
             (SELECT array_agg(jobid ORDER BY jobname DESC) AS jobids FROM cron.job) AS j;
        -- The newest run of the CMS's job failed a moment ago.
        INSERT INTO cron.job_run_details (jobid, job_pid, database, username, command, status,
                                          return_message, start_time, end_time)
        SELECT jobid, 1, 'cms', 'postgres', 'SELECT 1', 'failed', 'ERROR: newest',
               now() - interval '30 seconds', now() - interval '27 seconds'
        FROM cron.job WHERE jobname = 'process-scheduled-publishes';
        ANALYZE cron.job_run_details;
        """,
            database=CMS,
        )
        plan = asyncio.run(_plan(pg, shipped("cron_jobs").sql))
        scans = _scans(plan[0]["Plan"])
        assert ("Seq Scan", "job_run_details") not in scans, scans
        assert ("Index Scan Backward", "job_run_details") in scans, scans
        v = values(pg, CMS, "cron_jobs")
        ours = {"jobname": "process-scheduled-publishes", "username": "postgres"}
        assert v("homepage_cron_job_last_run_success", **ours) == 0
        assert approx(v("homepage_cron_job_last_run_duration_seconds", **ours), 3, 0.001)
        assert v("homepage_cron_job_failed_runs_last_hour", **ours) == 1
        assert v.labels("homepage_cron_job_last_run_failure_info") == {
            ("process-scheduled-publishes", "postgres", "ERROR: newest")
        }
        for other in "abcde":
            assert v("homepage_cron_job_last_run_success", jobname=other, username="postgres") == 1
            started = v("homepage_cron_job_last_run_start_timestamp_seconds", jobname=other,
                        username="postgres")  # fmt: skip
            assert started is not None
            assert time.time() - started < 5 * 60
    finally:
        pg.psql(RESET_JOBS, database=CMS)


async def _plan(pg: Cluster, sql: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(exporter_dsn(pg, CMS))
    try:
        text = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}")
    finally:
        await conn.close()
    plan: list[dict[str, Any]] = json.loads(text) if isinstance(text, str) else text
    return plan


def _scans(node: dict[str, Any]) -> set[tuple[str, str]]:
    found = set()
    if "Relation Name" in node:
        direction = " Backward" if node.get("Scan Direction") == "Backward" else ""
        found.add((f"{node['Node Type']}{direction}", str(node["Relation Name"])))
    for child in node.get("Plans", []):
        found |= _scans(child)
    return found


def test_without_pg_cron_and_pg_stat_statements_those_queries_are_skipped(pg: Cluster) -> None:
    assert run_named(pg, BARE, "cron_jobs").result == Skipped(
        Requirement(Kind.EXTENSION, "pg_cron")
    )
    statements = run_named(pg, BARE, "statements").result
    assert statements == Skipped(Requirement(Kind.EXTENSION, "pg_stat_statements"))
    v = values(pg, BARE, "extensions")
    assert v("homepage_postgres_extension_installed", extension="pg_cron") == 0
    assert v("homepage_postgres_extension_installed", extension="pg_stat_statements") == 0
    needs(pg, "pg_cron")
    with_ext = values(pg, CMS, "extensions")
    assert with_ext("homepage_postgres_extension_installed", extension="pg_cron") == 1


def test_every_other_query_works_without_the_extensions(pg: Cluster) -> None:
    for query in load_config(SHIPPED_QUERIES).enabled:
        outcome = run_named(pg, BARE, query.name)
        if query.requires:
            assert isinstance(outcome.result, Skipped), query.name
        else:
            assert outcome.error is None, (query.name, outcome.error)


# --- sessions, locks, statements ----------------------------------------------------------------------


def test_blocked_and_idle_in_transaction_sessions(pg: Cluster, db: str) -> None:
    async def scenario() -> None:
        holder = await asyncpg.connect(pg.url(database=db))
        waiter = await asyncpg.connect(pg.url(database=db))
        try:
            await holder.execute("BEGIN; LOCK TABLE homepage_sections IN ACCESS EXCLUSIVE MODE")
            blocked = asyncio.create_task(waiter.fetch("SELECT count(*) FROM homepage_sections"))
            await until_sessions(
                holder, f"{WAITING_ON_A_LOCK} AND clock_timestamp() - query_start > '0.4 s'"
            )
            v = await asyncio.to_thread(values, pg, db, "activity")
            assert v("homepage_postgres_blocked_queries") == 1
            assert v("homepage_postgres_idle_in_transaction_sessions") == 1
            assert v("homepage_postgres_active_cms_queries") == 1
            longest = v("homepage_postgres_longest_cms_query_seconds")
            assert longest is not None
            assert 0.4 <= longest < 5
            assert v("homepage_postgres_long_running_cms_queries") == 0
            await holder.execute("ROLLBACK")
            await blocked
        finally:
            await holder.close()
            await waiter.close()

    asyncio.run(scenario())
    quiet = values(pg, db, "activity")
    assert quiet("homepage_postgres_blocked_queries") == 0
    assert quiet("homepage_postgres_active_cms_queries") == 0  # our own session is not counted


def test_a_query_that_starts_after_our_transaction_is_no_negative_duration(
    pg: Cluster, db: str
) -> None:
    """The activity SQL's transaction starts before it reads pg_stat_activity: a CMS query
    that starts in between must not read as -0.3 s (now() is the transaction's start)."""
    sql = shipped("activity").sql

    async def scenario() -> tuple[float, float]:
        ours = await asyncpg.connect(exporter_dsn(pg, db))
        other = await asyncpg.connect(pg.url(database=db))
        try:
            await ours.execute("BEGIN READ ONLY; SELECT now()")
            await asyncio.sleep(0.3)
            running = asyncio.create_task(
                other.fetch("SELECT count(*), pg_sleep(1.5) FROM homepage_sections")
            )
            await until_sessions(ours, "state = 'active' AND query LIKE '%pg_sleep(1.5)%'")
            row = await ours.fetchrow(sql)
            await ours.execute("ROLLBACK")
            await running
            assert row is not None
            return float(row["longest_cms_seconds"]), float(row["oldest_xact_seconds"])
        finally:
            await ours.close()
            await other.close()

    longest, oldest = asyncio.run(scenario())
    assert 0 <= longest < 1.5
    assert oldest >= 0


def test_the_runbooks_maintenance_is_no_runaway_query(pg: Cluster, db: str) -> None:
    """pg_dump's COPY, VACUUM/ANALYZE, an index being built and the weekly version cleanup count
    as maintenance; an application's query on the same tables does not; an open transaction's
    idle time is read."""
    pg.psql(
        SECTIONS + "CREATE FUNCTION slow_key(t text) RETURNS text IMMUTABLE LANGUAGE plpgsql AS"
        " $$BEGIN PERFORM pg_sleep(0.5); RETURN t; END$$;",
        database=db,
    )

    async def scenario() -> Values:
        dump = await asyncpg.connect(
            pg.url(database=db), server_settings={"application_name": "pg_dump"}
        )
        cleanup = await asyncpg.connect(pg.url(database=db))
        build = await asyncpg.connect(pg.url(database=db))
        app = await asyncpg.connect(pg.url(database=db))
        idle = await asyncpg.connect(pg.url(database=db))
        try:
            await idle.execute("BEGIN; SELECT count(*) FROM homepage_sections")
            running = [
                asyncio.create_task(dump.fetch(
                    "COPY (SELECT *, pg_sleep(1.5) FROM homepage_sections LIMIT 1) TO stdout")),
                asyncio.create_task(cleanup.fetch(
                    "WITH moved AS (SELECT * FROM section_versions WHERE pg_sleep(1.5) IS NOT NULL)"
                    " INSERT INTO section_versions_archive (id, section_id, version_number, content,"
                    " created_at) SELECT id, section_id, version_number, content, created_at FROM moved")),
                asyncio.create_task(build.execute(
                    "CREATE INDEX idx_slow_key ON homepage_sections (slow_key(section_key))")),
            ]  # fmt: skip
            # The dump (the longest of the three) running for over half a second.
            await until_sessions(
                app, "query LIKE 'COPY%' AND clock_timestamp() - query_start > '0.6 s'"
            )
            v = await asyncio.to_thread(values, pg, db, "activity")
            await asyncio.gather(*running)
            return v
        finally:
            for conn in (dump, cleanup, build, app, idle):
                await conn.close()

    v = asyncio.run(scenario())
    assert v("homepage_postgres_active_cms_queries") == 0
    assert v("homepage_postgres_longest_cms_query_seconds") == 0
    maintenance = v("homepage_postgres_longest_maintenance_seconds")
    assert maintenance is not None
    assert 0.5 <= maintenance < 5
    idle_for = v("homepage_postgres_idle_in_transaction_seconds")
    assert idle_for is not None
    assert 0.5 <= idle_for < 5


def test_statements_use_pg13_columns_and_exclude_our_own(pg: Cluster) -> None:
    needs(pg, "pg_stat_statements")
    pg.psql("SELECT pg_stat_statements_reset()", database=CMS)
    for _ in range(3):
        pg.psql("SELECT count(*) FROM homepage_sections WHERE locale = 'en'", database=CMS)
    v = values(pg, CMS, "statements")
    calls = v.labels("homepage_statement_calls_total")
    assert len(calls) >= 1
    counts = [v("homepage_statement_calls_total", queryid=q) for (q,) in calls]
    assert 3 in counts
    # The runbook's column names were removed in PostgreSQL 13.
    with pytest.raises(Exception, match='column "total_time" does not exist'):
        pg.psql("SELECT query, calls, total_time, mean_time FROM pg_stat_statements", database=CMS)


def test_database_counters(pg: Cluster, db: str) -> None:
    async def hold(n: int) -> tuple[Values, Values]:
        quiet = await asyncio.to_thread(values, pg, db, "database")
        pool = [await asyncpg.connect(pg.url(database="postgres")) for _ in range(n)]
        try:
            return quiet, await asyncio.to_thread(values, pg, db, "database")
        finally:
            for conn in pool:
                await conn.close()

    quiet, busy = asyncio.run(hold(7))
    # Connections to every database count (the pool above is in `postgres`), ours too.
    before = quiet("homepage_postgres_server_connections")
    assert before is not None
    assert before >= 1
    assert busy("homepage_postgres_server_connections") == before + 7
    assert busy("homepage_postgres_reserved_connections") == 3  # superuser_reserved_connections
    v = quiet
    assert v("homepage_postgres_max_connections") == 50
    connections = v("homepage_postgres_connections")
    assert connections is not None
    assert connections >= 1
    hits = v("homepage_postgres_blocks_hit_total")
    assert hits is not None
    assert hits > 0
    size = values(pg, db, "database_size")("homepage_postgres_database_size_bytes")
    assert size is not None
    assert size > 1_000_000


def test_transaction_id_age_against_the_freeze_limit(pg: Cluster, db: str) -> None:
    v = values(pg, db, "wraparound")
    assert v("homepage_postgres_autovacuum_freeze_max_age") == 200_000_000
    oldest = int(pg.psql("SELECT max(age(datfrozenxid)) FROM pg_database"))
    xid_age = v("homepage_postgres_xid_age")
    assert xid_age is not None
    assert oldest <= xid_age <= oldest + 100
    mxid = v("homepage_postgres_multixact_age")
    assert mxid is not None


def test_an_inactive_slot_retains_the_wal_written_since(pg: Cluster, db: str) -> None:
    slot = f"gone_standby_{db}"
    pg.psql(f"SELECT pg_create_physical_replication_slot('{slot}', true)")
    try:
        pg.psql(
            "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad"
            " FROM generate_series(1, 20000) g",
            database=db,
        )
        v = values(pg, db, "replication_slots")
        assert v("homepage_postgres_replication_slot_active", slot=slot, slot_type="physical") == 0
        retained = v(
            "homepage_postgres_replication_slot_retained_wal_bytes", slot=slot, slot_type="physical"
        )
        assert retained is not None
        assert retained > 4_000_000  # 20,000 rows of 200 bytes and more
    finally:
        pg.psql(f"SELECT pg_drop_replication_slot('{slot}')")


def test_statistics_are_stale_only_where_rows_changed_since_analyze(pg: Cluster, db: str) -> None:
    pg.psql(SECTIONS, database=db)
    pg.psql_file_text("ANALYZE homepage_sections;\nANALYZE section_categories;\n", db)
    pg.psql("UPDATE homepage_sections SET display_order = 9 WHERE locale = 'en'", database=db)
    wait_for(
        lambda: (
            values(pg, db, "table_stats")(
                "homepage_cms_table_rows_modified_since_analyze", table="homepage_sections"
            )
            == 4
        ),
        10,
        "the statistics collector to count the update",
    )
    v = values(pg, db, "table_stats")
    assert v("homepage_cms_table_rows_modified_since_analyze", table="section_categories") == 0


def test_an_index_being_built_concurrently_is_not_left_invalid(pg: Cluster, db: str) -> None:
    """CREATE INDEX CONCURRENTLY waits for an older transaction: meanwhile its index is
    invalid and in pg_stat_progress_create_index, and reported as building."""
    pg.psql(SECTIONS, database=db)

    async def scenario() -> tuple[Values, Values]:
        old = await asyncpg.connect(pg.url(database=db))
        builder = await asyncpg.connect(pg.url(database=db))
        try:
            await old.execute(
                "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1 FROM homepage_sections"
            )
            build = asyncio.create_task(
                builder.execute(
                    "CREATE INDEX CONCURRENTLY idx_new ON homepage_sections (updated_at)"
                )
            )
            await asyncio.to_thread(
                wait_for,
                lambda: pg.psql("SELECT count(*) FROM pg_stat_progress_create_index", database=db)
                .strip() == "1" and pg.psql(
                    "SELECT count(*) FROM pg_index WHERE indexrelid = 'idx_new'::regclass"
                    " AND NOT indisvalid", database=db).strip() == "1",
                20,
                "the build to wait for the old transaction",
            )  # fmt: skip
            during = await asyncio.to_thread(values, pg, db, "index_usage")
            await old.execute("ROLLBACK")
            await build
            return during, await asyncio.to_thread(values, pg, db, "index_usage")
        finally:
            await old.close()
            await builder.close()

    during, after = asyncio.run(scenario())
    index = {"index": "idx_new", "table": "homepage_sections"}
    assert during("homepage_cms_index_valid", **index) == 0
    assert during("homepage_cms_index_building", **index) == 1
    assert after("homepage_cms_index_valid", **index) == 1
    assert after("homepage_cms_index_building", **index) == 0
    # Left invalid by a failed build (no build in progress): invalid, not building.
    pg.psql(
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'idx_new'::regclass", database=db
    )
    failed = values(pg, db, "index_usage")
    assert failed("homepage_cms_index_valid", **index) == 0
    assert failed("homepage_cms_index_building", **index) == 0


def test_every_shipped_query_has_an_answer_test() -> None:
    source = Path(__file__).read_text()
    named = set(re.findall(r'(?:values|run_named)(?:\(|, )pg, \w+, "(\w+)"', source))
    shipped = {q.name for q in load_config(SHIPPED_QUERIES).queries}
    assert shipped - named == set()


# --- the security advisor's lints -----------------------------------------------------------------

LINTS = (
    "anon_security_definer_function_executable",
    "authenticated_security_definer_function_executable",
    "function_search_path_mutable",
    "rls_disabled_in_public",
    "policy_exists_rls_disabled",
    "rls_enabled_no_policy",
    "unindexed_foreign_keys",
    "duplicate_index",
    "invalid_index",
    "exporter_role_changed",
)
# One bad object among the good reference schema, and which lints it must trip (and no other).
BAD_OBJECTS = {
    "anon_security_definer_function_executable": (
        "GRANT EXECUTE ON FUNCTION process_scheduled_publishes() TO anon",
        {"anon_security_definer_function_executable": "process_scheduled_publishes()"},
    ),
    "authenticated_security_definer_function_executable": (
        "GRANT EXECUTE ON FUNCTION publish_section_version(uuid, uuid) TO authenticated",
        {
            "authenticated_security_definer_function_executable": (
                "publish_section_version(uuid,uuid)"
            )
        },
    ),
    "function_search_path_mutable": (
        "ALTER FUNCTION revert_section_to_version(uuid, uuid) RESET search_path",
        {"function_search_path_mutable": "revert_section_to_version(uuid,uuid)"},
    ),
    "rls_disabled_in_public": (
        "CREATE TABLE media_folders (id int PRIMARY KEY)",
        {"rls_disabled_in_public": "media_folders"},
    ),
    "policy_exists_rls_disabled": (
        "ALTER TABLE section_products DISABLE ROW LEVEL SECURITY",
        {
            "policy_exists_rls_disabled": "section_products",
            "rls_disabled_in_public": "section_products",
        },
    ),
    "rls_enabled_no_policy": (
        'DROP POLICY "Section categories viewable by everyone" ON section_categories',
        {"rls_enabled_no_policy": "section_categories"},
    ),
    "unindexed_foreign_keys": (
        "DROP INDEX idx_section_products_section",
        {"unindexed_foreign_keys": "section_products.section_products_section_id_fkey"},
    ),
    "duplicate_index": (
        "CREATE INDEX idx_copy ON section_categories (section_id)",
        {"duplicate_index": "idx_copy,idx_section_categories_section"},
    ),
    "invalid_index": (
        # What a failed CREATE INDEX CONCURRENTLY leaves behind.
        "UPDATE pg_index SET indisvalid = false"
        " WHERE indexrelid = 'idx_media_assets_created'::regclass",
        {"invalid_index": "idx_media_assets_created"},
    ),
    # What a holder of the exporter's password can leave: a large object of the exporter's
    # role (made here as the superuser and given to it; the role itself can, see
    # test_runbook_statements), and its read-only default turned off in this database only.
    "exporter_role_changed": (
        "SELECT lo_from_bytea(4242, 'stash'::bytea);"
        " ALTER LARGE OBJECT 4242 OWNER TO homepage_exporter",
        {"exporter_role_changed": "large object 4242"},
    ),
}


def test_the_reference_schema_passes_every_advisor_lint(pg: Cluster, db: str) -> None:
    v = values(pg, db, "security_advisor")
    assert {
        lint: v("homepage_cms_security_findings", lint=lint) for lint in LINTS
    } == dict.fromkeys(LINTS, 0)
    assert v.labels("homepage_cms_security_finding") == set()


@pytest.mark.parametrize("lint", LINTS)
def test_each_advisor_lint_fires_on_its_bad_object_only(pg: Cluster, db: str, lint: str) -> None:
    statement, expected = BAD_OBJECTS[lint]
    # Objects outside the CMS's scope are not ours to judge: an open table of the shop, a
    # SECURITY DEFINER function of another feature.
    pg.psql(
        statement + "; CREATE TABLE orders (id int);"
        " CREATE FUNCTION shop_admin() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';"
        " GRANT EXECUTE ON FUNCTION shop_admin() TO anon;",
        database=db,
    )
    v = values(pg, db, "security_advisor")
    found = {name: v("homepage_cms_security_findings", lint=name) for name in LINTS}
    assert found == {name: (1 if name in expected else 0) for name in LINTS}
    assert v.labels("homepage_cms_security_finding") == set(expected.items())


def role_setting(database: str, setting: str) -> str:
    """`setting` for the exporter's role in `database` only (pg_db_role_setting is shared by
    the cluster; the row goes with the database)."""
    return f'ALTER ROLE homepage_exporter IN DATABASE "{database}" SET {setting}'


@pytest.mark.parametrize(
    ("settings", "found"),
    [
        # exporter_role.sql's own: ordinary life.
        (["default_transaction_read_only = on", "statement_timeout = '60s'"], None),
        (["default_transaction_read_only = true", "statement_timeout = '5min'"], None),
        (["default_transaction_read_only = off"], "default_transaction_read_only=off"),
        (["default_transaction_read_only = false"], "default_transaction_read_only=false"),
        (["statement_timeout = 0"], "statement_timeout=0"),
        (["statement_timeout = '0ms'"], "statement_timeout=0ms"),
    ],
    ids=["script", "script-other-words", "off", "false", "no-timeout", "no-timeout-ms"],
)
def test_the_exporter_roles_safeguards_turned_off_are_a_finding(
    pg: Cluster, db: str, settings: list[str], found: str | None
) -> None:
    pg.psql(";".join(role_setting(db, s) for s in settings), database=db)
    v = values(pg, db, "security_advisor")
    assert v("homepage_cms_security_findings", lint="exporter_role_changed") == (found is not None)
    flagged = {("exporter_role_changed", found)} if found else set()
    assert v.labels("homepage_cms_security_finding") == flagged


# --- backup & recovery: WAL archiving -------------------------------------------------------------


def test_wal_archiving_progress_failures_and_pending_segments() -> None:
    """A server that archives (cp to a folder), then one whose archive_command fails."""
    base = Path(tempfile.mkdtemp(prefix="homepage-pg-archiving-"))
    base.chmod(0o755)
    archive = base / "archive"
    archive.mkdir()
    cluster = Cluster(
        base=base / "cluster",
        preload=(),
        settings={
            "archive_mode": "on",
            "archive_command": f"'cp %p {archive}/%f'",
            "archive_timeout": "0",
        },
    )
    user = unprivileged_user()
    if user is not None:
        os.chown(archive, user.pw_uid, user.pw_gid)
    try:
        cluster.init().start()
        create_cms_database(cluster, CMS, exporter_password=EXPORTER_PASSWORD, extensions=False)
        cluster.psql("SELECT pg_switch_wal()", database=CMS)
        wait_for(
            lambda: cluster.psql("SELECT archived_count FROM pg_stat_archiver").strip() != "0",
            20,
            "a segment to be archived",
        )
        ok = values(cluster, CMS, "wal_archiving")
        # The archive ends at the end of the switched segment, at most a segment behind.
        archived_end = ok("homepage_postgres_wal_archived_position_bytes")
        written = ok("homepage_postgres_wal_position_bytes")
        assert archived_end is not None
        assert written is not None
        assert archived_end % (16 * 1024 * 1024) == 0
        assert 0 <= written - archived_end < 16 * 1024 * 1024
        assert ok("homepage_postgres_archive_timeout_seconds") == 0
        assert ok("homepage_postgres_wal_archiving_enabled") == 1
        assert (ok("homepage_postgres_wal_archived_total") or 0) >= 1
        assert ok("homepage_postgres_wal_archive_failures_total") == 0
        assert ok("homepage_postgres_wal_segments_pending_archive") == 0
        last = ok("homepage_postgres_wal_last_archived_timestamp_seconds")
        assert last is not None
        assert abs(last - time.time()) < 60

        cluster.psql("ALTER SYSTEM SET archive_command = 'false'")
        cluster.psql("SELECT pg_reload_conf()")
        cluster.psql(
            "CREATE TABLE filler AS SELECT g FROM generate_series(1, 1000) g;"
            " SELECT pg_switch_wal(); INSERT INTO filler SELECT 1; SELECT pg_switch_wal();",
            database=CMS,
        )
        wait_for(
            lambda: cluster.psql("SELECT failed_count FROM pg_stat_archiver").strip() != "0",
            20,
            "an archive attempt to fail",
        )
        failing = values(cluster, CMS, "wal_archiving")
        position = failing("homepage_postgres_wal_position_bytes")
        archived = failing("homepage_postgres_wal_archived_position_bytes")
        assert position is not None
        assert archived is not None
        assert position > archived  # written and not archived
        assert (failing("homepage_postgres_wal_archive_failures_total") or 0) >= 1
        assert (failing("homepage_postgres_wal_segments_pending_archive") or 0) >= 1
        failed_at = failing("homepage_postgres_wal_last_archive_failure_timestamp_seconds")
        assert failed_at is not None
        assert failed_at >= last
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


def test_without_archiving_nothing_is_pending(pg: Cluster, db: str) -> None:
    v = values(pg, db, "wal_archiving")
    assert v("homepage_postgres_wal_archiving_enabled") == 0
    assert v("homepage_postgres_wal_archived_total") == 0
    assert v("homepage_postgres_wal_segments_pending_archive") is None
    assert v("homepage_postgres_wal_archived_position_bytes") is None
    position = v("homepage_postgres_wal_position_bytes")
    assert position is not None
    assert position > 0
