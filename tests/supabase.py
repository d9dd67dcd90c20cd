"""A PostgreSQL cluster set up the way Supabase sets up a project's database.

Written from the facts of Supabase's public init scripts and migrations (repository
supabase/postgres, `migrations/db/init-scripts/*` then `migrations/db/migrations/*`, in the order
of `migrations/db/migrate.sh`); none of their files are copied. The facts this relies on:

- initdb's bootstrap superuser is `supabase_admin`; migrate.sh creates `postgres` as a superuser,
  runs the init scripts as `postgres`, then the migrations as `supabase_admin`.
- The init scripts (as `postgres`, still a superuser): schema `extensions`; roles `anon`,
  `authenticated` (NOLOGIN NOINHERIT) and `service_role` (also BYPASSRLS); `authenticator`
  (LOGIN NOINHERIT, member of the three); USAGE on public and extensions to those roles; and
  default privileges: ALL on tables, functions and sequences `postgres` creates in public to
  `postgres`, `anon`, `authenticated`, `service_role`. `anon` has statement_timeout 3s,
  `authenticated` 8s; `postgres`'s search_path is "$user", public, extensions.
- Migration 10000000000000_demote-postgres: `ALTER ROLE postgres NOSUPERUSER CREATEDB CREATEROLE
  LOGIN REPLICATION BYPASSRLS`; later ones make anon/authenticated/service_role INHERIT
  (20230529180330) and give `postgres` pg_monitor, pg_read_all_data, pg_signal_backend and the
  API roles WITH ADMIN OPTION (the role dump in the same repository).
- pg_cron is created by `supabase_admin` (its tables belong to it); `postgres` gets USAGE on
  schema cron and ALL on its tables WITH GRANT OPTION, then cron.job is cut back to SELECT
  (20231020085357) and TRIGGER on cron.job_run_details is revoked (20260730000000).
  pg_cron's own script grants SELECT on both tables (and DELETE on job_run_details) to PUBLIC
  under its "username = current_user" policies. pg_cron runs in the database `postgres`.
- Supabase's pg_cron settings (`ansible/files/postgresql_config/conf.d/pgcron.conf`) name only
  `cron.database_name`; `cron.use_background_workers` keeps its default, off: each job run is a
  libpq session of its own (backend_type `client backend`, application_name `pg_cron`).
- pg_stat_statements lives in schema `extensions`. `postgres` has CREATE and USAGE on schema
  public and on extensions (the role dump).
- Clients reach it over TLS, directly on 5432 or through Supavisor in transaction mode on 6543
  (here PgBouncer in transaction mode, with TLS on both sides).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from exporter.demo.cluster import Cluster
from exporter.demo.database import role_script, sql_file
from tests.harness import EXPORTER_PASSWORD, serve_tls
from tests.pooler import pgbouncer

BOOTSTRAP = "supabase_admin"
DATABASE = "postgres"
POSTGRES_PASSWORD = "supabase-postgres-pw"

# migrate.sh: `postgres` starts as a superuser; the init scripts run as it.
INIT_SCRIPTS_AS_POSTGRES = """
CREATE PUBLICATION supabase_realtime;
ALTER ROLE supabase_admin WITH SUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS;
CREATE SCHEMA IF NOT EXISTS extensions;
CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA extensions;
CREATE ROLE anon NOLOGIN NOINHERIT;
CREATE ROLE authenticated NOLOGIN NOINHERIT;
CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
CREATE ROLE authenticator LOGIN NOINHERIT;
GRANT anon, authenticated, service_role TO authenticator;
GRANT USAGE ON SCHEMA public TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
  GRANT ALL ON TABLES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
  GRANT ALL ON FUNCTIONS TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
  GRANT ALL ON SEQUENCES TO postgres, anon, authenticated, service_role;
GRANT USAGE ON SCHEMA extensions TO postgres, anon, authenticated, service_role;
ALTER ROLE anon SET statement_timeout = '3s';
ALTER ROLE authenticated SET statement_timeout = '8s';
ALTER ROLE postgres SET search_path TO "$user", public, extensions;
"""

# The migrations, as supabase_admin: demote postgres, extensions owned by supabase_admin.
MIGRATIONS_AS_SUPABASE_ADMIN = """
ALTER ROLE anon INHERIT;
ALTER ROLE authenticated INHERIT;
ALTER ROLE service_role INHERIT;
GRANT ALL ON DATABASE postgres TO postgres;
GRANT ALL ON SCHEMA extensions TO postgres;
GRANT CREATE, USAGE ON SCHEMA public TO postgres;
ALTER ROLE postgres NOSUPERUSER CREATEDB CREATEROLE LOGIN REPLICATION BYPASSRLS;
GRANT pg_monitor, pg_read_all_data, pg_signal_backend TO postgres WITH ADMIN OPTION;
GRANT anon, authenticated, service_role, authenticator TO postgres WITH ADMIN OPTION;
CREATE EXTENSION IF NOT EXISTS pg_stat_statements WITH SCHEMA extensions;
"""

# pg_cron, where the server has it (npm's PostgreSQL 17 build does not).
PG_CRON_AS_SUPABASE_ADMIN = """
CREATE EXTENSION IF NOT EXISTS pg_cron;
GRANT USAGE ON SCHEMA cron TO postgres WITH GRANT OPTION;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA cron
  GRANT ALL ON TABLES TO postgres WITH GRANT OPTION;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA cron
  GRANT ALL ON FUNCTIONS TO postgres WITH GRANT OPTION;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA cron
  GRANT ALL ON SEQUENCES TO postgres WITH GRANT OPTION;
