"""`triage` on the known states of each runbook incident path, and on a healthy homepage.

Each state is made the way it happens in production (an accidental UPDATE, a dropped policy, a
broken function, a paused cron job, a forgotten session holding a lock...), and triage runs as
its own process, as the exporter role, read-only, as on-call would run it at 3 a.m.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.demo.cluster import Cluster, free_port
from exporter.demo.database import sql_file
from exporter.triage.drilldown import QUERY_PREFIX_CHARS
from tests.conftest import CMS, exporter_dsn
from tests.harness import wait_for
from tests.runbook_doc import sql_blocks

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
# A healthy homepage: the demo seed, with its failed schedules from long ago and nothing due.
HEALTHY = """
UPDATE section_schedules SET publish_at = now() + interval '1 day' WHERE status = 'pending';
UPDATE section_schedules SET processed_at = now() - interval '3 days' WHERE status = 'failed';
ANALYZE;
"""


def run(
    database_url: str, *args: str, targets: Path | None = None, locales: str = "en,de,fr"
) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEPAGE_EXPORTER_")}
    env.pop("DATABASE_URL", None)
    env.update({"DATABASE_URL": database_url, "HOMEPAGE_EXPORTER_LOCALES": locales})
    if targets is not None:
        env["HOMEPAGE_EXPORTER_TARGETS_FILE"] = str(targets)
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "triage", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr + result.stdout
    return result.returncode, result.stdout, result.stderr


def report(pg: Cluster, database: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = run(exporter_dsn(pg, database), "--json")
    data = json.loads(out)
    assert data["exit_code"] == code
    return code, data


def finding(data: dict[str, Any], severity: str, path: str) -> dict[str, Any]:
    found = [f for f in data["findings"] if f["severity"] == severity and f["path"] == path]
    assert found, json.dumps(data["findings"], indent=1)[:3000]
    return found[0]  # type: ignore[no-any-return]


@pytest.fixture
def homepage(pg: Cluster, db: str) -> str:
    """A fresh database with a healthy, realistic homepage (three locales)."""
    pg.psql_file(sql_file("seed.sql"), database=db)
    pg.psql(HEALTHY, database=db)
    return db


def blocked_sessions(pg: Cluster, database: str) -> int:
    """Sessions of `database` waiting on another's lock, as the server says now."""
    sql = "SELECT count(*) FROM pg_stat_activity WHERE cardinality(pg_blocking_pids(pid)) > 0"
    return int(pg.psql(sql, database=database).strip())


def test_a_healthy_homepage_is_no_incident(pg: Cluster, homepage: str) -> None:
    code, out, _ = run(exporter_dsn(pg, homepage))
    assert code == 0, out
    assert "no incident" in out.splitlines()[0]
    assert "[P" not in out


def test_p1_a_sections_disabled_by_an_accidental_update(pg: Cluster, homepage: str) -> None:
    pg.psql("UPDATE homepage_sections SET is_active = false WHERE locale = 'de'", database=homepage)
    code, data = report(pg, homepage)
    assert code == 3
    assert data["verdict"] == "P1 homepage not loading"
    a = finding(data, "P1", "A")
    assert a["title"] == "every published section of de is switched off"
    assert a["alert"] == "HomepageNoLiveSections"
    assert {r["section_key"] for r in a["rows"]} >= {"hero-banner", "new-arrivals"}
    assert {r["locale"] for r in a["rows"]} == {"de"}  # the other locales are fine, not named
    assert a["runbook"] == "docs/runbook.md#homepagenolivesections"
    # The printed statement, run as the CMS's owner, brings the homepage back.
    (statement,) = a["statements"]
    pg.psql(statement, database=homepage)
    assert report(pg, homepage)[0] == 0


def test_p1_b_a_policy_that_hides_the_homepage_from_the_public(pg: Cluster, homepage: str) -> None:
    pg.psql(
        'DROP POLICY "Published sections viewable by everyone" ON homepage_sections;'
        ' CREATE POLICY "Published sections viewable by everyone" ON homepage_sections'
        " FOR SELECT USING (status = 'archived')",
        database=homepage,
    )
    code, data = report(pg, homepage)
    assert code == 3
    b = finding(data, "P1", "B")
    assert (
        b["title"] == "anon sees no section for de, en, fr: a row level security policy hides them"
    )
    assert [f["alert"] for f in data["findings"]] == ["HomepageInvisibleToPublic"]  # one diagnosis
    policies = {r["policy"]: r for r in b["rows"]}
    assert (
        "(status = 'archived'::text)"
        in policies["Published sections viewable by everyone"]["using_expression"]
    )
    assert any("CREATE POLICY" in s for s in b["statements"])
    pg.psql(" ".join(b["statements"]), database=homepage)
    assert report(pg, homepage)[0] == 0


