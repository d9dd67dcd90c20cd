"""Alert quality: the ordinary life of a CMS raises nothing; every runbook incident raises the
right alert within the runbook's time.

Each scenario is a real database state (PostgreSQL with pg_cron, the reference schema, the
exporter's role), read by the real exporter (`homepage-cms-exporter once`). Its exposition is
held for the scenario's window and fed to the shipped rules through promtool; the alerts that
fire, after Alertmanager's inhibition rules from deploy/alertmanager.yml, are compared with
what the scenario expects. The figures go to docs/alerts.md (tests check it is current).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.demo.cluster import Cluster, ClusterError
from exporter.demo.database import create_cms_database, load_exporter_role, sql_file
from tests.conftest import exporter_dsn
from tests.harness import EXPORTER_PASSWORD, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "homepage-cms.rules.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager.yml"
PROMTOOL = shutil.which("promtool")
DATABASE = "cms_quality"
JOB = "process-scheduled-publishes"
INSTANCE = 'job="homepage-cms", instance="db1:10187"'

HEALTHY = f"""
ALTER TABLE section_products RESET (autovacuum_enabled);
TRUNCATE homepage_sections, section_versions, section_versions_archive, section_schedules,
  section_products, section_categories, media_assets CASCADE;
INSERT INTO homepage_sections (id, section_key, locale, status, is_active, display_order)
SELECT ('00000000-0000-0000-0000-0000000000' || l.n || k.n)::uuid, k.key, l.locale,
       'published', true, k.n
FROM (VALUES ('en', 1), ('de', 2)) AS l(locale, n),
     (VALUES ('hero', 1), ('grid', 2), ('promo', 3)) AS k(key, n);
INSERT INTO section_versions (section_id, version_number, content, is_published)
SELECT id, 1, '{{"image": "homepage/hero.webp"}}', true FROM homepage_sections;
UPDATE homepage_sections hs SET published_version_id = sv.id
FROM section_versions sv WHERE sv.section_id = hs.id;
INSERT INTO section_products (section_id, product_id, display_order)
SELECT hs.id, gen_random_uuid(), g FROM homepage_sections hs, generate_series(1, 4) g;
INSERT INTO section_categories (section_id, category_id, display_order)
SELECT hs.id, gen_random_uuid(), g FROM homepage_sections hs, generate_series(1, 2) g;
INSERT INTO media_assets (file_path, file_size, created_at)
VALUES ('homepage/hero.webp', 50000, now() - interval '200 days');
INSERT INTO section_schedules (section_id, version_id, publish_at, status, processed_at)
SELECT id, published_version_id, now() - interval '2 days', 'completed', now() - interval '2 days'
FROM homepage_sections;
DELETE FROM cron.job_run_details;
INSERT INTO cron.job_run_details (jobid, job_pid, database, username, command, status,
                                  return_message, start_time, end_time)
SELECT jobid, 1, '{DATABASE}', 'postgres', command, 'succeeded', 'SELECT 0',
       now() - interval '1 minute', now() - interval '1 minute' + interval '120 ms'
FROM cron.job WHERE jobname = '{JOB}';
UPDATE cron.job SET active = true WHERE jobname = '{JOB}';
"""
RESET_CRON = f"""
SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname <> '{JOB}';
SELECT cron.schedule('{JOB}', '0 0 1 1 *', $$SELECT process_scheduled_publishes()$$)
WHERE NOT EXISTS (SELECT FROM cron.job WHERE jobname = '{JOB}');
"""
# What a scenario may leave behind that schema.sql does not reset: replication slots, and the
# index (and its function) the build-in-progress scenario makes.
RESET_STATE = """
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active;
DROP INDEX IF EXISTS idx_section_products_sort_key;
DROP FUNCTION IF EXISTS product_sort_key(uuid);
"""
# The session's own changes reach the statistics before its ANALYZE (PostgreSQL 15 flushes them
# when the session is next idle), or they would count as changed since: no table would be
# "unchanged since its last ANALYZE" as the weekly job leaves it.
FLUSH_STATS = """
DO $$ BEGIN
  IF to_regproc('pg_stat_force_next_flush') IS NOT NULL THEN PERFORM pg_stat_force_next_flush();
  END IF;
