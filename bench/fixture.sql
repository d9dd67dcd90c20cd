-- Homepage CMS data at a multiple of the runbook's capacity warnings (psql -v scale=N):
--   sections per locale 50*N (3 locales), versions per section up to 500*N (about a third of
--   that on average), media assets 100,000*N, schedules 3,000*N with 1 % pending.
-- Run as a superuser on a database with the reference schema; takes ~30 s at scale=10.
\set ON_ERROR_STOP on
SET synchronous_commit = off;
-- The rows are consistent by construction: skip the per-row foreign-key checks while loading
-- (the triggers that enforce them; the CMS tables have no others). Halves the load time.
SET session_replication_role = replica;
-- Secondary indexes are built once after the load rather than maintained row by row; the
-- schema's definitions are restored verbatim at the end.
SET maintenance_work_mem = '256MB';
DROP INDEX idx_section_versions_history, idx_media_assets_created;

INSERT INTO homepage_sections (section_key, locale, section_type, status, is_active, display_order)
SELECT 'section-' || g, l, 'product_grid',
       CASE WHEN g % 10 = 0 THEN 'draft' ELSE 'published' END, g % 25 <> 0, g
FROM unnest(ARRAY['en', 'de', 'fr']) AS l, generate_series(1, 50 * :scale) AS g;

-- Versions: the first section of each locale gets the maximum, the rest a spread below it.
INSERT INTO section_versions (section_id, version_number, content, is_published, created_at)
SELECT hs.id, v,
       jsonb_build_object('title', 'v' || v, 'image', 'homepage/' || hs.section_key || '/' || (v % 50) || '.webp'),
       false, now() - ((n.versions - v) || ' hours')::interval
FROM homepage_sections hs
CROSS JOIN LATERAL (SELECT CASE WHEN hs.display_order = 1 THEN 500 * :scale
                                ELSE 20 + (hs.display_order * 7919) % (300 * :scale) END AS versions) n
CROSS JOIN LATERAL generate_series(1, n.versions) AS v;

UPDATE homepage_sections hs SET published_version_id = sv.id
FROM section_versions sv
WHERE sv.section_id = hs.id AND sv.version_number = 1 AND hs.status = 'published';
UPDATE section_versions SET is_published = true WHERE version_number = 1;

INSERT INTO section_products (section_id, product_id, display_order)
SELECT hs.id, gen_random_uuid(), p FROM homepage_sections hs, generate_series(1, 8) AS p;

INSERT INTO media_assets (file_path, file_size, created_at)
SELECT 'homepage/section-' || (g % (50 * :scale)) || '/' || g || '.webp', 50000 + g % 500000,
       now() - ((g % 400) || ' days')::interval
FROM generate_series(1, 100000 * :scale) AS g;

INSERT INTO section_schedules (section_id, version_id, publish_at, status)
SELECT hs.id, hs.published_version_id, now() - ((g % 1000) || ' minutes')::interval,
       CASE WHEN g % 100 = 0 THEN 'pending' WHEN g % 37 = 0 THEN 'failed' ELSE 'completed' END
FROM generate_series(1, 3000 * :scale) AS g
JOIN homepage_sections hs ON hs.display_order = 1 + g % (50 * :scale) AND hs.locale = 'en'
WHERE hs.published_version_id IS NOT NULL;

CREATE INDEX idx_section_versions_history ON section_versions (section_id, version_number DESC);
CREATE INDEX idx_media_assets_created ON media_assets (created_at);

VACUUM ANALYZE;