def test_p1_c_a_broken_render_function(pg: Cluster, homepage: str) -> None:
    # A migration tightened grants and forgot the public role.
    pg.psql(
        "REVOKE EXECUTE ON FUNCTION get_homepage_content(text) FROM PUBLIC, anon",
        database=homepage,
    )
    code, data = report(pg, homepage)
    assert code == 3
    c = finding(data, "P1", "C")
    assert "permission denied for function get_homepage_content" in c["seen"]
    assert c["rows"][0]["function"] == "get_homepage_content(text)"
    assert c["statements"] == [
        "GRANT EXECUTE ON FUNCTION get_homepage_content(text) TO anon, authenticated;"
    ]
    pg.psql(c["statements"][0], database=homepage)
    assert report(pg, homepage)[0] == 0


def test_p2_overdue_schedules_and_a_function_that_lost_security_definer(
    pg: Cluster, homepage: str
) -> None:
    pg.psql(
        "INSERT INTO section_schedules (section_id, version_id, publish_at, status)"
        " SELECT hs.id, hs.published_version_id, now() - interval '47 minutes', 'pending'"
        " FROM homepage_sections hs WHERE hs.section_key = 'sale-teaser' AND hs.locale = 'en';"
        " ALTER FUNCTION process_scheduled_publishes() SECURITY INVOKER",
        database=homepage,
    )
    code, out, _ = run(exporter_dsn(pg, homepage))
    assert code == 2, out
    assert out.splitlines()[0].endswith("P2 scheduled publishes not working")
    assert "overdue" in out
    assert "section_key=sale-teaser  locale=en" in out  # the offending rows, with their ages
    assert "age=47m" in out
    assert "[P2 C] process_scheduled_publishes() is not SECURITY DEFINER" in out
    assert "ALTER FUNCTION process_scheduled_publishes() SECURITY DEFINER;" in out
    assert "read: docs/runbook.md#homepagepublishfunctionnotsecuritydefiner" in out


def test_p2_b_publishes_failing_with_their_errors(pg: Cluster, homepage: str) -> None:
    pg.psql(
        "UPDATE section_schedules SET status = 'failed', processed_at = now() - interval '5 min',"
        " error_message = 'version ' || version_id || ' does not belong to section'"
        " WHERE id IN (SELECT id FROM section_schedules ORDER BY id LIMIT 6)",
        database=homepage,
    )
    code, data = report(pg, homepage)
    assert code == 2
    b = finding(data, "P2", "B")
    assert len(b["rows"]) == 6
    assert all("does not belong to section" in r["error"] for r in b["rows"])


@pytest.fixture
def cron(pg: Cluster) -> Iterator[str]:
    """The cms database, where pg_cron runs the CMS job; its job and runs put back after."""
    if "pg_cron" not in pg.preload:
        pytest.skip("pg_cron is not available here")
    pg.psql(
        "TRUNCATE homepage_sections CASCADE; TRUNCATE media_assets;"
        " SELECT cron.alter_job(jobid, schedule := '0 0 1 1 *') FROM cron.job"
        " WHERE jobname = 'process-scheduled-publishes'; DELETE FROM cron.job_run_details;",
        database=CMS,
    )
    pg.psql_file(sql_file("seed.sql"), database=CMS)
    pg.psql(HEALTHY, database=CMS)
    yield CMS
    pg.psql(
        "SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = 'process-scheduled-publishes';"
        " SELECT cron.schedule('process-scheduled-publishes', '*/5 * * * *',"
        " $$SELECT process_scheduled_publishes()$$); DELETE FROM cron.job_run_details;"
        " TRUNCATE homepage_sections CASCADE; TRUNCATE media_assets;",
        database=CMS,
    )


