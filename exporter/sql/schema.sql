-- Reference reconstruction of the Homepage CMS schema the runbook describes
-- (migration 20241217000001_homepage_cms_system.sql is not public). Idempotent.
-- Shipped queries rely only on the columns the runbook shows; see docs/metrics.md.

-- gen_random_uuid() is core since PostgreSQL 13: no extension needed.

-- Supabase's API roles.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN
    CREATE ROLE anon NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
  END IF;
END
$$;

CREATE TABLE IF NOT EXISTS homepage_sections (
  id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  section_key          text NOT NULL,
  locale               text NOT NULL DEFAULT 'en',
  section_type         text NOT NULL DEFAULT 'hero',
  status               text NOT NULL DEFAULT 'draft'
                       CHECK (status IN ('draft', 'published', 'archived')),
  is_active            boolean NOT NULL DEFAULT true,
  display_order        integer NOT NULL DEFAULT 0,
  published_version_id uuid,
  created_at           timestamptz NOT NULL DEFAULT now(),
  updated_at           timestamptz NOT NULL DEFAULT now(),
  UNIQUE (locale, section_key)
);

CREATE TABLE IF NOT EXISTS section_versions (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  section_id     uuid NOT NULL REFERENCES homepage_sections (id) ON DELETE CASCADE,
  version_number integer NOT NULL,
  content        jsonb NOT NULL DEFAULT '{}',
  change_summary text,
  is_published   boolean NOT NULL DEFAULT false,
  created_by     uuid,
  created_at     timestamptz NOT NULL DEFAULT now(),
  UNIQUE (section_id, version_number)
);

ALTER TABLE homepage_sections DROP CONSTRAINT IF EXISTS homepage_sections_published_version_fk;
ALTER TABLE homepage_sections ADD CONSTRAINT homepage_sections_published_version_fk
  FOREIGN KEY (published_version_id) REFERENCES section_versions (id) ON DELETE SET NULL;

