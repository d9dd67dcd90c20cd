"""docs/runbook.md's statements, taken from the page and run as it says (as `postgres`, on a
database built the way Supabase builds one), and what each leaves behind; next to them, the
statements the page used to print, and why they were wrong there."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from exporter.demo.cluster import ClusterError
from exporter.demo.database import role_script
from exporter.runner import run_query
from exporter.settings import load_settings
from exporter.snapshot import Outcome
from exporter.targets import load_targets
from tests.conftest import BINDIRS
from tests.harness import EXPORTER_PASSWORD
from tests.pooler import PGBOUNCER
from tests.queries_harness import Values, shipped
from tests.runbook_doc import sql_blocks
from tests.supabase import PG_CRON_AS_SUPABASE_ADMIN, Supabase, psql_url, supabase

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PGBOUNCER is None, reason="pgbouncer is not installed"),
    pytest.mark.skipif(BINDIRS["system"]() is None, reason="no system PostgreSQL"),
]

CMS_JOB = "process-scheduled-publishes"
# The sections corrected for Supabase, and how many statements each prints: a statement added
# to one of them is run below, or this count fails.
SECTIONS = {
    "HomepageNoLiveSections": 3,
    "HomepageCronJobInactive": 3,
    "HomepageCronJobNotRunning": 3,
    "HomepagePublishFunctionNotSecurityDefiner": 1,
    "HomepageLongRunningQuery": 3,
    "HomepageExporterRoleChanged": 2,
}
# pg_cron 1.4 starts jobs on the minute: a run is due within 60 s of scheduling it.
CRON_RUN_DEADLINE_SECONDS = 90


@pytest.fixture(scope="module")
def project() -> Iterator[Supabase]:
    bindir = BINDIRS["system"]()
    assert bindir is not None
    with supabase(bindir) as fixture:
        yield fixture


@pytest.fixture
def cron(project: Supabase) -> None:
    if not project.has_cron:
        pytest.skip("pg_cron is not available here")


def as_postgres(project: Supabase, sql: str) -> str:
    """Run what the page prints as Supabase's `postgres`, over TLS; rows unaligned."""
    result = psql_url(project.cluster.psql_binary, project.postgres_url(), settings(sql))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def refused_as_postgres(project: Supabase, sql: str) -> str:
    """The error `postgres` gets for `sql` (which must fail)."""
    result = psql_url(project.cluster.psql_binary, project.postgres_url(), settings(sql))
    assert result.returncode != 0, f"{sql!r} ran as postgres: {result.stdout}"
    return result.stderr


def settings(sql: str) -> str:
    return "\\pset format unaligned\n\\pset tuples_only on\n" + sql


def admin(project: Supabase, sql: str) -> str:
    """What only Supabase itself (supabase_admin) does: seed states, the dashboard's actions."""
    return project.as_admin(sql).strip()


def poll(what: str, check: Callable[[], str]) -> str:
    """`check()` until it returns something, within the deadline for a cron run."""
    deadline = time.monotonic() + CRON_RUN_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {CRON_RUN_DEADLINE_SECONDS} s")


def test_every_statement_of_the_corrected_sections_is_run_here() -> None:
    assert {heading: len(sql_blocks(heading)) for heading in SECTIONS} == SECTIONS


# --- HomepageNoLiveSections: the kill switch and its record -------------------------------------


def en_sections(project: Supabase) -> dict[str, bool]:
    rows = admin(
        project, "SELECT section_key, is_active FROM homepage_sections WHERE locale = 'en'"
    )
    return {key: flag == "t" for key, flag in (row.split("|") for row in rows.splitlines())}


def anon_reads(project: Supabase, relation: str) -> str:
    """`SELECT count(*)` on `relation` as the public API's role: rows, or the error."""
    result = psql_url(
        project.cluster.psql_binary,
        project.postgres_url(),
        settings(f"BEGIN; SET LOCAL ROLE anon; SELECT count(*) FROM {relation}; ROLLBACK;"),
    )
    return result.stdout.strip() if result.returncode == 0 else result.stderr