def test_p2_a_the_cron_job_paused(pg: Cluster, cron: str) -> None:
    assert run(exporter_dsn(pg, cron))[0] == 0  # healthy first, cron views and all
    pg.psql(
        "UPDATE cron.job SET active = false WHERE jobname = 'process-scheduled-publishes'",
        database=cron,
    )
    code, data = report(pg, cron)
    assert code == 2
    a = finding(data, "P2", "A")
    assert a["rows"][0]["jobname"] == "process-scheduled-publishes"
    assert a["rows"][0]["active"] is False
    (job,) = [r["jobid"] for r in a["rows"]]
    assert a["statements"] == [f"SELECT cron.alter_job(job_id := {job}, active := true);"]
    pg.psql(a["statements"][0], database=cron)
    assert run(exporter_dsn(pg, cron))[0] == 0


def test_p2_b_the_cron_jobs_runs_fail(pg: Cluster, cron: str) -> None:
    pg.psql(
        "INSERT INTO cron.job_run_details (jobid, job_pid, database, username, command, status,"
        " return_message, start_time, end_time)"
        " SELECT jobid, 1, 'cms', 'postgres', command, 'failed',"
        " 'ERROR:  function process_scheduled_publishes() does not exist',"
        " now() - interval '3 minutes', now() - interval '3 minutes' + interval '1 second'"
        " FROM cron.job WHERE jobname = 'process-scheduled-publishes'",
        database=cron,
    )
    code, data = report(pg, cron)
    assert code == 2
    b = finding(data, "P2", "B")
    assert b["rows"][0]["status"] == "failed"
    assert "process_scheduled_publishes() does not exist" in b["rows"][0]["message"]


def test_p3_a_forgotten_session_blocks_the_homepage(pg: Cluster, homepage: str) -> None:
    """A session holds a lock in an open transaction; the public render waits behind it."""
    holder = pg.psql_session(
        "BEGIN; LOCK TABLE section_products IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60);",
        homepage,
    )
    waiter = None
    try:
        wait_for(
            lambda: (
                pg.psql(
                    "SELECT count(*) FROM pg_locks WHERE granted AND mode = 'AccessExclusiveLock'"
                    " AND relation = 'section_products'::regclass",
                    database=homepage,
                ).strip()
                == "1"
            ),
            10,
            "the lock to be held",
        )
        waiter = pg.psql_session("SELECT count(*) FROM section_products /* homepage */", homepage)
        wait_for(
            lambda: blocked_sessions(pg, homepage) == 1,
            10,
            "a blocked session",
        )
        started = time.monotonic()
        code, data = report(pg, homepage)
        # Its own deadlines: triage never waits on the lock (held 60 s) to be released.
        assert time.monotonic() - started < 40
        assert code in (1, 3), data  # P3, or P1 if the render itself is the one blocked
        p3 = [f for f in data["findings"] if f["severity"] == "P3" and "blocked" in f["title"]]
        assert p3, data["findings"]
        rows = {r["pid"]: r for r in p3[0]["rows"]}
        waiting = [r for r in rows.values() if r["blocked_by"]]
        assert waiting
        blocker = waiting[0]["blocked_by"][0]
        assert rows[blocker]["blocking"] is True
        assert f"SELECT pg_cancel_backend({blocker});" in p3[0]["statements"]
        # Only a prefix of other sessions' SQL is shown.
        assert all(len(r["query_prefix"] or "") <= QUERY_PREFIX_CHARS for r in rows.values())
        # The printed cancel, run: the blocker's statement stops, its lock goes, nothing waits.
        pg.psql(f"SELECT pg_cancel_backend({blocker});", database=homepage)
        wait_for(
            lambda: blocked_sessions(pg, homepage) == 0,
            20,
            "the waiting session to go on",
        )
    finally:
        for proc in (waiter, holder):
            if proc is not None:
                proc.kill()
                proc.wait()


def test_p3_c_a_missing_runbook_index(pg: Cluster, homepage: str) -> None:
    pg.psql("DROP INDEX idx_section_schedules_pending", database=homepage)
    code, data = report(pg, homepage)
    assert code == 1
    c = finding(data, "P3", "C")
    assert c["rows"] == [{"index": "idx_section_schedules_pending", "state": "missing"}]
    assert c["statements"] == [
        "CREATE INDEX CONCURRENTLY idx_section_schedules_pending"
        " ON section_schedules (publish_at) WHERE status = 'pending';"
    ]