-- The runbook's weekly job inserts (id, section_id, version_number, content, created_at).
CREATE TABLE IF NOT EXISTS section_versions_archive (
  id             uuid PRIMARY KEY,
  section_id     uuid NOT NULL,
  version_number integer NOT NULL,
  content        jsonb NOT NULL,
  created_at     timestamptz NOT NULL,
  archived_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS section_schedules (
  id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  section_id    uuid NOT NULL REFERENCES homepage_sections (id) ON DELETE CASCADE,
  version_id    uuid NOT NULL,
  action        text NOT NULL DEFAULT 'publish' CHECK (action IN ('publish', 'unpublish')),
  publish_at    timestamptz NOT NULL,
  status        text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'completed', 'failed', 'cancelled')),
  error_message text,
  processed_at  timestamptz,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS section_products (
  id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  section_id    uuid NOT NULL REFERENCES homepage_sections (id) ON DELETE CASCADE,
  product_id    uuid NOT NULL,
  display_order integer NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS section_categories (
  id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  section_id    uuid NOT NULL REFERENCES homepage_sections (id) ON DELETE CASCADE,
  category_id   uuid NOT NULL,
  display_order integer NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS media_assets (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  file_path   text NOT NULL UNIQUE,
  file_size   bigint NOT NULL CHECK (file_size >= 0),
  mime_type   text NOT NULL DEFAULT 'image/webp',
  uploaded_by uuid,
  created_at  timestamptz NOT NULL DEFAULT now()
);

-- The indexes the runbook names.
CREATE INDEX IF NOT EXISTS idx_homepage_sections_render
  ON homepage_sections (locale, display_order) WHERE is_active AND status = 'published';
CREATE INDEX IF NOT EXISTS idx_section_versions_history
  ON section_versions (section_id, version_number DESC);
CREATE INDEX IF NOT EXISTS idx_section_schedules_pending
  ON section_schedules (publish_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS idx_section_products_section ON section_products (section_id);
CREATE INDEX IF NOT EXISTS idx_section_categories_section ON section_categories (section_id);
CREATE INDEX IF NOT EXISTS idx_media_assets_created ON media_assets (created_at);
-- Every foreign key has an index (Supabase's advisor lint 0001): deletes of a section or a
-- version would otherwise scan these tables.
CREATE INDEX IF NOT EXISTS idx_homepage_sections_published_version
  ON homepage_sections (published_version_id);
CREATE INDEX IF NOT EXISTS idx_section_schedules_section ON section_schedules (section_id);
-- Failed publishes are few and read every 30 s (publish_failures): without this index every
-- check scans every schedule ever made. docs/runbook.md recommends it to CMSs that lack it.
CREATE INDEX IF NOT EXISTS idx_section_schedules_failed
  ON section_schedules (updated_at) WHERE status = 'failed';

-- Everything the public homepage shows for one locale, in display order.
CREATE OR REPLACE FUNCTION get_homepage_content(p_locale text)
RETURNS TABLE (
  section_id uuid, section_key text, section_type text, display_order integer,
  version_number integer, content jsonb, products jsonb, categories jsonb
)
LANGUAGE sql STABLE SECURITY INVOKER
SET search_path = public, pg_temp
AS $$
  SELECT hs.id, hs.section_key, hs.section_type, hs.display_order,
         sv.version_number, sv.content,
         COALESCE((SELECT jsonb_agg(sp.product_id ORDER BY sp.display_order)
                   FROM section_products sp WHERE sp.section_id = hs.id), '[]'::jsonb),
         COALESCE((SELECT jsonb_agg(sc.category_id ORDER BY sc.display_order)
                   FROM section_categories sc WHERE sc.section_id = hs.id), '[]'::jsonb)
  FROM homepage_sections hs
  LEFT JOIN section_versions sv ON sv.id = hs.published_version_id
  WHERE hs.locale = p_locale AND hs.is_active AND hs.status = 'published'
  ORDER BY hs.display_order
$$;

CREATE OR REPLACE FUNCTION publish_section_version(p_section_id uuid, p_version_id uuid)
RETURNS TABLE (section_id uuid, version_id uuid, version_number integer)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
  v_number integer;
BEGIN
  SELECT sv.version_number INTO v_number
  FROM section_versions sv WHERE sv.id = p_version_id AND sv.section_id = p_section_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'version % does not belong to section %', p_version_id, p_section_id
      USING ERRCODE = 'foreign_key_violation';
  END IF;
  UPDATE section_versions sv SET is_published = (sv.id = p_version_id)
  WHERE sv.section_id = p_section_id AND (sv.is_published OR sv.id = p_version_id);
  UPDATE homepage_sections hs
  SET published_version_id = p_version_id, status = 'published', updated_at = now()
  WHERE hs.id = p_section_id;
  RETURN QUERY SELECT p_section_id, p_version_id, v_number;
END
$$;

CREATE OR REPLACE FUNCTION revert_section_to_version(p_section_id uuid, p_version_id uuid)
RETURNS TABLE (section_id uuid, new_version_id uuid, version_number integer)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
  v_content jsonb;
  v_old integer;
  v_next integer;
  v_id uuid;
BEGIN
  SELECT sv.content, sv.version_number INTO v_content, v_old
  FROM section_versions sv WHERE sv.id = p_version_id AND sv.section_id = p_section_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'version % does not belong to section %', p_version_id, p_section_id;
  END IF;
  SELECT COALESCE(max(sv.version_number), 0) + 1 INTO v_next
  FROM section_versions sv WHERE sv.section_id = p_section_id;
  INSERT INTO section_versions (section_id, version_number, content, change_summary)
  VALUES (p_section_id, v_next, v_content, format('Revert to version %s', v_old))
  RETURNING id INTO v_id;
  RETURN QUERY SELECT p_section_id, v_id, v_next;
END
$$;

-- Publishes every due schedule; a failing one is marked failed with its error, not retried.
CREATE OR REPLACE FUNCTION process_scheduled_publishes()
RETURNS TABLE (section_id uuid, version_id uuid, action text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
  s record;
BEGIN
  FOR s IN
    SELECT ss.id, ss.section_id, ss.version_id, ss.action FROM section_schedules ss
    WHERE ss.status = 'pending' AND ss.publish_at <= now()
    ORDER BY ss.publish_at
    FOR UPDATE SKIP LOCKED
  LOOP
    BEGIN
      IF s.action = 'publish' THEN
        PERFORM publish_section_version(s.section_id, s.version_id);
      ELSE
        UPDATE homepage_sections hs SET status = 'draft', updated_at = now()
        WHERE hs.id = s.section_id;
      END IF;
      UPDATE section_schedules ss
      SET status = 'completed', processed_at = now(), updated_at = now() WHERE ss.id = s.id;
      section_id := s.section_id; version_id := s.version_id; action := s.action;
      RETURN NEXT;
    EXCEPTION WHEN OTHERS THEN
      UPDATE section_schedules ss
      SET status = 'failed', error_message = SQLERRM, processed_at = now(), updated_at = now()
      WHERE ss.id = s.id;
    END;
  END LOOP;
END
$$;

-- Row level security on every CMS table, with the runbook's public policy.
ALTER TABLE homepage_sections ENABLE ROW LEVEL SECURITY;
ALTER TABLE section_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE section_versions_archive ENABLE ROW LEVEL SECURITY;
ALTER TABLE section_schedules ENABLE ROW LEVEL SECURITY;
ALTER TABLE section_products ENABLE ROW LEVEL SECURITY;
ALTER TABLE section_categories ENABLE ROW LEVEL SECURITY;
ALTER TABLE media_assets ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS "Published sections viewable by everyone" ON homepage_sections;
CREATE POLICY "Published sections viewable by everyone" ON homepage_sections
  FOR SELECT USING (status = 'published' AND is_active = true);
DROP POLICY IF EXISTS "Published versions viewable by everyone" ON section_versions;
CREATE POLICY "Published versions viewable by everyone" ON section_versions
  FOR SELECT USING (is_published);
DROP POLICY IF EXISTS "Section products viewable by everyone" ON section_products;
CREATE POLICY "Section products viewable by everyone" ON section_products
  FOR SELECT USING (true);
DROP POLICY IF EXISTS "Section categories viewable by everyone" ON section_categories;
CREATE POLICY "Section categories viewable by everyone" ON section_categories
  FOR SELECT USING (true);
DROP POLICY IF EXISTS "Media viewable by everyone" ON media_assets;
CREATE POLICY "Media viewable by everyone" ON media_assets FOR SELECT USING (true);

-- Schedules and the archive are private: only the service role (which bypasses RLS) and the
-- SECURITY DEFINER functions touch them. An explicit policy says so (advisor lint 0008).
DROP POLICY IF EXISTS "Service role manages schedules" ON section_schedules;
CREATE POLICY "Service role manages schedules" ON section_schedules
  FOR ALL TO service_role USING (true) WITH CHECK (true);
DROP POLICY IF EXISTS "Service role manages the archive" ON section_versions_archive;
CREATE POLICY "Service role manages the archive" ON section_versions_archive
  FOR ALL TO service_role USING (true) WITH CHECK (true);

-- Privileges. On Supabase, default privileges give anon, authenticated and service_role ALL on
-- every table and EXECUTE on every function `postgres` creates in public, relying on RLS. RLS
-- does not cover TRUNCATE (nor REFERENCES, TRIGGER), and a SECURITY DEFINER function bypasses
-- it: so take everything back and grant only what the public API needs.
REVOKE ALL ON homepage_sections, section_versions, section_versions_archive, section_schedules,
  section_products, section_categories, media_assets FROM PUBLIC, anon, authenticated;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
GRANT SELECT ON homepage_sections, section_versions, section_products, section_categories,
  media_assets TO anon, authenticated;
GRANT ALL ON homepage_sections, section_versions, section_versions_archive, section_schedules,
  section_products, section_categories, media_assets TO service_role;

REVOKE ALL ON FUNCTION get_homepage_content(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION get_homepage_content(text) TO anon, authenticated, service_role;
-- The writers publish to the live homepage: the service role (and the owner, pg_cron's job) only.
-- Executable by anon they would be callable by anyone through the REST API's /rpc.
REVOKE ALL ON FUNCTION publish_section_version(uuid, uuid), revert_section_to_version(uuid, uuid),
  process_scheduled_publishes() FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION publish_section_version(uuid, uuid), revert_section_to_version(uuid, uuid),
  process_scheduled_publishes() TO service_role;
