"""The README's Supabase steps on a database set up the way Supabase sets one up.

Everything a user runs is run as the non-superuser `postgres`, over TLS; the exporter connects
as `homepage_exporter`, directly and through the transaction pooler.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator

import asyncpg
import pytest

from exporter.config import load_config
from exporter.demo.database import role_script
from exporter.settings import SHIPPED_QUERIES
from tests.conftest import BINDIRS, CMS_TABLES
from tests.harness import EXPORTER_PASSWORD, Exporter, exporter_env
from tests.pooler import PGBOUNCER
from tests.supabase import Supabase, psql_url, supabase

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PGBOUNCER is None, reason="pgbouncer is not installed"),
]
StartExporter = Callable[..., Exporter]
WRITER_CALLS = (
    "SELECT public.publish_section_version(gen_random_uuid(), gen_random_uuid())",
    "SELECT public.revert_section_to_version(gen_random_uuid(), gen_random_uuid())",
    "SELECT public.process_scheduled_publishes()",
)
CRON_TABLES = ("cron.job", "cron.job_run_details", "homepage_exporter.cron_job")
CRON_CALLS = (
    "SELECT cron.schedule('x', '* * * * *', 'SELECT 1')",
    "SELECT cron.unschedule('process-scheduled-publishes')",
    "SELECT cron.alter_job(1, active := false)",
)


# Supabase creates new projects on PostgreSQL 17; older ones stay on 15.
VERSIONS = [name for name in ("system", "pg17") if BINDIRS[name]() is not None]


@pytest.fixture(scope="module", params=VERSIONS)
def project(request: pytest.FixtureRequest) -> Iterator[Supabase]:
    bindir = BINDIRS[request.param]()
    assert bindir is not None
    with supabase(bindir) as fixture:
        yield fixture


def needs_cron(project: Supabase) -> None:
    if not project.has_cron:
        pytest.skip(f"pg_cron is not available on PostgreSQL {project.cluster.major_version} here")


@pytest.fixture(scope="module", autouse=True)
def cms_state(project: Supabase) -> None:
    if project.has_cron:
        # One finished run of the CMS's job, as pg_cron records it (only supabase_admin can).
        project.as_admin(
            "INSERT INTO cron.job_run_details (jobid, runid, job_pid, database, username, command,"
            " status, return_message, start_time, end_time)"
            " SELECT jobid, 1, 4242, 'postgres', 'postgres', command, 'succeeded', 'SELECT 0',"
            " now() - interval '61 seconds', now() - interval '60 seconds'"
            " FROM cron.job WHERE jobname = 'process-scheduled-publishes'"
        )
    project.cluster.psql(
        "INSERT INTO homepage_sections (section_key, locale, status, is_active)"
        " VALUES ('hero', 'en', 'published', true), ('grid', 'en', 'published', true);"
        " SELECT count(*) FROM get_homepage_content('en');",  # a statement to count
        "postgres",
        user="postgres",
    )


def sql(project: Supabase, query: str, user: str = "supabase_admin") -> str:
    return project.cluster.psql(query, "postgres", user=user).strip()


# --- the fixture is what Supabase builds ------------------------------------------------------


def test_the_fixture_has_supabases_role_model(project: Supabase) -> None:
    """Checked against supabase/postgres's init scripts and migrations (see tests/supabase.py)."""
    assert sql(project, "SELECT rolsuper, rolbypassrls, rolcreaterole FROM pg_roles"
               " WHERE rolname = 'postgres'") == "f|t|t"  # fmt: skip
    if project.has_cron:
        assert sql(project, "SELECT tableowner FROM pg_tables WHERE schemaname = 'cron'"
                   " AND tablename = 'job'") == "supabase_admin"  # fmt: skip
    assert sql(project, "SELECT extnamespace::regnamespace FROM pg_extension"
               " WHERE extname = 'pg_stat_statements'") == "extensions"  # fmt: skip
    # Default privileges: anon may TRUNCATE a table `postgres` creates in public...
    sql(project, "CREATE TABLE public.probe_default_privileges (id int)", user="postgres")
    assert sql(project, "SELECT has_table_privilege('anon', 'public.probe_default_privileges',"
               " 'TRUNCATE')") == "t"  # fmt: skip
    sql(project, "DROP TABLE public.probe_default_privileges", user="postgres")
    # ...and `postgres` cannot add a policy to pg_cron's tables.
    if project.has_cron:
        with pytest.raises(Exception, match="must be owner"):
            sql(project, "CREATE POLICY p ON cron.job FOR SELECT USING (true)", user="postgres")


# --- the role script ----------------------------------------------------------------------------


def test_the_role_script_runs_again_as_postgres_through_the_pooler(project: Supabase) -> None:
    # Through the transaction pooler too: it is one transaction.
    result = psql_url(
        project.cluster.psql_binary, project.postgres_url(pooled=True), role_script("")
    )
    assert result.returncode == 0, result.stderr