def test_triage_never_writes(pg: Cluster, homepage: str) -> None:
    """Every incident path's fix is printed, not run: the state is unchanged after triage."""
    pg.psql("UPDATE homepage_sections SET is_active = false WHERE locale = 'fr'", database=homepage)
    before = pg.psql(
        "SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM homepage_sections t",
        database=homepage,
    )
    assert run(exporter_dsn(pg, homepage))[0] == 3
    after = pg.psql(
        "SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM homepage_sections t",
        database=homepage,
    )
    assert before == after


def test_a_database_that_is_down_is_a_one_line_verdict() -> None:
    closed = free_port()
    code, out, _ = run(f"postgresql://homepage_exporter:pw@127.0.0.1:{closed}/postgres")
    assert code == 4
    assert out.count("\n") == 1
    assert out.startswith(f"triage (homepage_exporter@127.0.0.1:{closed}/postgres): cannot tell:")
    assert "the database is unreachable" in out
    assert "pw" not in out.replace("postgres", "")


def test_with_a_targets_file_target_picks_the_database(
    pg: Cluster, homepage: str, db: str, tmp_path: Path
) -> None:
    """`--target NAME` triages that database with its own locales; without it, exit 2."""
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        f"targets:\n  - name: eu\n    database_url: {exporter_dsn(pg, homepage)}\n"
        f"  - name: empty\n    database_url: {exporter_dsn(pg, db)}\n    locales: [nl]\n"
    )
    url = exporter_dsn(pg, homepage)
    eu = run(url, "--target", "eu", targets=targets)
    empty = run(url, "--target", "empty", "--json", targets=targets)
    neither = run(url, targets=targets)
    assert eu[0] == 0, eu[1]
    assert eu[1].startswith("triage (eu): no incident")
    assert empty[0] == 3
    assert json.loads(empty[1])["findings"][0]["title"] == "no published section at all for nl"
    assert json.loads(empty[1])["target"] == "empty"
    assert neither[0] == 2
    assert "triage: --target names one of the targets file's targets: eu, empty" in neither[2]


# What triage must say of each incident scenario of the alert-quality suite: exit code, and the
# runbook path it names (held in tests/test_incident_agreement.py).

TRIAGE_OF = {
    "P1 path A: the kill switch left on": (3, "P1", "A"),
    "P1 path B: an RLS policy hides the homepage": (3, "P1", "B"),
    "P1 path C: get_homepage_content() is gone": (3, "P1", "C"),
    "P2 path A: the cron job is gone, schedules pile up": (2, "P2", "A"),
    "P2 path B: publishes fail": (2, "P2", "B"),
    "P2 path C: the cron run fails on permissions": (2, "P2", "C"),
    "P3: a runaway query and a bloated table": (1, "P3", "A"),
    "The database is unreachable": (4, "", ""),
}


# --- the states of issue #18: verdicts that match the runbook, statements safe to paste -------

LIVE_VERSION = (
    "SELECT sv.version_number FROM homepage_sections hs"
    " JOIN section_versions sv ON sv.id = hs.published_version_id"
    " WHERE hs.locale = 'en' AND hs.section_key = 'hero-banner'"
)
HERO = "(SELECT id FROM homepage_sections WHERE locale = 'en' AND section_key = 'hero-banner')"


def _versions(pg: Cluster, database: str, numbers: range) -> None:
    pg.psql(
        "INSERT INTO section_versions (section_id, version_number, content)"
        f" SELECT {HERO}, (SELECT max(version_number) FROM section_versions"
        f" WHERE section_id = {HERO}) + g, jsonb_build_object('v', g)"
        f" FROM generate_series({numbers.start}, {numbers.stop - 1}) g",
        database=database,
    )


def _fail_schedules_of(pg: Cluster, database: str, where: str, minutes_ago: int) -> None:
    pg.psql(
        "INSERT INTO section_schedules (section_id, version_id, publish_at, status,"
        " error_message, processed_at)"
        f" SELECT {HERO}, sv.id, now() - interval '{minutes_ago} minutes', 'failed',"
        f" 'canceling statement due to lock timeout', now() - interval '{minutes_ago} minutes'"
        f" FROM section_versions sv WHERE sv.section_id = {HERO} AND {where}",
        database=database,
    )