GRANT ALL ON ALL TABLES IN SCHEMA cron TO postgres WITH GRANT OPTION;
GRANT ALL ON ALL FUNCTIONS IN SCHEMA cron TO postgres WITH GRANT OPTION;
GRANT ALL ON ALL SEQUENCES IN SCHEMA cron TO postgres WITH GRANT OPTION;
REVOKE ALL ON TABLE cron.job FROM postgres;
GRANT SELECT ON TABLE cron.job TO postgres WITH GRANT OPTION;
REVOKE TRIGGER ON cron.job_run_details FROM postgres;
"""

# What an older version of exporter_role.sql left behind when it stopped at its first
# ALTER ROLE on Supabase (and what it left on a plain server, where it ran to the end).
HALF_MADE_ROLE = """
CREATE ROLE homepage_exporter LOGIN;
GRANT anon TO homepage_exporter;
"""


@dataclass
class Supabase:
    """The running fixture: the cluster, its TLS port, and the pooler's port."""

    cluster: Cluster
    pooler_port: int

    @property
    def has_cron(self) -> bool:
        return "pg_cron" in self.cluster.preload

    def url(self, user: str, password: str, *, pooled: bool = False) -> str:
        port = self.pooler_port if pooled else self.cluster.port
        return f"postgresql://{user}:{password}@127.0.0.1:{port}/{DATABASE}?sslmode=require"

    def exporter_url(self, *, pooled: bool = False) -> str:
        return self.url("homepage_exporter", EXPORTER_PASSWORD, pooled=pooled)

    def postgres_url(self, *, pooled: bool = False) -> str:
        return self.url("postgres", POSTGRES_PASSWORD, pooled=pooled)

    def as_admin(self, sql: str) -> str:
        """SQL as supabase_admin (what only Supabase itself can do: pg_cron's runs)."""
        return self.cluster.psql(sql, DATABASE)


def psql_url(psql: Path, url: str, script: str) -> subprocess.CompletedProcess[str]:
    """psql as a user runs it: a connection URL, the script on stdin, stop at the first error."""
    return subprocess.run(
        [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "PGSSLMODE": "require", "PGCONNECT_TIMEOUT": "10"},
    )


def readme_setup(psql: Path, url: str, *, cron: bool) -> None:
    """What the README's Supabase section tells a user to run, as `postgres`."""
    scripts = [sql_file("schema.sql").read_text()]
    if cron:
        scripts.append(sql_file("cron.sql").read_text())
    scripts.append(role_script(EXPORTER_PASSWORD))
    for script in scripts:
        result = psql_url(psql, url, script)
        assert result.returncode == 0, result.stderr


@contextlib.contextmanager
def supabase(bindir: Path) -> Iterator[Supabase]:
    """A Supabase-shaped cluster with the CMS set up by the README's steps as `postgres`."""
    cluster = Cluster(
        bindir=bindir,
        superuser=BOOTSTRAP,
        cron_database=DATABASE,
        # TCP only over TLS, as the clients of a Supabase project connect.
        hba=("hostnossl all all 0.0.0.0/0 reject", "hostnossl all all ::/0 reject"),
    )
    # Job runs as Supabase makes them: libpq sessions, here over the socket (local trust), as a
    # job's role has no password for pg_cron to use.
    cluster.settings.update(
        {"cron.use_background_workers": "off", "cron.host": f"'{cluster.base}'"}
    )
    try:
        cluster.init()
        serve_tls(cluster)
        cluster.start()
        cluster.psql(f"CREATE ROLE postgres SUPERUSER LOGIN PASSWORD '{POSTGRES_PASSWORD}'")
        cluster.psql_file_text(INIT_SCRIPTS_AS_POSTGRES, DATABASE, user="postgres")
        cluster.psql_file_text(MIGRATIONS_AS_SUPABASE_ADMIN, DATABASE)
        if "pg_cron" in cluster.preload:
            cluster.psql_file_text(PG_CRON_AS_SUPABASE_ADMIN, DATABASE)
        cluster.psql_file_text(HALF_MADE_ROLE, DATABASE, user="postgres")
        fixture_pooler = pgbouncer(
            cluster,
            DATABASE,
            {"postgres": POSTGRES_PASSWORD, "homepage_exporter": EXPORTER_PASSWORD},
            tls=True,
        )
        with fixture_pooler as pooler_port:
            project = Supabase(cluster, pooler_port)
            # The README's steps, as the user's `postgres`, over TLS; the role script twice.
            readme_setup(cluster.psql_binary, project.postgres_url(), cron=project.has_cron)
            result = psql_url(
                cluster.psql_binary, project.postgres_url(), role_script(EXPORTER_PASSWORD)
            )
            assert result.returncode == 0, result.stderr
            yield project
    finally:
        cluster.destroy()