def test_the_kill_switch_records_what_was_live_where_the_public_cannot_reach_it(
    project: Supabase,
) -> None:
    triage, kill_switch, undo = sql_blocks("HomepageNoLiveSections")
    admin(
        project,
        "DELETE FROM homepage_sections WHERE locale = 'en';"
        " INSERT INTO homepage_sections (section_key, locale, status, is_active) VALUES"
        " ('hero', 'en', 'published', true), ('grid', 'en', 'published', true),"
        " ('xmas-sale', 'en', 'published', false)",
    )
    assert sorted(row.split("|")[0] for row in as_postgres(project, triage).splitlines()) == [
        "grid",
        "hero",
        "xmas-sale",
    ]

    as_postgres(project, kill_switch)
    assert en_sections(project) == {"hero": False, "grid": False, "xmas-sale": False}
    assert anon_reads(project, "get_homepage_content('en')") == "0"  # the homepage is off
    created = re.search(r"CREATE TABLE (\w+)\.(\w+) AS", kill_switch)
    assert created is not None
    schema, record = created[1], ".".join(created.groups())
    assert as_postgres(project, f"SELECT count(*) FROM {record}") == "2"
    for role in ("anon", "authenticated"):
        assert (
            as_postgres(
                project,
                f"SELECT has_schema_privilege('{role}', '{schema}', 'USAGE'),"
                f" has_table_privilege('{role}', '{record}', 'SELECT, INSERT, UPDATE, DELETE')",
            )
            == "f|f"
        )
    assert "permission denied" in anon_reads(project, record)

    as_postgres(project, undo)
    assert en_sections(project) == {"hero": True, "grid": True, "xmas-sale": False}
    assert as_postgres(project, f"SELECT to_regclass('{record}') IS NULL") == "t"


def test_the_old_kill_switch_record_in_public_was_open_to_the_public(project: Supabase) -> None:
    """Supabase's default privileges give anon ALL on what postgres creates in public."""
    as_postgres(
        project,
        "CREATE TABLE public.kill_switch_old AS"
        " SELECT id FROM homepage_sections WHERE locale = 'en' AND is_active",
    )
    try:
        assert (
            as_postgres(
                project,
                "SELECT relrowsecurity, has_table_privilege('anon', oid, 'SELECT, INSERT, DELETE')"
                " FROM pg_class WHERE oid = 'public.kill_switch_old'::regclass",
            )
            == "f|t"
        )
        assert anon_reads(project, "public.kill_switch_old").isdigit()
    finally:
        as_postgres(project, "DROP TABLE public.kill_switch_old")


# --- HomepageCronJobInactive -------------------------------------------------------------------


def jobs(project: Supabase) -> list[str]:
    return admin(
        project, "SELECT username, jobname, schedule, active FROM cron.job ORDER BY jobid"
    ).splitlines()


def another_teams_job_of_the_same_name(project: Supabase) -> None:
    admin(
        project,
        "DO $$ BEGIN CREATE ROLE reports LOGIN; EXCEPTION WHEN duplicate_object THEN END $$;"
        f" SELECT cron.schedule_in_database('{CMS_JOB}', '0 3 * * *', 'SELECT 1', 'postgres',"
        f" 'reports', false) WHERE NOT EXISTS (SELECT FROM cron.job WHERE jobname = '{CMS_JOB}'"
        " AND username = 'reports')",
    )


def test_an_inactive_cron_job_is_switched_on_by_its_owner(project: Supabase, cron: None) -> None:
    triage, reactivate, _ = sql_blocks("HomepageCronJobInactive")
    another_teams_job_of_the_same_name(project)
    as_postgres(
        project,
        f"SELECT cron.alter_job(jobid, active := false) FROM cron.job WHERE jobname = '{CMS_JOB}'"
        " AND username = 'postgres'",
    )
    assert f"{CMS_JOB}|postgres|*/5 * * * *|" in as_postgres(project, triage).replace(
        "|SELECT process_scheduled_publishes()", ""
    )

    as_postgres(project, reactivate)
    assert f"postgres|{CMS_JOB}|*/5 * * * *|t" in jobs(project)
    assert f"reports|{CMS_JOB}|0 3 * * *|f" in jobs(project)  # another team's stays as it was


def test_updating_cron_job_is_refused_to_postgres_on_supabase(
    project: Supabase, cron: None
) -> None:
    """What this page printed before: postgres may only read cron.job there."""
    error = refused_as_postgres(
        project, f"UPDATE cron.job SET active = true WHERE jobname = '{CMS_JOB}';"
    )
    assert "permission denied for table job" in error