def test_failed_publishes_of_older_versions_are_never_requeued(pg: Cluster, homepage: str) -> None:
    """Three versions failed to publish during a lock timeout; the section has since gone live
    with a newer one. Re-queueing them would roll the homepage back: triage offers nothing."""
    _versions(pg, homepage, range(1, 5))
    _fail_schedules_of(pg, homepage, "sv.version_number > 1 AND sv.content ? 'v'"
                       " AND (sv.content->>'v')::int <= 3", 30)  # fmt: skip
    newest = f"(SELECT id FROM section_versions WHERE section_id = {HERO} AND content->>'v' = '4')"
    pg.psql(f"SELECT publish_section_version({HERO}, {newest})", database=homepage)
    live = pg.psql(LIVE_VERSION, database=homepage)
    code, data = report(pg, homepage)
    assert code == 2, data
    b = finding(data, "P2", "B")
    assert b["alert"] == "HighPublishFailureRate"
    assert b["alert_severity"] == "warning"
    assert len(b["rows"]) == 3
    assert not any(s.startswith("UPDATE section_schedules") for s in b["statements"])
    assert "nothing to re-queue" in b["next_step"]
    pg.psql("SELECT * FROM process_scheduled_publishes()", database=homepage)
    assert pg.psql(LIVE_VERSION, database=homepage) == live


def test_a_newer_failed_version_is_requeued_and_goes_live(pg: Cluster, homepage: str) -> None:
    """Of a section's failed schedules only the newest, newer than the live version, is
    re-queued; after the printed statement and the job's next run it is live, nothing older."""
    _versions(pg, homepage, range(1, 4))
    _fail_schedules_of(pg, homepage, "sv.content ? 'v'", 20)
    live = int(pg.psql(LIVE_VERSION, database=homepage))
    code, data = report(pg, homepage)
    assert code == 2
    (statement,) = finding(data, "P2", "B")["statements"]
    (requeued,) = re.findall(r"'([0-9a-f-]{36})'", statement)  # one schedule, by id
    touched = f"SELECT updated_at FROM section_schedules WHERE id = '{requeued}'"
    before = pg.psql(touched, database=homepage)
    pg.psql(statement, database=homepage)
    # Dated as the CMS dates its own changes (docs/runbook.md's re-queue does the same).
    assert (
        pg.psql(
            f"SELECT updated_at > '{before.strip()}'::timestamptz AND status = 'pending'"
            f" FROM section_schedules WHERE id = '{requeued}'",
            database=homepage,
        ).strip()
        == "t"
    )
    pg.psql("SELECT * FROM process_scheduled_publishes()", database=homepage)
    now_live = int(pg.psql(LIVE_VERSION, database=homepage))
    newest = pg.psql(
        f"SELECT max(version_number) FROM section_versions WHERE section_id = {HERO}",
        database=homepage,
    )
    assert now_live == int(newest) > live
    # The two older failures still count for the hour, but nothing is offered again.
    code, data = report(pg, homepage)
    assert code == 2
    assert finding(data, "P2", "B")["statements"] == []


def test_overdue_schedules_that_would_roll_back_are_withdrawn_as_printed(
    pg: Cluster, homepage: str
) -> None:
    """ScheduledPublishLag's statements, as printed, with the job stuck: a due schedule of an
    older version and one of the live version itself are cancelled (dated), one of a newer
    version is published; nothing goes back."""
    _versions(pg, homepage, range(1, 2))  # one version newer than the live one
    live = int(pg.psql(LIVE_VERSION, database=homepage))
    made = pg.psql(
        "INSERT INTO section_schedules (section_id, version_id, publish_at, status, updated_at)"
        f" SELECT {HERO}, sv.id, now() - interval '40 minutes', 'pending',"
        " now() - interval '1 day' FROM section_versions sv"
        f" WHERE sv.section_id = {HERO} AND sv.version_number IN ({live - 1}, {live}, {live + 1})"
        " RETURNING id",
        database=homepage,
    ).split()
    code, data = report(pg, homepage)
    assert code == 2
    lag = next(f for f in data["findings"] if f["alert"] == "ScheduledPublishLag")
    assert "2 would publish a version no newer than the live one" in lag["seen"]
    cancel, process = lag["statements"]
    for statement in (cancel, process):
        pg.psql(statement, database=homepage)
    assert int(pg.psql(LIVE_VERSION, database=homepage)) == live + 1
    states = pg.psql(
        "SELECT sv.version_number, sc.status, sc.updated_at > now() - interval '1 hour'"
        " FROM section_schedules sc JOIN section_versions sv ON sv.id = sc.version_id"
        f" WHERE sc.id IN ({', '.join(repr(i) for i in made)}) ORDER BY 1",
        database=homepage,
    ).split()
    assert states == [
        f"{live - 1}|cancelled|t",
        f"{live}|cancelled|t",
        f"{live + 1}|completed|t",
    ]


