-- The least-privileged role homepage-cms-exporter runs as, and the few objects it reads through.
--
-- Run it as the owner of the CMS tables. On Supabase that is the `postgres` role, which is NOT a
-- superuser (NOSUPERUSER CREATEROLE REPLICATION BYPASSRLS): paste this file into the dashboard's
-- SQL editor, or run it with psql over the direct connection (port 5432). Plain SQL only, no
-- psql meta-commands. Idempotent: re-run it after migrations add tables or extensions; it also
-- repairs a role left half-made by older versions of this script.
--
-- The password: set `homepage_exporter.password` in the same session first, e.g.
--   psql "$OWNER_URL" -v ON_ERROR_STOP=1 \
--        -c "SET homepage_exporter.password = '...'" -f exporter_role.sql
-- or leave it unset and afterwards run `\password homepage_exporter` in psql (hashed on your
-- machine) or `ALTER ROLE homepage_exporter PASSWORD '...'` in the SQL editor.
--
-- What the role can do, and why (README "Supabase" has the same list):
--   LOGIN, CONNECTION LIMIT 5     the exporter's pool holds 2 connections; headroom for `check`.
--   pg_monitor                    every session in pg_stat_activity, every user's
--                                 pg_stat_statements, table statistics. Read-only.
--   SELECT on the CMS tables      plus a SELECT-only row level security policy for itself, so it
--                                 counts every row (no BYPASSRLS).
--   schema homepage_exporter      USAGE for the exporter alone. It holds:
--     cron_job, cron_job_run_details   views of pg_cron's tables without the `command` text,
--                                 owned by this script's role (on Supabase `postgres`, which
--                                 bypasses pg_cron's "own jobs only" policy); pg_cron's tables
--                                 belong to supabase_admin and take no policies from us.
--     pg_stat_statements          a view of the extension wherever it lives (Supabase: schema
--                                 `extensions`, which is not on the exporter's search path).
--     live_links(text[])          products and categories linked to each locale's live sections,
--                                 with the exporter's own rights (SECURITY INVOKER).
--     render_as_anon(text[]), render_as_authenticated(text[]), sections_visible_to_anon(text[])
--                                 fixed-body, STABLE probes owned by `anon` (and by
--                                 `authenticated`: signed-in customers), SECURITY DEFINER: they
--                                 see exactly what those roles see through row level security,
--                                 yet the exporter is a member of neither and so cannot act as
--                                 them. EXECUTE for the exporter only.
--   nothing else: no membership in anon/authenticated/service_role, no USAGE on schema cron,
--   no EXECUTE on the CMS's writer functions, default_transaction_read_only on.
BEGIN;

-- 1. The role itself ---------------------------------------------------------------------------
DO $role$
DECLARE
  r record;
  pw text := current_setting('homepage_exporter.password', true);
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'homepage_exporter') THEN
    CREATE ROLE homepage_exporter LOGIN;
  END IF;
  SELECT rolsuper, rolbypassrls, rolreplication INTO r
  FROM pg_roles WHERE rolname = 'homepage_exporter';
  IF r.rolsuper OR r.rolbypassrls OR r.rolreplication THEN
    -- Only a superuser may take these away; on Supabase ask support, or drop and re-create.
    RAISE EXCEPTION 'role homepage_exporter has SUPERUSER, BYPASSRLS or REPLICATION'
      USING HINT = 'DROP ROLE homepage_exporter (after REASSIGN/DROP OWNED) and run this script again';
  END IF;
  -- INHERIT: it must use pg_monitor's rights. Everything else it might have been given goes.
  ALTER ROLE homepage_exporter WITH LOGIN INHERIT NOCREATEDB NOCREATEROLE CONNECTION LIMIT 5;
  IF coalesce(pw, '') <> '' THEN
    EXECUTE format('ALTER ROLE homepage_exporter PASSWORD %L', pw);
  END IF;
END
$role$;
-- Belt and braces: a client can switch this off, which is why the privileges below matter.
ALTER ROLE homepage_exporter SET default_transaction_read_only = on;
ALTER ROLE homepage_exporter SET statement_timeout = '60s';
ALTER ROLE homepage_exporter SET application_name = 'homepage-cms-exporter';

-- Memberships: pg_monitor and nothing else (older versions of this script granted `anon`,
-- which on Supabase carries ALL on every table and EXECUTE on every function in public).
DO $members$
DECLARE
  m record;