def test_a_missing_or_wrong_cron_job_is_scheduled_again(project: Supabase, cron: None) -> None:
    *_, reschedule = sql_blocks("HomepageCronJobInactive")
    another_teams_job_of_the_same_name(project)
    as_postgres(
        project,
        f"SELECT cron.alter_job(jobid, schedule := '0 0 1 1 *', active := false) FROM cron.job"
        f" WHERE jobname = '{CMS_JOB}' AND username = 'postgres'",
    )
    as_postgres(project, reschedule)  # the wrong one replaced
    assert [j for j in jobs(project) if j.startswith("postgres|")] == [
        f"postgres|{CMS_JOB}|*/5 * * * *|t"
    ]

    as_postgres(
        project,
        f"SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = '{CMS_JOB}'"
        " AND username = 'postgres'",
    )
    as_postgres(project, reschedule)  # the missing one, without an error
    assert f"postgres|{CMS_JOB}|*/5 * * * *|t" in jobs(project)
    assert f"reports|{CMS_JOB}|0 3 * * *|f" in jobs(project)


# --- HomepageCronJobNotRunning: never drop pg_cron ----------------------------------------------


def test_the_scheduler_triage_runs_as_postgres(project: Supabase, cron: None) -> None:
    triage, _, _ = sql_blocks("HomepageCronJobNotRunning")
    database, scheduler = as_postgres(project, triage).splitlines()
    assert database == "postgres|postgres"
    assert scheduler.split("|")[1] == "pg_cron launcher"


def test_dropping_pg_cron_loses_every_job_and_the_saved_list_brings_them_back(
    project: Supabase, cron: None
) -> None:
    _, save, restore = sql_blocks("HomepageCronJobNotRunning")
    another_teams_job_of_the_same_name(project)
    as_postgres(
        project,
        "SELECT cron.schedule('nightly-report', '0 2 * * *', 'SELECT 1');"
        " SELECT cron.alter_job(jobid, active := false) FROM cron.job"
        " WHERE jobname = 'nightly-report';"
        " SELECT cron.schedule('0 4 * * *', 'SELECT 2');",  # pg_cron allows a job without a name
    )
    before = sorted(jobs(project))
    as_postgres(project, save)

    # The dashboard's "disable" is a DROP EXTENSION by supabase_admin: our views stop it...
    with pytest.raises(
        ClusterError, match=r"homepage_exporter\.cron_job depends on table cron\.job"
    ):
        admin(project, "DROP EXTENSION pg_cron")
    # ...and forced, it takes them and every job; enabling it again brings none back.
    admin(project, "DROP EXTENSION pg_cron CASCADE")
    admin(project, PG_CRON_AS_SUPABASE_ADMIN)
    assert jobs(project) == []
    assert admin(project, "SELECT to_regclass('homepage_exporter.cron_job') IS NULL") == "t"

    # The page's way back, as postgres: the role script, then the saved jobs.
    result = psql_url(
        project.cluster.psql_binary, project.postgres_url(), role_script(EXPORTER_PASSWORD)
    )
    assert result.returncode == 0, result.stderr
    as_postgres(project, restore)
    assert sorted(jobs(project)) == sorted(j for j in before if not j.startswith("reports|"))
    assert (
        as_postgres(
            project, "SELECT count(*) FROM homepage_ops.cron_jobs_saved WHERE username = 'reports'"
        )
        == "1"
    )  # listed for its owner
    exporter_sees = psql_url(
        project.cluster.psql_binary,
        project.exporter_url(),
        settings(f"SELECT active FROM homepage_exporter.cron_job WHERE jobname = '{CMS_JOB}'"),
    )
    assert exporter_sees.stdout.strip() == "t", exporter_sees.stderr
    as_postgres(
        project,
        "SELECT cron.unschedule(jobid) FROM cron.job"
        " WHERE username = 'postgres' AND jobname IS DISTINCT FROM 'process-scheduled-publishes'",
    )


# --- HomepagePublishFunctionNotSecurityDefiner ---------------------------------------------------


def calls_it(project: Supabase, role: str) -> bool:
    result = psql_url(
        project.cluster.psql_binary,
        project.postgres_url(),
        f"BEGIN; SET LOCAL ROLE {role}; SELECT process_scheduled_publishes(); ROLLBACK;",
    )
    assert result.returncode == 0 or "permission denied for function" in result.stderr
    return result.returncode == 0