SLOW_RENDER = """
ALTER FUNCTION get_homepage_content(text) RENAME TO get_homepage_content_fast;
CREATE FUNCTION get_homepage_content(p_locale text) RETURNS SETOF record
LANGUAGE plpgsql STABLE AS $$ BEGIN PERFORM pg_sleep(%s); END $$;
DROP FUNCTION get_homepage_content(text);
CREATE FUNCTION get_homepage_content(p_locale text)
RETURNS TABLE (section_id uuid, section_key text, section_type text, display_order integer,
  version_number integer, content jsonb, products jsonb, categories jsonb)
LANGUAGE plpgsql STABLE AS $$
BEGIN PERFORM pg_sleep(%s); RETURN QUERY SELECT * FROM get_homepage_content_fast(p_locale); END
$$;
GRANT EXECUTE ON FUNCTION get_homepage_content(text) TO anon, authenticated;
"""


def test_three_slow_locales_are_slow_not_down(pg: Cluster, homepage: str) -> None:
    """1.1 s per locale is the runbook's critical load time (P3), not a blank homepage."""
    pg.psql(SLOW_RENDER % (1.1, 1.1), database=homepage)
    code, data = report(pg, homepage)
    assert code == 1, data["verdict"]
    slow = finding(data, "P3", "")
    assert slow["alert"] == "HomepageSlowQuery"
    assert slow["alert_severity"] == "critical"
    assert {r["locale"] for r in slow["rows"] if "render_seconds" in r} == {"en", "de", "fr"}
    assert data["failed_checks"] == {}


def test_someone_elses_slow_query_is_no_cms_incident(pg: Cluster, homepage: str) -> None:
    """The shop's analytics sleeping 20 s on its own table: not ours, no cancel offered."""
    pg.psql("CREATE TABLE orders_daily (d date)", database=homepage)
    analytics = pg.psql_session(
        "SELECT count(*), pg_sleep(20) FROM orders_daily /* analytics */", homepage
    )
    try:
        # Poll the server's own age of the query, not a sleep: older than every check's
        # slow-query threshold (1 s in the drill-downs).
        wait_for(
            lambda: (
                pg.psql(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                    " AND query LIKE '%analytics%' AND pid <> pg_backend_pid()"
                    " AND clock_timestamp() - query_start > interval '2 seconds'",
                    database=homepage,
                ).strip()
                == "1"
            ),
            15,
            "the analytics query to run for 2 s",
        )
        code, data = report(pg, homepage)
        assert code == 0, data["findings"]
        assert not any("pg_cancel_backend" in s for f in data["findings"] for s in f["statements"])
    finally:
        analytics.kill()
        analytics.wait()


def test_a_failed_check_does_not_hide_a_p2(pg: Cluster, homepage: str) -> None:
    """A lock makes a P3 check time out; the overdue schedule (P2) still decides."""
    pg.psql(
        "INSERT INTO section_schedules (section_id, version_id, publish_at, status)"
        f" SELECT {HERO}, published_version_id, now() - interval '20 minutes', 'pending'"
        " FROM homepage_sections WHERE id = " + HERO,
        database=homepage,
    )
    holder = pg.psql_session(
        "BEGIN; LOCK TABLE media_assets IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60);", homepage
    )
    try:
        wait_for(
            lambda: (
                pg.psql(
                    "SELECT count(*) FROM pg_locks WHERE granted AND mode = 'AccessExclusiveLock'"
                    " AND relation = 'media_assets'::regclass",
                    database=homepage,
                ).strip()
                == "1"
            ),
            10,
            "the lock to be held",
        )
        code, data = report(pg, homepage)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2, data
    assert data["severity"] == "P2"
    # table_stats measures media_assets' size, which waits on the lock past its deadline.
    assert "table_stats" in data["failed_checks"]
    assert finding(data, "P2", "")["alert"] == "ScheduledPublishLag"


