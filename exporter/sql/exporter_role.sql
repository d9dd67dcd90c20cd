-- The least-privileged role homepage-cms-exporter is documented to run as.
-- Run as the database owner (Supabase: the `postgres` role) in the CMS database:
--   psql "$DATABASE_URL" -v exporter_password="$(cat password-file)" -f exporter_role.sql
-- Idempotent: safe to re-run after migrations add tables.
\set ON_ERROR_STOP on

SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'homepage_exporter') AS create_role
\gset
\if :create_role
  CREATE ROLE homepage_exporter LOGIN;
\endif
-- No privileges beyond reading: read-only by default, few connections, bounded statements.
ALTER ROLE homepage_exporter WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
  NOBYPASSRLS CONNECTION LIMIT 5 PASSWORD :'exporter_password';
ALTER ROLE homepage_exporter SET default_transaction_read_only = on;
ALTER ROLE homepage_exporter SET statement_timeout = '60s';
ALTER ROLE homepage_exporter SET application_name = 'homepage-cms-exporter';

-- pg_stat_activity of every session, pg_stat_statements of every user, table statistics.
GRANT pg_monitor TO homepage_exporter;
SELECT format('GRANT CONNECT ON DATABASE %I TO homepage_exporter', current_database()) \gexec
GRANT USAGE ON SCHEMA public TO homepage_exporter;

-- Read every CMS table, and see every row through row level security with a
-- SELECT-only policy for this role (no BYPASSRLS: Supabase does not hand that out).
SELECT format('GRANT SELECT ON %I.%I TO homepage_exporter', schemaname, tablename)
FROM pg_tables
WHERE schemaname = 'public'
  AND (tablename LIKE 'homepage%' OR tablename LIKE 'section%' OR tablename LIKE 'media%')
\gexec
SELECT format('DROP POLICY IF EXISTS homepage_exporter_read ON %I.%I', schemaname, tablename),
       format('CREATE POLICY homepage_exporter_read ON %I.%I FOR SELECT TO homepage_exporter '
              'USING (true)', schemaname, tablename)
FROM pg_tables
WHERE schemaname = 'public'
  AND (tablename LIKE 'homepage%' OR tablename LIKE 'section%' OR tablename LIKE 'media%')
\gexec

-- The P1 triage runs one query as `anon` (SET LOCAL ROLE inside a read-only transaction).
GRANT anon TO homepage_exporter;
GRANT EXECUTE ON FUNCTION public.get_homepage_content(text) TO homepage_exporter;

-- pg_cron's tables carry their own policies (a user sees only its own jobs and runs).
SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron') AS has_cron
\gset
\if :has_cron
  GRANT USAGE ON SCHEMA cron TO homepage_exporter;
  GRANT SELECT ON cron.job, cron.job_run_details TO homepage_exporter;
  DROP POLICY IF EXISTS homepage_exporter_read ON cron.job;
  CREATE POLICY homepage_exporter_read ON cron.job FOR SELECT TO homepage_exporter USING (true);
  DROP POLICY IF EXISTS homepage_exporter_read ON cron.job_run_details;
  CREATE POLICY homepage_exporter_read ON cron.job_run_details
    FOR SELECT TO homepage_exporter USING (true);
\endif