def test_the_role_is_least_privileged_after_repairing_a_half_made_one(project: Supabase) -> None:
    attrs = sql(project, "SELECT rolsuper, rolbypassrls, rolreplication, rolcreaterole,"
                " rolcreatedb, rolinherit, rolconnlimit FROM pg_roles"
                " WHERE rolname = 'homepage_exporter'")  # fmt: skip
    assert attrs == "f|f|f|f|f|t|5"
    memberships = sql(project, "SELECT string_agg(g.rolname, ',' ORDER BY g.rolname)"
                      " FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid"
                      " WHERE a.member = 'homepage_exporter'::regrole")  # fmt: skip
    assert memberships == "pg_monitor"  # the old script's `anon` is gone
    if project.has_cron:
        usage = "SELECT has_schema_privilege('homepage_exporter', 'cron', 'USAGE')"
        assert sql(project, usage) == "f"


# --- the exporter on it -------------------------------------------------------------------------


def check_connect(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "check", "--connect"],
        env={
            "DATABASE_URL": url,
            "PATH": "/usr/bin:/bin",
            "HOMEPAGE_EXPORTER_STATEMENT_CACHE_SIZE": "0",
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def once(project: Supabase) -> str:
    """One exposition from `homepage-cms-exporter once`, as the exporter role."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", "once"],
        env={"DATABASE_URL": project.exporter_url(), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    ).stdout


@pytest.mark.parametrize("pooled", [False, True], ids=["direct-tls", "transaction-pooler"])
def test_check_connect_runs_every_query_none_skipped(project: Supabase, pooled: bool) -> None:
    result = check_connect(project.exporter_url(pooled=pooled))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    ok = [line.split()[1] for line in lines if line.startswith("ok ")]
    skipped = [line for line in lines if line.startswith("skip ")]
    shipped = len(load_config(SHIPPED_QUERIES).enabled)
    if project.has_cron:
        assert len(ok) == shipped, result.stdout  # every shipped query
        assert not skipped, result.stdout
    else:  # the cron query alone, and it says why
        assert len(ok) == shipped - 1, result.stdout
        assert len(skipped) == 1, result.stdout
        assert "pg_cron" in skipped[0], result.stdout
    assert EXPORTER_PASSWORD not in result.stdout + result.stderr


def test_a_running_exporter_sees_the_cron_job_and_statements(
    project: Supabase, start_exporter: StartExporter
) -> None:
    exporter = start_exporter(
        exporter_env(project.exporter_url(pooled=True), SHIPPED_QUERIES, statement_cache_size="0")
    )
    needs_cron(project)
    for query in ("statements", "cron_jobs", "anon_visibility", "homepage_render"):
        exporter.wait_metric("homepage_exporter_query_up", lambda v: v == 1, 60, query=query)
    scrape = exporter.scrape()
    job = {"jobname": "process-scheduled-publishes"}
    assert scrape.get("homepage_cron_job_active", **job) == 1
    assert scrape.get("homepage_cron_job_last_run_success", **job) == 1
    assert scrape.get("homepage_cron_job_last_run_duration_seconds", **job) == pytest.approx(1)
    assert scrape.all("homepage_statement_calls_total"), "no pg_stat_statements figures"
    assert scrape.get("homepage_sections_visible_to_anon", locale="en") == 2
    assert scrape.get("homepage_render_sections", locale="en", role="anon") == 2


# --- writes: refused by the role, whatever it tries ----------------------------------------------


async def write_attempts(url: str, *, cron: bool) -> dict[str, str]:
    """Every way to write we could think of, as the exporter role; each attempt's SQLSTATE."""
    conn = await asyncpg.connect(url, statement_cache_size=0)
    outcomes: dict[str, str] = {}
    try:
        await conn.execute("SET default_transaction_read_only = off")
        await conn.execute("BEGIN READ WRITE")

        async def attempt(label: str, statement: str) -> None:
            await conn.execute("SAVEPOINT s")
            try:
                await conn.execute(statement)
                outcomes[label] = "succeeded"
            except asyncpg.PostgresError as exc:
                outcomes[label] = exc.sqlstate
            await conn.execute("ROLLBACK TO SAVEPOINT s")

        async def table_writes(prefix: str) -> None:
            for table in (*[f"public.{t}" for t in CMS_TABLES], *(CRON_TABLES if cron else ())):
                await attempt(f"{prefix}INSERT {table}", f"INSERT INTO {table} DEFAULT VALUES")
                await attempt(f"{prefix}UPDATE {table}", f"UPDATE {table} SET jobid = jobid"
                              if "cron" in table else f"UPDATE {table} SET id = id")  # fmt: skip
                await attempt(f"{prefix}DELETE {table}", f"DELETE FROM {table}")
                await attempt(f"{prefix}TRUNCATE {table}", f"TRUNCATE {table}")
            for call in (*WRITER_CALLS, *(CRON_CALLS if cron else ())):
                await attempt(f"{prefix}{call}", call)
            for schema in (
                "public",
                "extensions",
                "homepage_exporter",
                *(["cron"] if cron else []),
            ):
                await attempt(f"{prefix}CREATE in {schema}", f"CREATE TABLE {schema}.x (i int)")
            await attempt(f"{prefix}CREATE SCHEMA", "CREATE SCHEMA x")

        await table_writes("")
        reachable = await conn.fetch(
            "SELECT rolname FROM pg_roles WHERE pg_has_role(current_user, oid, 'MEMBER')"
            " AND rolname <> current_user ORDER BY 1"
        )
        for row in reachable:
            await conn.execute(f'SET ROLE "{row["rolname"]}"')
            await table_writes(f"as {row['rolname']}: ")
            await conn.execute("RESET ROLE")
        for role in ("anon", "authenticated", "service_role", "postgres", "supabase_admin"):
            await attempt(f"SET ROLE {role}", f"SET ROLE {role}")
        outcomes["roles reachable"] = ",".join(r["rolname"] for r in reachable)
    finally:
        await conn.close()
    return outcomes


def test_the_exporter_role_can_write_nothing_whatever_it_tries(project: Supabase) -> None:
    cron = project.has_cron
    outcomes = asyncio.run(write_attempts(project.exporter_url(), cron=cron))
    reachable = outcomes.pop("roles reachable")
    assert reachable == "pg_monitor,pg_read_all_settings,pg_read_all_stats,pg_stat_scan_tables"
    refused = {label: state for label, state in outcomes.items() if state == "42501"}
    allowed = {label: state for label, state in outcomes.items() if state != "42501"}
    # 42501 insufficient_privilege for every one: not a read-only refusal (25006), not an
    # empty success. A view cannot be truncated by anyone (42809 wrong_object_type).
    views = {"TRUNCATE homepage_exporter.cron_job": "42809"} if cron else {}
    assert allowed == views, json.dumps(allowed)
    tables = len(CMS_TABLES) + (len(CRON_TABLES) if cron else 0)
    calls = len(WRITER_CALLS) + (len(CRON_CALLS) if cron else 0)
    creates = 5 if cron else 4
    # 5 contexts (itself, 4 roles) x every attempt, less the view TRUNCATE, plus 5 SET ROLEs.
    assert len(refused) == 5 * (4 * tables + calls + creates) - len(views) + 5
    sql(project, "SELECT 1")  # the cluster is fine afterwards
    assert sql(project, "SELECT count(*) FROM homepage_sections") == "2"


def test_a_policy_that_hides_the_homepage_is_still_seen(project: Supabase) -> None:
    """The probes run with anon's rights: a policy change that hides the homepage shows."""
    hide = ('ALTER POLICY "Published sections viewable by everyone" ON homepage_sections'
            " TO authenticated")  # fmt: skip
    show = 'ALTER POLICY "Published sections viewable by everyone" ON homepage_sections TO public'
    assert 'homepage_sections_visible_to_anon{locale="en"} 2.0' in once(project)
    sql(project, hide, user="postgres")
    try:
        exposition = once(project)
    finally:
        sql(project, show, user="postgres")
    assert 'homepage_sections_visible_to_anon{locale="en"} 0.0' in exposition
    assert 'homepage_sections_live{locale="en"} 2.0' in exposition


# --- the process guards itself as well --------------------------------------------------------


def test_connected_as_a_role_that_could_write_each_run_is_still_read_only(
    project: Supabase, tmp_path: object
) -> None:
    """`postgres` owns the CMS tables and could write; the exporter's transaction refuses."""
    sql(project, "CREATE SEQUENCE IF NOT EXISTS public.sneaky_sequence", user="postgres")
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    queries = tmp_path / "queries.yaml"
    queries.write_text(
        "version: 1\nqueries:\n  - name: sneaky\n    help: Tries to write.\n"
        "    interval: 30s\n    timeout: 5s\n    sql: |\n"
        # A write that outlives the ROLLBACK every run ends with: sequences are not transactional.
        "      SELECT nextval('public.sneaky_sequence') AS n\n"
        "    metrics:\n      - name: homepage_sneaky\n        help: Rows.\n        value: n\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check", "--connect"],
        env={
            "DATABASE_URL": project.postgres_url(),
            "HOMEPAGE_EXPORTER_QUERIES_FILE": str(queries),
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout
    assert "read-only transaction" in result.stdout, result.stdout
    assert sql(project, "SELECT last_value, is_called FROM public.sneaky_sequence") == "1|f"