def test_a_database_without_the_cms_is_cannot_tell(pg: Cluster) -> None:
    """The wrong DATABASE_URL: not 'homepage not loading', and the URL without its password."""
    url = exporter_dsn(pg, "postgres")
    code, out, _ = run(url)
    assert code == 4, out
    assert "this database has no Homepage CMS schema" in out.splitlines()[0]
    assert f"homepage_exporter@127.0.0.1:{pg.port}/postgres" in out
    assert pg.url("x", "y", "z").split("@")[0].split(":")[-1] not in out  # no password shown
    assert "migration" not in out


def test_the_json_names_the_one_database(pg: Cluster, homepage: str) -> None:
    code, data = report(pg, homepage)
    assert code == 0
    assert data["target"] == f"homepage_exporter@127.0.0.1:{pg.port}/{homepage}"
    assert data["severity"] is None


def test_p1_b_a_policy_that_hides_the_products_from_the_public(pg: Cluster, homepage: str) -> None:
    """The products' read policy narrowed to signed-in users: visitors get every section without
    its products. Triage names the table and gives them back, to the live sections only."""
    pg.psql(
        # A product grid switched off on purpose, and the policy narrowed.
        "UPDATE homepage_sections SET is_active = false"
        " WHERE locale = 'fr' AND section_key = 'new-arrivals';"
        'ALTER POLICY "Section products viewable by everyone" ON section_products TO authenticated',
        database=homepage,
    )
    code, data = report(pg, homepage)
    assert code == 3
    assert [f["alert"] for f in data["findings"]] == ["HomepageCatalogHidden"]
    b = finding(data, "P1", "B")
    assert (
        b["title"] == "sections arrive without their products for de (anon), en (anon), fr (anon)"
    )
    assert "no policy on section_products lets anon read it" in b["seen"]
    assert {r["table"] for r in b["rows"]} == {"section_products"}
    assert b["runbook"] == "docs/runbook.md#homepagecataloghidden"
    assert any("CREATE POLICY" in s and "TO anon " in s for s in b["statements"])
    pg.psql(" ".join(b["statements"]), database=homepage)
    assert report(pg, homepage)[0] == 0
    # Given back to the live sections only: the switched-off grid's products stay private.
    grid = pg.psql(
        "SELECT id FROM homepage_sections WHERE locale = 'fr' AND section_key = 'new-arrivals'",
        database=homepage,
    ).strip()
    hidden = f"SELECT count(*) FROM section_products WHERE section_id = '{grid}'"
    assert pg.psql(hidden, database=homepage).strip() == "8"
    assert pg.psql(f"SET ROLE anon; {hidden}", database=homepage).strip() == "0"
    live = "SELECT count(*) FROM section_products"
    assert pg.psql(f"SET ROLE anon; {live}", database=homepage).strip() == str(
        int(pg.psql(live, database=homepage)) - 8
    )


def test_the_runbooks_fix_gives_the_products_and_categories_back(
    pg: Cluster, homepage: str
) -> None:
    """docs/runbook.md's statements for HomepageCatalogHidden, as printed, on both tables: one
    policy narrowed to signed-in users, the other narrowed by its USING clause."""
    pg.psql(
        'ALTER POLICY "Section products viewable by everyone" ON section_products'
        " TO authenticated;"
        ' ALTER POLICY "Section categories viewable by everyone" ON section_categories'
        " USING (display_order > 3)",
        database=homepage,
    )
    code, data = report(pg, homepage)
    assert code == 3
    assert [f["alert"] for f in data["findings"]] == ["HomepageCatalogHidden"]
    _, fix = sql_blocks("HomepageCatalogHidden")
    pg.psql_file_text(fix, homepage)
    assert report(pg, homepage)[0] == 0