def invoker_open_to_everyone(project: Supabase) -> None:
    """As a migration leaves it on Supabase: invoker, EXECUTE to PUBLIC and the API roles by
    name (postgres's default privileges)."""
    as_postgres(
        project,
        "ALTER FUNCTION process_scheduled_publishes() SECURITY INVOKER RESET search_path;"
        " GRANT EXECUTE ON FUNCTION process_scheduled_publishes()"
        " TO PUBLIC, anon, authenticated, service_role;",
    )


def test_the_definer_fix_leaves_the_function_to_its_owner_and_the_service_role(
    project: Supabase,
) -> None:
    (fix,) = sql_blocks("HomepagePublishFunctionNotSecurityDefiner")
    invoker_open_to_everyone(project)
    as_postgres(project, fix)
    assert (
        as_postgres(
            project,
            "SELECT prosecdef, proconfig FROM pg_proc"
            " WHERE oid = 'process_scheduled_publishes()'::regprocedure",
        )
        == 't|{"search_path=public, pg_temp"}'
    )
    assert not calls_it(project, "anon")
    assert not calls_it(project, "authenticated")
    assert calls_it(project, "service_role")
    assert as_postgres(project, "SELECT count(*) FROM process_scheduled_publishes()") == "0"
    # pg_cron runs the job as postgres, the owner.


def test_revoking_from_public_alone_left_anon_able_to_publish(project: Supabase) -> None:
    """What this page printed before."""
    invoker_open_to_everyone(project)
    try:
        as_postgres(
            project,
            "ALTER FUNCTION process_scheduled_publishes() SECURITY DEFINER;"
            " REVOKE EXECUTE ON FUNCTION process_scheduled_publishes() FROM PUBLIC;",
        )
        assert calls_it(project, "anon")  # with its owner's rights, past every policy
    finally:
        (fix,) = sql_blocks("HomepagePublishFunctionNotSecurityDefiner")
        as_postgres(project, fix)


# --- HomepageLongRunningQuery: pg_cron's runs are client backends --------------------------------