BEGIN
  FOR m IN
    SELECT g.rolname FROM pg_auth_members a
    JOIN pg_roles g ON g.oid = a.roleid
    WHERE a.member = 'homepage_exporter'::regrole AND g.rolname <> 'pg_monitor'
  LOOP
    EXECUTE format('REVOKE %I FROM homepage_exporter', m.rolname);
  END LOOP;
END
$members$;
DO $monitor$
BEGIN
  IF NOT pg_has_role('homepage_exporter', 'pg_monitor', 'MEMBER') THEN
    GRANT pg_monitor TO homepage_exporter;
  END IF;
END
$monitor$;

-- CONNECT and USAGE on public usually come through PUBLIC; granted only where they do not.
DO $db$
BEGIN
  IF NOT has_database_privilege('homepage_exporter', current_database(), 'CONNECT') THEN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO homepage_exporter', current_database());
  END IF;
  IF NOT has_schema_privilege('homepage_exporter', 'public', 'USAGE') THEN
    GRANT USAGE ON SCHEMA public TO homepage_exporter;
  END IF;
END
$db$;

-- 2. The CMS tables: SELECT, and a SELECT-only policy so row level security shows every row ----
DO $tables$
DECLARE
  t record;
BEGIN
  FOR t IN
    SELECT c.oid::regclass AS rel FROM pg_class c
    WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
      AND (c.relname LIKE 'homepage%' OR c.relname LIKE 'section%' OR c.relname LIKE 'media%')
  LOOP
    EXECUTE format('REVOKE ALL ON %s FROM homepage_exporter', t.rel);
    EXECUTE format('GRANT SELECT ON %s TO homepage_exporter', t.rel);
    EXECUTE format('DROP POLICY IF EXISTS homepage_exporter_read ON %s', t.rel);
    EXECUTE format('CREATE POLICY homepage_exporter_read ON %s AS PERMISSIVE FOR SELECT'
                   ' TO homepage_exporter USING (true)', t.rel);
  END LOOP;
END
$tables$;

-- 3. The exporter's own schema -------------------------------------------------------------------
CREATE SCHEMA IF NOT EXISTS homepage_exporter;
REVOKE ALL ON SCHEMA homepage_exporter FROM PUBLIC;
GRANT USAGE ON SCHEMA homepage_exporter TO homepage_exporter;

-- pg_cron: views over its tables, without `command` (job commands can carry secrets).
DO $cron$
BEGIN
  -- Leftovers of older versions: schema access and our own policies on pg_cron's tables.
  IF EXISTS (SELECT FROM pg_namespace WHERE nspname = 'cron') THEN
    IF has_schema_privilege('homepage_exporter', 'cron', 'USAGE') THEN
      EXECUTE 'REVOKE ALL ON SCHEMA cron FROM homepage_exporter';
    END IF;
    IF EXISTS (SELECT FROM pg_policies WHERE schemaname = 'cron'
               AND policyname = 'homepage_exporter_read') THEN
      BEGIN
        EXECUTE 'DROP POLICY IF EXISTS homepage_exporter_read ON cron.job';
        EXECUTE 'DROP POLICY IF EXISTS homepage_exporter_read ON cron.job_run_details';
      EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'left policy homepage_exporter_read on pg_cron''s tables: only their owner can drop it, and it is harmless without USAGE on schema cron';
      END;
    END IF;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron') THEN
    RAISE NOTICE 'pg_cron is not installed: no cron views (run this script again after installing it)';
    RETURN;
  END IF;
  IF NOT (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user) THEN
    RAISE WARNING 'role % bypasses no row level security: the cron views will show only its own jobs', current_user;
  END IF;
  EXECUTE $v$
    CREATE OR REPLACE VIEW homepage_exporter.cron_job AS
    SELECT jobid, jobname::text AS jobname, schedule, active, database, username
    FROM cron.job
  $v$;
  EXECUTE $v$
    CREATE OR REPLACE VIEW homepage_exporter.cron_job_run_details AS
    SELECT runid, jobid, database, username, status,
           left(return_message, 200) AS return_message, start_time, end_time
    FROM cron.job_run_details
  $v$;
  EXECUTE 'REVOKE ALL ON homepage_exporter.cron_job, homepage_exporter.cron_job_run_details FROM PUBLIC';
  EXECUTE 'GRANT SELECT ON homepage_exporter.cron_job, homepage_exporter.cron_job_run_details TO homepage_exporter';