# Every statement triage prints for a human is run here on the state it diagnosed, and triage
# must then find nothing: the fix fixes, and nothing else was needed.
BROKEN = {
    "the versions' read policy narrowed to signed-in users": (
        'ALTER POLICY "Published versions viewable by everyone" ON section_versions'
        " TO authenticated",
        "HomepageContentHidden",
    ),
    "SELECT on the versions revoked from the public": (
        "REVOKE SELECT ON section_versions FROM anon, authenticated",
        "HomepageRenderFailing",
    ),
    "row level security switched off on a CMS table": (
        "ALTER TABLE section_categories DISABLE ROW LEVEL SECURITY",
        "HomepageTableRLSDisabled",
    ),
    "the publish function lost SECURITY DEFINER": (
        "ALTER FUNCTION process_scheduled_publishes() SECURITY INVOKER",
        "HomepagePublishFunctionNotSecurityDefiner",
    ),
    "SELECT on the sections revoked from the public": (
        "REVOKE SELECT ON homepage_sections FROM anon, authenticated",
        "HomepageRenderFailing",
    ),
    "a runbook index dropped": (
        "DROP INDEX idx_homepage_sections_render",
        "HomepageIndexMissing",
    ),
    # The runbook's "Verify data integrity" join, each way a live pointer goes wrong (an
    # audit's runbook-only CMS: triage blamed the versions' policy for a draft's NULL content).
    "the German hero pointed at the French hero's version": (
        "UPDATE homepage_sections d SET published_version_id = f.published_version_id"
        " FROM homepage_sections f WHERE d.locale = 'de' AND d.section_key = 'hero-banner'"
        " AND f.locale = 'fr' AND f.section_key = 'hero-banner'",
        "HomepageLiveSectionVersionWrong",
    ),
    "a live section pointed at a new draft": (
        "INSERT INTO section_versions (section_id, version_number, content)"
        ' SELECT id, 999, \'{"title": "unreviewed"}\' FROM homepage_sections'
        " WHERE locale = 'en' AND section_key = 'sale-teaser';"
        " UPDATE homepage_sections hs SET published_version_id = v.id FROM section_versions v"
        " WHERE v.section_id = hs.id AND v.version_number = 999",
        "HomepageContentHidden",
    ),
    "a live section's pointer cleared": (
        "UPDATE homepage_sections SET published_version_id = NULL"
        " WHERE locale = 'fr' AND section_key = 'newsletter'",
        "HomepageContentHidden",
    ),
}


@pytest.mark.parametrize("broken", list(BROKEN), ids=list(BROKEN))
def test_the_printed_statements_fix_what_triage_found(
    pg: Cluster, homepage: str, broken: str
) -> None:
    sql, alert = BROKEN[broken]
    pg.psql(sql, database=homepage)
    code, data = report(pg, homepage)
    assert code != 0, data
    (found,) = [f for f in data["findings"] if f["alert"] == alert]
    assert found["statements"], found
    for statement in found["statements"]:
        pg.psql(statement, database=homepage)
    code, data = report(pg, homepage)
    assert code == 0, data["findings"]
    # Whatever was live before is live again: each live section shows its own published version.
    assert (
        pg.psql(
            "SELECT count(*) FROM homepage_sections hs LEFT JOIN section_versions sv"
            " ON sv.id = hs.published_version_id WHERE hs.is_active AND hs.status = 'published'"
            " AND (sv.id IS NULL OR sv.section_id <> hs.id OR NOT sv.is_published)",
            database=homepage,
        ).strip()
        == "0"
    )


def test_the_runbooks_statements_for_a_wrong_live_version(pg: Cluster, homepage: str) -> None:
    """docs/runbook.md's HomepageLiveSectionVersionWrong: its triage finds the section, its fix
    (filled in as the page says) points it back at its own published version."""
    pg.psql(
        "UPDATE homepage_sections d SET published_version_id = f.published_version_id"
        " FROM homepage_sections f WHERE d.locale = 'de' AND d.section_key = 'hero-banner'"
        " AND f.locale = 'fr' AND f.section_key = 'hero-banner'",
        database=homepage,
    )
    look, fix = sql_blocks("HomepageLiveSectionVersionWrong")
    found = pg.psql(look, database=homepage).strip().splitlines()
    assert len(found) == 1, found
    assert "|de|hero-banner|" in found[0]
    assert found[0].endswith("|t|fr|hero-banner")
    section = found[0].split("|")[0]
    own = pg.psql(
        f"SELECT id FROM section_versions WHERE section_id = '{section}' AND is_published",
        database=homepage,
    ).strip()
    pg.psql(
        fix.replace("<section-uuid>", section).replace("<its-own-version-uuid>", own),
        database=homepage,
    )
    assert pg.psql(look, database=homepage).strip() == ""
    assert report(pg, homepage)[0] == 0