def test_long_running_triage_lists_pg_crons_runs_and_the_fix_stops_them(
    project: Supabase, cron: None
) -> None:
    triage, cancel, terminate = sql_blocks("HomepageLongRunningQuery")
    window = "interval '5 minutes'"
    assert triage.count(window) == 1
    triage = triage.replace(window, "interval '0 minutes'")  # rather than wait five minutes

    slow = "SELECT count(*) FROM section_versions, pg_sleep(600)"
    as_postgres(project, f"SELECT cron.schedule('runbook-slow', '* * * * *', $${slow}$$)")
    client = subprocess.Popen(
        [str(project.cluster.psql_binary), "-X", project.postgres_url(), "-c", slow],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def listed() -> str:
            rows = as_postgres(project, triage).splitlines()
            return "\n".join(rows) if len([r for r in rows if "pg_sleep(600)" in r]) == 2 else ""

        rows = [row.split("|") for row in poll("cron run and client", listed).splitlines()]
        by_app = {row[2]: int(row[0]) for row in rows if "pg_sleep(600)" in row[4]}
        assert set(by_app) == {"pg_cron", "psql"}
        cron_pid = by_app["pg_cron"]
        assert as_postgres(
            project,
            f"SELECT backend_type FROM pg_stat_activity WHERE pid = {cron_pid};"
            " SELECT r.status FROM cron.job_run_details r JOIN cron.job USING (jobid)"
            f" WHERE jobname = 'runbook-slow' AND job_pid = {cron_pid}",
        ).splitlines() == ["client backend", "running"]

        as_postgres(project, cancel.replace("<pid>", str(cron_pid)))
        poll(
            "failed cron run",
            lambda: as_postgres(
                project,
                f"SELECT return_message FROM cron.job_run_details WHERE job_pid = {cron_pid}"
                " AND status = 'failed'",
            ),
        )
        as_postgres(project, terminate.replace("<pid>", str(by_app["psql"])))
        _, error = client.communicate(timeout=30)
        assert "terminating connection due to administrator command" in error
    finally:
        client.kill()
        client.communicate()
        as_postgres(
            project,
            "SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = 'runbook-slow';"
            " SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid();",
        )


# --- HomepageExporterRoleChanged: what no GRANT takes from a role, undone -----------------------


def exporter_role_findings(project: Supabase) -> tuple[float | None, set[tuple[str, ...]]]:
    """The shipped security_advisor's count of findings on the exporter's role, and the one it
    names (the first alphabetically), run as the exporter."""
    (target,) = load_targets(load_settings({"database_url": project.exporter_url()}))

    async def run() -> Outcome:
        async with target.database.open() as db:
            return await run_query(db, shipped("security_advisor"), target.params, 10_000)

    v = Values(asyncio.run(run()))
    named = {
        x for x in v.labels("homepage_cms_security_finding") if x[0] == "exporter_role_changed"
    }
    return v("homepage_cms_security_findings", lint="exporter_role_changed"), named


def put_the_fixture_role_back(project: Supabase) -> None:
    """What the other tests of this module expect, whatever this one left half done: the
    role script's role with the fixture's password, no large objects, postgres not a member."""
    psql = project.cluster.psql_binary
    admin(project, "SELECT lo_unlink(oid) FROM pg_largeobject_metadata;"
                   " ALTER ROLE homepage_exporter RESET ALL;")  # fmt: skip
    admin(project, "DO $$ BEGIN IF pg_has_role('postgres', 'homepage_exporter', 'MEMBER')"
                   " THEN REVOKE homepage_exporter FROM postgres; END IF; END $$")  # fmt: skip
    result = psql_url(psql, project.postgres_url(), role_script(EXPORTER_PASSWORD))
    assert result.returncode == 0, result.stderr


def test_a_role_used_by_whoever_holds_its_password_is_put_back(project: Supabase) -> None:
    try:
        role_used_then_put_back(project)
    finally:
        put_the_fixture_role_back(project)
    assert exporter_role_findings(project) == (0, set())


def role_used_then_put_back(project: Supabase) -> None:
    triage, fix = sql_blocks("HomepageExporterRoleChanged")
    psql = project.cluster.psql_binary
    assert exporter_role_findings(project) == (0, set())  # the role script's: nothing to say
    # Someone with the exporter's password: what PostgreSQL lets every role do, with no
    # privilege on anything (default_transaction_read_only is a SET away).
    intruder = psql_url(
        psql,
        project.exporter_url(),
        "SET default_transaction_read_only = off;"
        "SELECT lo_from_bytea(4711, 'a stash'::bytea);"
        "ALTER ROLE homepage_exporter SET default_transaction_read_only = off;"
        "ALTER ROLE homepage_exporter SET statement_timeout = 0;",
    )
    assert intruder.returncode == 0, intruder.stderr
    # The large object and both settings, the first of them named.
    assert exporter_role_findings(project) == (
        3,
        {("exporter_role_changed", "default_transaction_read_only=off")},
    )
    # The intruder stays connected, idle, as a psql prompt would.
    lingering = subprocess.Popen(
        [str(psql), "-X", "-q", project.exporter_url()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        poll("the intruder's session", lambda: admin(
            project, "SELECT pid FROM pg_stat_activity WHERE usename = 'homepage_exporter'",
        ))  # fmt: skip
        seen = as_postgres(project, triage)
        assert "4711" in seen
        assert "default_transaction_read_only=off" in seen
        assert "statement_timeout=0" in seen
        as_postgres(project, fix.replace("<new password>", "rotated-" + EXPORTER_PASSWORD))
        # Its session ended before the new password was set: what it sends now goes nowhere.
        _, err = lingering.communicate(
            "ALTER ROLE homepage_exporter PASSWORD 'mine-again';\n", timeout=60
        )
        assert "terminat" in err or "connection" in err, err
    finally:
        lingering.kill()
    assert admin(project, "SELECT count(*) FROM pg_largeobject_metadata") == "0"
    settings = (
        "SELECT count(*) FROM pg_db_role_setting WHERE setrole = 'homepage_exporter'::regrole"
    )
    assert admin(project, settings) == "0"
    assert "homepage_exporter" not in admin(
        project, "SELECT string_agg(roleid::regrole::text, ',') FROM pg_auth_members"
        " WHERE member = 'postgres'::regrole",
    )  # fmt: skip  # postgres gave the role back
    old = psql_url(psql, project.exporter_url(), "SELECT 1")
    assert old.returncode != 0
    assert "password authentication failed" in old.stderr
    rotated = project.url("homepage_exporter", "rotated-" + EXPORTER_PASSWORD)
    assert psql_url(psql, rotated, "SELECT 1").returncode == 0  # LOGIN again, new password