END
$cron$;

-- pg_stat_statements, wherever CREATE EXTENSION put it (PostgreSQL 13+ column names).
DO $statements$
DECLARE
  ext_schema name;
BEGIN
  SELECT n.nspname INTO ext_schema FROM pg_extension e
  JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements';
  IF ext_schema IS NULL OR current_setting('server_version_num')::int < 130000 THEN
    RAISE NOTICE 'pg_stat_statements is not installed (or PostgreSQL < 13): no statements view';
    RETURN;
  END IF;
  EXECUTE format($v$
    CREATE OR REPLACE VIEW homepage_exporter.pg_stat_statements AS
    SELECT userid, dbid, queryid, query, calls, total_exec_time, max_exec_time, rows
    FROM %I.pg_stat_statements
  $v$, ext_schema);
  EXECUTE 'REVOKE ALL ON homepage_exporter.pg_stat_statements FROM PUBLIC';
  EXECUTE 'GRANT SELECT ON homepage_exporter.pg_stat_statements TO homepage_exporter';
END
$statements$;

-- 4. What the public sees: probes that run with `anon`'s and `authenticated`'s rights --------
-- Render time covers every column of every row (each row is turned into text), so an
-- inlinable get_homepage_content() cannot be reduced to a count by the planner. A row whose
-- `content` column is NULL is a section the public receives without its content (a policy or
-- grant on the versions hides it); a function without such a column counts none. The
-- `products` and `categories` arrays are summed as the role receives them (a policy on
-- section_products or section_categories shortens them); a function without such a column
-- gives NULL, not 0, so no comparison is made with what is live.
-- One body, created once per role: each copy is owned by its role, so row level security and
-- grants apply exactly as for the REST API, while the exporter is a member of neither role.
DO $render$
DECLARE
  audience text;
BEGIN
  FOREACH audience IN ARRAY ARRAY['anon', 'authenticated'] LOOP
    -- Earlier versions returned fewer columns, which CREATE OR REPLACE cannot change.
    EXECUTE format('DROP FUNCTION IF EXISTS homepage_exporter.%I(text[])', 'render_as_' || audience);
    EXECUTE format($fn$
      CREATE OR REPLACE FUNCTION homepage_exporter.%I(p_locales text[])
      RETURNS TABLE (locale text, render_seconds double precision, sections bigint,
                     sections_without_content bigint, bytes bigint, products bigint,
                     categories bigint)
      LANGUAGE plpgsql STABLE SECURITY DEFINER
      SET search_path = public, extensions, pg_temp
      AS $body$
      DECLARE
        started timestamptz;
      BEGIN
        FOR locale IN SELECT DISTINCT l FROM unnest(p_locales) AS l ORDER BY 1 LOOP
          started := clock_timestamp();
          SELECT count(*),
                 count(*) FILTER (WHERE j ? 'content' AND jsonb_typeof(j -> 'content') = 'null'),
                 coalesce(sum(octet_length(c::text)), 0),
                 -- No rows: 0. Rows without the column: NULL (bool_or is false).
                 CASE WHEN bool_or(j ? 'products') IS NOT FALSE THEN coalesce(sum(
                   CASE WHEN jsonb_typeof(j -> 'products') = 'array'
                        THEN jsonb_array_length(j -> 'products') ELSE 0 END), 0) END,
                 CASE WHEN bool_or(j ? 'categories') IS NOT FALSE THEN coalesce(sum(
                   CASE WHEN jsonb_typeof(j -> 'categories') = 'array'
                        THEN jsonb_array_length(j -> 'categories') ELSE 0 END), 0) END
            INTO sections, sections_without_content, bytes, products, categories
          FROM public.get_homepage_content(locale) AS c, LATERAL to_jsonb(c) AS r(j);
          render_seconds := extract(epoch FROM clock_timestamp() - started);
          RETURN NEXT;
        END LOOP;
      END
      $body$$fn$, 'render_as_' || audience);
  END LOOP;
END
$render$;