END $$;
"""
HELD_APP = "quality-held"  # the application_name of a scenario's own clients
SECTION = "(SELECT id FROM homepage_sections WHERE locale = 'en' AND section_key = 'hero')"
VERSION = f"(SELECT published_version_id FROM homepage_sections WHERE id = {SECTION})"


@dataclass(frozen=True)
class Held:
    """A client kept running while the state is read and triaged (until the next scenario):
    psql with `sql` sent to it, or pg_basebackup (`basebackup`); `until` is a query that is
    true once the client is where the scenario needs it."""

    until: str
    sql: str = ""
    basebackup: bool = False


@dataclass(frozen=True)
class Scenario:
    """A database state, what must fire (alert, severity) and by when (minutes)."""

    name: str
    kind: str  # "benign" | "incident"
    sql: str = ""
    expect: frozenset[tuple[str, str]] = frozenset()
    within: int = 75  # minutes of the state held before judging
    env: dict[str, str] = field(default_factory=dict)
    stop_database: bool = False
    idle_connections: int = 0  # client sessions held open, idle, while the exporter reads
    held: tuple[Held, ...] = ()  # clients that are part of the state, started in this order
    # Samples read as if taken `seconds` later than they were (metric, seconds): for times the
    # server cannot date in the past (when a table was last analyzed).
    aged: tuple[tuple[str, int], ...] = ()


def _fails(n: int, age: str) -> str:
    return (
        "INSERT INTO section_schedules (section_id, version_id, publish_at, status, error_message,"
        f" processed_at) SELECT {SECTION}, gen_random_uuid(), now() - interval '{age}', 'failed',"
        f" 'version does not belong to section', now() - interval '{age}'"
        f" FROM generate_series(1, {n});"
    )


# fmt: off
BENIGN = [
    Scenario("a healthy homepage", "benign"),
    Scenario(
        "an editor publishes a new version",
        "benign",
        f"""
        INSERT INTO section_versions (section_id, version_number, content)
        VALUES ({SECTION}, 2, '{{"image": "homepage/hero.webp", "title": "Spring"}}');
        SELECT publish_section_version({SECTION},
          (SELECT id FROM section_versions WHERE section_id = {SECTION} AND version_number = 2));
        """,
    ),
    Scenario(
        "a publish is scheduled for tomorrow",
        "benign",
        f"""
        INSERT INTO section_schedules (section_id, version_id, publish_at)
        VALUES ({SECTION}, {VERSION}, now() + interval '1 day');""",
    ),
    Scenario(
        "a schedule became due a minute ago",
        "benign",
        f"""
        INSERT INTO section_schedules (section_id, version_id, publish_at)
        VALUES ({SECTION}, {VERSION}, now() - interval '1 minute');""",
    ),
    Scenario("one publish failed in the last hour", "benign", _fails(1, "20 minutes")),
    # A shop's get_homepage_content() leaves out what cannot be bought (an audit's CMS, built from
    # the runbook alone, paged HomepageCatalogHidden for its sold-out products): fewer
    # products than the live sections link is the function's business, not a hidden table.
    Scenario(
        "the homepage leaves out sold-out products",
        "benign",
        """
        CREATE TABLE products (id uuid PRIMARY KEY, is_available boolean NOT NULL);
        INSERT INTO products SELECT product_id, display_order % 4 <> 0 FROM section_products;
        GRANT SELECT ON products TO anon, authenticated;
        CREATE OR REPLACE FUNCTION get_homepage_content(p_locale text)
        RETURNS TABLE (section_id uuid, section_key text, section_type text,
          display_order integer, version_number integer, content jsonb, products jsonb,
          categories jsonb)
        LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
          SELECT hs.id, hs.section_key, hs.section_type, hs.display_order, sv.version_number,
                 sv.content,
                 COALESCE((SELECT jsonb_agg(sp.product_id ORDER BY sp.display_order)
                           FROM section_products sp JOIN products p ON p.id = sp.product_id
                           WHERE sp.section_id = hs.id AND p.is_available), '[]'::jsonb),
                 COALESCE((SELECT jsonb_agg(sc.category_id ORDER BY sc.display_order)
                           FROM section_categories sc WHERE sc.section_id = hs.id), '[]'::jsonb)
          FROM homepage_sections hs
          LEFT JOIN section_versions sv ON sv.id = hs.published_version_id
          WHERE hs.locale = p_locale AND hs.is_active AND hs.status = 'published'
          ORDER BY hs.display_order
        $$;""",
    ),
    Scenario(
        "40 old failures, one re-queued",
        "benign",
        _fails(40, "10 days")
        + """
        UPDATE section_schedules SET status = 'pending', error_message = NULL,
          processed_at = NULL, publish_at = now() + interval '10 minutes'
        WHERE id = (SELECT id FROM section_schedules WHERE status = 'failed' LIMIT 1);""",
    ),
    Scenario(
        "a new locale being prepared (drafts only)",
        "benign",
        """
        INSERT INTO homepage_sections (section_key, locale, status, is_active)
        VALUES ('hero', 'pt', 'draft', true), ('grid', 'pt', 'draft', true);""",
    ),
    Scenario(
        "a section switched off on purpose",
        "benign",
        """
        UPDATE homepage_sections SET is_active = false
        WHERE locale = 'en' AND section_key = 'promo';""",
    ),
    Scenario(
        "an edit makes an old version archivable",
        "benign",
        f"""
        INSERT INTO section_versions (section_id, version_number, created_at)
        SELECT {SECTION}, g + 1, CASE WHEN g = 1 THEN now() - interval '2 years' ELSE now() END
        FROM generate_series(1, 51) g;""",
    ),
    Scenario(
        "editing a small table twice",
        "benign",
        """
        UPDATE section_categories SET display_order = display_order;
        INSERT INTO section_categories (section_id, category_id)
        SELECT id, gen_random_uuid() FROM homepage_sections;
        UPDATE section_categories SET display_order = 1;
        UPDATE section_categories SET display_order = 2;""",
    ),
    Scenario(
        "another team's cron job is paused",
        "benign",
        """
        SELECT cron.schedule('nightly-report', '0 3 * * *', 'SELECT 1');
        UPDATE cron.job SET active = false WHERE jobname = 'nightly-report';""",
    ),
    Scenario(
        "another team's cron jobs share names with ours",
        "benign",
        """
        DO $$ BEGIN
          IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'analytics') THEN
            CREATE ROLE analytics;
          END IF;
        END $$;
        SELECT cron.schedule('nightly-report', '0 3 * * *', 'SELECT 1');
        INSERT INTO cron.job (schedule, command, nodename, nodeport, database, username, jobname)
        VALUES ('0 4 * * *', 'SELECT 1', 'localhost', 5432, current_database(), 'analytics',
                'nightly-report');
        INSERT INTO cron.job_run_details (jobid, job_pid, database, username, command, status,
                                          return_message, start_time, end_time)
        SELECT jobid, 1, database, username, 'SELECT 1', 'failed', 'ERROR: their table is gone',
               now() - interval '3 minutes', now() - interval '3 minutes' + interval '1 second'
        FROM cron.job WHERE username = 'analytics';""",
    ),
    Scenario(
        "editors cancel a fifth of this week's schedules",
        "benign",
        f"""
        INSERT INTO section_schedules (section_id, version_id, publish_at, status, processed_at)
        SELECT {SECTION}, {VERSION}, now() - g * interval '5 hours', s, now() - g * interval '5 hours'
        FROM generate_series(1, 25) g,
             LATERAL (SELECT CASE WHEN g % 5 = 0 THEN 'cancelled' ELSE 'completed' END) AS x(s);
        INSERT INTO section_schedules (section_id, version_id, publish_at)
        VALUES ({SECTION}, {VERSION}, now() + interval '2 days');""",
    ),
    # Supabase's smallest compute has max_connections 60: a pooler holding 40 idle is normal.
    # Here max_connections is 50, so the same share is 33.
    Scenario("an idle connection pool at 40 of 60", "benign", idle_connections=33),
    Scenario(
        "old media nobody uses, referenced by a render URL",
        "benign",
        """
        UPDATE section_versions SET content = '{"img": "https://x.supabase.co/storage/v1/render/image/public/media/homepage/hero.webp?width=800"}';""",
    ),
    # An ORM that opens a transaction, reads, and thinks before committing: at every scrape some
    # session is idle in a transaction for seconds. (One idle for 15 minutes is an age no single
    # read can show: alerts/homepage-cms.rules.test.yml holds it, growing a minute a minute.)
    Scenario(
        "a session idle in a transaction for a few seconds",
        "benign",
        held=(Held(f"SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = '{HELD_APP}'"
                   " AND state = 'idle in transaction')",
                   "BEGIN; SELECT count(*) FROM section_products;"),),
    ),
    # pg_basebackup streams the WAL of the backup through a temporary slot of its own.
    Scenario(
        "a base backup streams WAL through a temporary slot",
        "benign",
        held=(Held("SELECT EXISTS (SELECT FROM pg_replication_slots WHERE temporary AND active)",
                   basebackup=True),),
    ),
    # CREATE INDEX CONCURRENTLY leaves the index invalid until it is done; on a big table that
    # takes a while. A slow indexed expression stands in for the big table here: the build is
    # read in its table scan, and cancelled when the next scenario starts.
    Scenario(
        "an index built concurrently on a CMS table",
        "benign",
        f"""
        CREATE FUNCTION product_sort_key(p uuid) RETURNS uuid LANGUAGE plpgsql IMMUTABLE
        SET search_path = pg_catalog AS $$ BEGIN PERFORM pg_sleep(0.2); RETURN p; END $$;
        INSERT INTO section_products (section_id, product_id)
        SELECT {SECTION}, gen_random_uuid() FROM generate_series(1, 300);""",
        held=(Held("SELECT EXISTS (SELECT FROM pg_stat_progress_create_index p"
                   " JOIN pg_class c ON c.oid = p.index_relid"
                   " WHERE c.relname = 'idx_section_products_sort_key'"
                   " AND p.phase LIKE 'building index%')",
                   "CREATE INDEX CONCURRENTLY idx_section_products_sort_key"
                   " ON section_products (product_sort_key(product_id));"),),
    ),
    # Nothing changed these tables since their last ANALYZE, a month ago: their statistics are
    # still true. The server cannot date an ANALYZE in the past, so the state is read as a
    # month later (the modification counts are the server's own: 0).
    Scenario(
        "CMS tables nobody changed for a month",
        "benign",
        aged=(("homepage_cms_table_last_analyzed_timestamp_seconds", 30 * 86400),),
    ),
]
INCIDENTS = [
    Scenario("P1 path A: the kill switch left on", "incident",
             "UPDATE homepage_sections SET is_active = false WHERE locale = 'en';",
             frozenset({("HomepageNoLiveSections", "critical")}), within=5),
    Scenario("P1 path B: an RLS policy hides the homepage", "incident",
             'ALTER POLICY "Published sections viewable by everyone" ON homepage_sections'
             " TO authenticated;",
             frozenset({("HomepageInvisibleToPublic", "critical")}), within=5),
    Scenario("P1 path C: a migration breaks the render function's filter", "incident", """
        CREATE OR REPLACE FUNCTION get_homepage_content(p_locale text)
        RETURNS TABLE (section_id uuid, section_key text, section_type text,
          display_order integer, version_number integer, content jsonb, products jsonb,
          categories jsonb)
        LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
          SELECT hs.id, hs.section_key, hs.section_type, hs.display_order, NULL::integer,
                 NULL::jsonb, '[]'::jsonb, '[]'::jsonb
          FROM homepage_sections hs WHERE hs.locale = p_locale AND hs.status = 'draft'
        $$;""",
             frozenset({("HomepageRenderEmpty", "critical")}), within=5),
    Scenario("P1 path B: the versions' read policy narrowed to signed-in users", "incident",
             'ALTER POLICY "Published versions viewable by everyone" ON section_versions'
             " TO authenticated;",
             frozenset({("HomepageContentHidden", "critical")}), within=5),
    Scenario("a hand-written UPDATE points the German hero at the English hero's version",
             "incident",
             "UPDATE homepage_sections d SET published_version_id = f.published_version_id"
             " FROM homepage_sections f WHERE d.locale = 'de' AND d.section_key = 'hero'"
             " AND f.locale = 'en' AND f.section_key = 'hero';",
             frozenset({("HomepageLiveSectionVersionWrong", "critical")}), within=5),
    Scenario("a live section points at an unreviewed draft", "incident",
             "INSERT INTO section_versions (section_id, version_number, content)"
             " SELECT id, 999, '{}' FROM homepage_sections"
             " WHERE locale = 'en' AND section_key = 'promo';"
             " UPDATE homepage_sections hs SET published_version_id = v.id"
             " FROM section_versions v WHERE v.section_id = hs.id AND v.version_number = 999;",
             frozenset({("HomepageContentHidden", "critical")}), within=5),
    # A CMS whose versions are readable to all (previews by URL): the draft is shown, with
    # content, and only the pointer check can tell.
    Scenario("a live section points at a draft the public may read", "incident",
             'ALTER POLICY "Published versions viewable by everyone" ON section_versions'
             " USING (true);"
             " INSERT INTO section_versions (section_id, version_number, content)"
             " SELECT id, 999, '{}' FROM homepage_sections"
             " WHERE locale = 'de' AND section_key = 'grid';"
             " UPDATE homepage_sections hs SET published_version_id = v.id"
             " FROM section_versions v WHERE v.section_id = hs.id AND v.version_number = 999;",
             frozenset({("HomepageLiveSectionVersionWrong", "critical")}), within=5),
    Scenario("P1 path B: the products' read policy narrowed to signed-in users", "incident",
             'ALTER POLICY "Section products viewable by everyone" ON section_products'
             " TO authenticated;",
             frozenset({("HomepageCatalogHidden", "critical")}), within=5),
    Scenario("P1: signed-in customers get an empty homepage", "incident",
             'ALTER POLICY "Published sections viewable by everyone" ON homepage_sections'
             " TO anon;",
             frozenset({("HomepageRenderEmpty", "critical")}), within=5),
    Scenario("P1 path C: get_homepage_content() is gone", "incident",
             "DROP FUNCTION get_homepage_content(text) CASCADE;",
             frozenset({("HomepageRenderFailing", "critical"), ("HomepageCheckBlind", "critical"),
                        ("HomepageFunctionMissing", "critical")}), within=10),
    Scenario("P2 path A: the cron job is gone, schedules pile up", "incident",
             f"SELECT cron.unschedule('{JOB}');"
             " INSERT INTO section_schedules (section_id, version_id, publish_at)"
             f" VALUES ({SECTION}, {VERSION}, now() - interval '20 minutes');",
             frozenset({("HomepageCronJobInactive", "warning"), ("ScheduledPublishLag", "critical")}),
             within=15),
    Scenario("P2 path B: publishes fail", "incident", _fails(6, "10 minutes"),
             frozenset({("HighPublishFailureRate", "critical")}), within=15),
    Scenario("P2 path C: the cron run fails on permissions", "incident", """
        UPDATE cron.job_run_details SET status = 'failed',
          return_message = 'ERROR: permission denied for table section_schedules';""",
             frozenset({("HomepageCronJobFailed", "warning")}), within=5),
    Scenario("P3: a runaway query and a bloated table", "incident",
             """ALTER TABLE section_products SET (autovacuum_enabled = false);
                INSERT INTO section_products (section_id, product_id)
                SELECT (SELECT id FROM homepage_sections LIMIT 1), gen_random_uuid()
                FROM generate_series(1, 5000);
                DELETE FROM section_products;""",
             frozenset({("HomepageTableBloated", "warning")}), within=40),
    Scenario("Security: a writer executable by anon", "incident",
             "GRANT EXECUTE ON FUNCTION process_scheduled_publishes() TO anon;",
             frozenset({("HomepageSecurityDefinerExposedToAnon", "critical")}), within=10),
    Scenario("Capacity: media storage near its quota", "incident",
             "UPDATE media_assets SET file_size = 950000000;",
             frozenset({("MediaStorageHigh", "critical")}), within=75,
             env={"HOMEPAGE_EXPORTER_MEDIA_STORAGE_QUOTA_BYTES": "1000000000"}),
    Scenario("Capacity: the connection pool is exhausted", "incident",
             expect=frozenset({("PostgresConnectionsHigh", "critical")}), within=10,
             idle_connections=44),
    # A standby that went away: its slot keeps every WAL segment since (70 segments, 1.1 GB).
    Scenario("Capacity: an inactive replication slot retains WAL", "incident", """
        SELECT pg_create_physical_replication_slot('standby_gone', true);
        DO $$ BEGIN
          FOR i IN 1..70 LOOP
            PERFORM pg_logical_emit_message(false, 'quality', 'wal');
            PERFORM pg_switch_wal();
          END LOOP;
        END $$;""",
             frozenset({("PostgresReplicationSlotInactive", "warning")}), within=35),
    Scenario("The database is unreachable", "incident",
             expect=frozenset({("HomepageDatabaseUnreachable", "critical")}), within=10,
             stop_database=True),
]
# fmt: on


def quality_cluster() -> Iterator[Cluster]:
    """PostgreSQL with pg_cron and the reference schema, for the scenarios (test_triage too)."""
    server = Cluster(cron_database=DATABASE)
    try:
        server.init().start()
        create_cms_database(server, DATABASE, exporter_password=EXPORTER_PASSWORD)
        # Park the job's schedule: the scenarios set its history themselves.
        server.psql(f"SELECT cron.alter_job(jobid, schedule := '0 0 1 1 *') FROM cron.job"
                    f" WHERE jobname = '{JOB}'", database=DATABASE)  # fmt: skip
        yield server
    finally:
        release(server)
        server.destroy()


cluster = pytest.fixture(scope="module", name="cluster")(quality_cluster)


def build(cluster: Cluster, scenario: Scenario) -> None:
    """The scenario's state, analyzed as the weekly job does (or the server stopped), with its
    clients running."""
    release(cluster)
    if scenario.stop_database:
        cluster.stop()
        return
    # Undo the previous scenario: functions, policies, grants, the exporter's objects, jobs.
    cluster.psql_file_text(RESET_STATE, DATABASE)
    cluster.psql_file(sql_file("schema.sql"), DATABASE)
    load_exporter_role(cluster, DATABASE, EXPORTER_PASSWORD)
    cluster.psql_file_text(
        RESET_CRON + HEALTHY + scenario.sql + FLUSH_STATS + "ANALYZE;\n", DATABASE
    )
    for client in scenario.held:
        hold(cluster, client)


# The held clients of the scenario built last: they outlive `exposition`, so that triage and the
# status page (tests/test_incident_agreement.py) read the very same state.
_HELD: list[tuple[subprocess.Popen[bytes], Path | None]] = []


def hold(cluster: Cluster, client: Held) -> None:
    folder = None
    if client.basebackup:
        folder = Path(tempfile.mkdtemp(prefix="quality-backup-"))
        argv = [str(cluster.bindir / "pg_basebackup"), "-D", str(folder / "backup"), "-X",
                "stream", "-c", "fast", "--max-rate=32k"]  # fmt: skip
    else:
        argv = [str(cluster.psql_binary), "-X", "-q", "-d", DATABASE]
    argv += ["-h", str(cluster.base), "-p", str(cluster.port), "-U", cluster.superuser]
    process = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PGAPPNAME": HELD_APP},
    )
    _HELD.append((process, folder))
    if client.sql:
        assert process.stdin is not None
        process.stdin.write(client.sql.encode() + b"\n")
        process.stdin.flush()
    wait_for(
        lambda: cluster.psql(client.until, database=DATABASE).strip() == "t",
        60,
        f"the held client: {client.until}",
    )


def release(cluster: Cluster) -> None:
    """End the held clients: what still runs is cancelled (a build), the sessions closed."""
    if not _HELD:
        return
    with contextlib.suppress(ClusterError):
        cluster.psql(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
            f" WHERE application_name = '{HELD_APP}' AND state = 'active'"
            " AND backend_type = 'client backend'"
        )
    for process, folder in _HELD:
        if process.stdin is not None:
            process.stdin.close()
        if folder is not None:  # pg_basebackup reads no input: it is stopped
            process.terminate()
        process.wait(timeout=30)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    _HELD.clear()


def exposition(cluster: Cluster, scenario: Scenario) -> str:
    """The state built, read once by the real exporter."""
    build(cluster, scenario)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOMEPAGE_EXPORTER_DATABASE_URL": exporter_dsn(cluster, DATABASE),
        "HOMEPAGE_EXPORTER_LOCALES": "en,de",
        "HOMEPAGE_EXPORTER_MEDIA_STORAGE_QUOTA_BYTES": "5000000000",
        "HOMEPAGE_EXPORTER_CONNECT_TIMEOUT": "2s",
        **scenario.env,
    }
    with idle_sessions(cluster, scenario.idle_connections):
        try:
            result = subprocess.run(
                [sys.executable, "-m", "exporter", "once"],
                env=env, capture_output=True, text=True, check=False, timeout=120,
            )  # fmt: skip
        finally:
            if scenario.stop_database:
                cluster.start()
    assert "homepage_exporter_" in result.stdout, result.stderr
    return aged(result.stdout, dict(scenario.aged))


def aged(text: str, seconds: dict[str, int]) -> str:
    """The exposition as if read later: each named timestamp `seconds` further in the past."""
    lines = []
    for line in text.splitlines():
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        if name in seconds:
            head, value = line.rsplit(" ", 1)
            line = f"{head} {float(value) - seconds[name]!r}"
        lines.append(line)
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def idle_sessions(cluster: Cluster, n: int) -> Iterator[None]:
    """`n` psql sessions connected and idle (waiting on their input), as a pooler holds them."""
    count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'idle-pool'"
    sessions = [
        subprocess.Popen(
            [
                str(cluster.psql_binary),
                "-X",
                "-q",
                "-h",
                str(cluster.base),
                "-p",
                str(cluster.port),
                "-U",
                cluster.superuser,
                "-d",
                DATABASE,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PGAPPNAME": "idle-pool"},
        )
        for _ in range(n)
    ]
    try:
        if n:
            wait_for(lambda: cluster.psql(count).strip() == str(n), 30, f"{n} idle sessions")
        yield
    finally:
        for session in sessions:
            assert session.stdin is not None
            session.stdin.close()
        for session in sessions:
            session.wait(timeout=30)
        if n:
            wait_for(lambda: cluster.psql(count).strip() == "0", 30, "the idle sessions to end")


def input_series(text: str, minutes: int) -> list[dict[str, str]]:
    """The exposition held for `minutes`; timestamps keep their age (promtool's clock starts
    at 0); counters hold still."""
    now = time.time()
    series = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_created", "_info")) and family.type == "counter":
                continue
            labels = "".join(f', {k}="{v}"' for k, v in sorted(sample.labels.items()))
            values = f"{sample.value!r}x{minutes}"
            if sample.name.endswith("_timestamp_seconds") and sample.value > 1e9:
                values = f"{sample.value - now!r}+60x{minutes}"
            elif sample.value != sample.value:  # NaN
                continue
            series.append({"series": f"{sample.name}{{{INSTANCE}{labels}}}", "values": values})
    # Prometheus's own series for the scrape.
    series.append({"series": f"up{{{INSTANCE}}}", "values": f"1x{minutes}"})
    return series


def firing(text: str, minutes: int, tmp: Path) -> set[tuple[str, str, frozenset[tuple[str, str]]]]:
    """(alert, severity, labels) firing after `minutes`, through promtool and the shipped rules."""
    assert PROMTOOL is not None
    shutil.copy(RULES, tmp / RULES.name)
    found: set[tuple[str, str, frozenset[tuple[str, str]]]] = set()
    # promtool only compares against an expectation: ask for none and read what it got.
    suite = {
        "rule_files": [RULES.name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series(text, minutes + 5),
                "promql_expr_test": [
                    {
                        "expr": 'ALERTS{alertstate="firing"}',
                        "eval_time": f"{minutes}m",
                        "exp_samples": [],
                    }
                ],
            }
        ],
    }
    path = tmp / "scenario.test.yml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False, width=400))
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode == 0:
        return found
    output = result.stdout + result.stderr
    got = output.split("got:", 1)[1] if "got:" in output else ""
    for labels in re.findall(r"\{([^{}]*alertname=[^{}]*)\}", got):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        rest = frozenset((k, v) for k, v in pairs.items() if k not in ("alertname", "severity"))
        found.add((pairs["alertname"], pairs["severity"], rest))
    assert found, output[-3000:]
    return found


def _matches(matchers: list[str], labels: dict[str, str]) -> bool:
    for matcher in matchers:
        name, op, value = re.fullmatch(r'(\w+)(=~|!~|!=|=)"(.*)"', matcher).groups()  # type: ignore[union-attr]
        actual = labels.get(name, "")
        ok = {
            "=": actual == value,
            "!=": actual != value,
            "=~": re.fullmatch(value, actual) is not None,
            "!~": re.fullmatch(value, actual) is None,
        }[op]
        if not ok:
            return False
    return True


def after_inhibition(
    alerts: set[tuple[str, str, frozenset[tuple[str, str]]]],
) -> set[tuple[str, str]]:
    """What Alertmanager sends, with the inhibit rules of deploy/alertmanager.yml."""
    rules = yaml.safe_load(ALERTMANAGER.read_text())["inhibit_rules"]
    full = [{"alertname": a, "severity": s, **dict(rest)} for a, s, rest in alerts]
    sent = set()
    for target in full:
        inhibited = any(
            _matches(rule["target_matchers"], target)
            and any(
                source is not target
                and _matches(rule["source_matchers"], source)
                and all(source.get(k) == target.get(k) for k in rule.get("equal", []))
                for source in full
            )
            for rule in rules
        )
        if not inhibited:
            sent.add((target["alertname"], target["severity"]))
    return sent


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
@pytest.mark.parametrize("scenario", BENIGN + INCIDENTS, ids=lambda s: s.name)
def test_alert_quality(cluster: Cluster, scenario: Scenario, tmp_path: Path) -> None:
    text = exposition(cluster, scenario)
    sent = after_inhibition(firing(text, scenario.within, tmp_path))
    if scenario.kind == "benign":
        assert sent == set(), f"false alerts: {sorted(sent)}"
    else:
        assert scenario.expect <= sent, (
            f"missed {sorted(scenario.expect - sent)}; sent {sorted(sent)}"
        )
        assert sent <= scenario.expect, f"extra alerts {sorted(sent - scenario.expect)}"


def report() -> str:
    """docs/alerts.md's figures, from the scenarios' definitions."""
    lines = [
        "# Alert quality",
        "",
        "Generated from `tests/test_alert_quality.py` (`python -m tests.test_alert_quality`).",
        "Each scenario is a real database state read by the real exporter; its exposition is held",
        "for the scenario's window and fed to the shipped rules through promtool; what would be",
        "sent is taken after deploy/alertmanager.yml's inhibition rules. The suite runs in",
        "`./scripts/test.sh`; a false page, a false ticket or a missed incident fails it.",
        "",
        f"- Benign operations: {len(BENIGN)}, false pages allowed: 0, false tickets allowed: 0.",
        f"- Incidents: {len(INCIDENTS)}, each must send exactly its alerts within its window.",
        "",
        "| scenario | kind | window | alerts sent |",
        "|---|---|---|---|",
    ]
    for s in BENIGN + INCIDENTS:
        expect = ", ".join(f"{a} ({sev})" for a, sev in sorted(s.expect)) or "none"
        lines.append(f"| {s.name} | {s.kind} | {s.within} min | {expect} |")
    return "\n".join(lines) + "\n"


def test_docs_alerts_md_is_current() -> None:
    assert (ROOT / "docs" / "alerts.md").read_text() == report(), (
        "docs/alerts.md is stale: python -m tests.test_alert_quality > docs/alerts.md"
    )


if __name__ == "__main__":
    sys.stdout.write(report())