-- What is live, to compare with what the public receives: the products and categories linked
-- to each locale's live sections, counted with the exporter's own rights. The column by which
-- section_products and section_categories name their section is read from their foreign key
-- to homepage_sections (section_id in the reference schema; a CMS may call it otherwise), so
-- the statement is built here, in the database: a fixed statement could only find the column
-- by turning every link row into JSON, which read both tables whole for every locale (21 ms
-- per locale at 10x the capacity warnings, where this takes 1.8 ms through the section index).
CREATE OR REPLACE FUNCTION homepage_exporter.live_links(p_locales text[])
RETURNS TABLE (locale text, products bigint, categories bigint)
LANGUAGE plpgsql STABLE SECURITY INVOKER
SET search_path = public, pg_temp
AS $fn$
DECLARE
  link text;
  col name;
  same_type boolean;
  counts text[] := ARRAY[]::text[];
BEGIN
  FOREACH link IN ARRAY ARRAY['section_products', 'section_categories'] LOOP
    SELECT coalesce(
             (SELECT min(a.attname) FROM pg_constraint c
              JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
              WHERE c.contype = 'f' AND c.conrelid = to_regclass(link)
                AND c.confrelid = 'homepage_sections'::regclass),
             (SELECT a.attname FROM pg_attribute a
              WHERE a.attrelid = to_regclass(link) AND a.attname = 'section_id'
                AND NOT a.attisdropped))
      INTO col;
    SELECT a.atttypid = (SELECT k.atttypid FROM pg_attribute k
                         WHERE k.attrelid = 'homepage_sections'::regclass AND k.attname = 'id')
      INTO same_type
    FROM pg_attribute a WHERE a.attrelid = to_regclass(link) AND a.attname = col;
    counts := counts || CASE
      -- No column names the section: nothing is linked, as no row could say to which.
      WHEN col IS NULL THEN '0'
      WHEN same_type THEN format('(SELECT count(*) FROM %I l WHERE l.%I = hs.id)', link, col)
      ELSE format('(SELECT count(*) FROM %I l WHERE l.%I::text = hs.id::text)', link, col)
    END;
  END LOOP;
  RETURN QUERY EXECUTE format(
    'SELECT hs.locale::text, sum(%s)::bigint, sum(%s)::bigint FROM homepage_sections hs'
    ' WHERE hs.locale = ANY ($1) AND hs.is_active AND hs.status = %L GROUP BY hs.locale',
    counts[1], counts[2], 'published')
  USING p_locales;
END
$fn$;
REVOKE ALL ON FUNCTION homepage_exporter.live_links(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION homepage_exporter.live_links(text[]) TO homepage_exporter;

CREATE OR REPLACE FUNCTION homepage_exporter.sections_visible_to_anon(p_locales text[])
RETURNS TABLE (locale text, visible bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, extensions, pg_temp
AS $fn$
  SELECT l.locale, count(hs.locale)
  FROM (SELECT DISTINCT unnest(p_locales)) AS l(locale)
  LEFT JOIN public.homepage_sections hs ON hs.locale = l.locale
  GROUP BY l.locale
$fn$;

DO $probes$
DECLARE
  fn regprocedure;
  owner text;
BEGIN
  FOR fn, owner IN VALUES
    ('homepage_exporter.render_as_anon(text[])'::regprocedure, 'anon'),
    ('homepage_exporter.render_as_authenticated(text[])'::regprocedure, 'authenticated'),
    ('homepage_exporter.sections_visible_to_anon(text[])'::regprocedure, 'anon')
  LOOP
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = owner) THEN
      -- A new owner needs CREATE on the schema; granted for this statement only.
      EXECUTE format('GRANT CREATE ON SCHEMA homepage_exporter TO %I', owner);
      EXECUTE format('ALTER FUNCTION %s OWNER TO %I', fn, owner);
      EXECUTE format('REVOKE CREATE ON SCHEMA homepage_exporter FROM %I', owner);
    ELSE
      RAISE WARNING 'no role %: % runs with %''s rights, not the public''s', owner, fn, current_user;
    END IF;
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO homepage_exporter', fn);
  END LOOP;
  -- Older versions granted EXECUTE on the render function directly.
  IF to_regprocedure('public.get_homepage_content(text)') IS NOT NULL THEN
    REVOKE ALL ON FUNCTION public.get_homepage_content(text) FROM homepage_exporter;
  END IF;
END
$probes$;

COMMIT;
