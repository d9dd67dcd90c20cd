-- A realistic homepage for the demo: three locales, a dozen sections each, version history,
-- products, categories, media, and schedules in every status. Idempotent on an empty schema.
BEGIN;

INSERT INTO homepage_sections (section_key, locale, section_type, status, is_active, display_order,
                               created_at, updated_at)
SELECT k.key, l.locale, k.type, 'draft', true, k.ord,
       now() - (k.ord || ' days')::interval - interval '120 days', now() - (k.ord || ' hours')::interval
FROM (VALUES ('en'), ('de'), ('fr')) AS l(locale)
CROSS JOIN (VALUES
  ('hero-banner', 'hero', 1), ('new-arrivals', 'product_grid', 2), ('editors-picks', 'product_grid', 3),
  ('shop-by-era', 'category_grid', 4), ('denim-story', 'editorial', 5), ('sale-teaser', 'banner', 6),
  ('brand-spotlight', 'editorial', 7), ('trending-now', 'product_carousel', 8),
  ('gift-guide', 'product_grid', 9), ('newsletter', 'signup', 10), ('instagram', 'social', 11),
  ('footer-promo', 'banner', 12)
) AS k(key, type, ord)
ON CONFLICT (locale, section_key) DO NOTHING;

-- 5 to 40 versions per section; content references media by path and by public URL.
INSERT INTO section_versions (section_id, version_number, content, change_summary, created_at)
SELECT hs.id, v,
       jsonb_build_object(
         'title', initcap(replace(hs.section_key, '-', ' ')) || ' v' || v,
         'image', 'homepage/' || hs.section_key || '/' || ((v % 4) + 1) || '.webp',
         'background', 'https://demo.supabase.co/storage/v1/object/public/media/homepage/'
                       || hs.section_key || '/bg.webp',
         'cta', jsonb_build_object('label', 'Shop now', 'href', '/shop/' || hs.section_key)),
       CASE WHEN v = 1 THEN 'Initial version' ELSE 'Copy and imagery update' END,
       hs.created_at + (v || ' days')::interval
FROM homepage_sections hs
CROSS JOIN LATERAL generate_series(1, 5 + (abs(hashtext(hs.section_key || hs.locale)) % 36)) AS v
ON CONFLICT (section_id, version_number) DO NOTHING;

-- Publish the newest version of every section.
SELECT publish_section_version(hs.id, sv.id)
FROM homepage_sections hs
JOIN LATERAL (SELECT id FROM section_versions WHERE section_id = hs.id
              ORDER BY version_number DESC LIMIT 1) sv ON true;

INSERT INTO section_products (section_id, product_id, display_order)
SELECT hs.id, gen_random_uuid(), p
FROM homepage_sections hs CROSS JOIN generate_series(1, 8) AS p
WHERE hs.section_type IN ('product_grid', 'product_carousel');

INSERT INTO section_categories (section_id, category_id, display_order)
SELECT hs.id, gen_random_uuid(), c
FROM homepage_sections hs CROSS JOIN generate_series(1, 6) AS c
WHERE hs.section_type = 'category_grid';

-- Media: what the versions use, plus an old unused back catalogue.
INSERT INTO media_assets (file_path, file_size, mime_type, created_at)
SELECT DISTINCT ON (path) path, 150000 + abs(hashtext(path)) % 900000, 'image/webp',
       now() - interval '200 days'
FROM (
  SELECT 'homepage/' || k || '/' || n || '.webp' AS path
  FROM (SELECT DISTINCT section_key FROM homepage_sections) s(k), generate_series(1, 4) n
  UNION ALL
  SELECT 'homepage/' || section_key || '/bg.webp' FROM homepage_sections
) used
ON CONFLICT (file_path) DO NOTHING;
INSERT INTO media_assets (file_path, file_size, mime_type, created_at)
SELECT 'archive/2024/lookbook-' || g || '.jpg', 400000 + g * 1000, 'image/jpeg',
       now() - interval '400 days' + (g || ' hours')::interval
FROM generate_series(1, 60) g
ON CONFLICT (file_path) DO NOTHING;

-- Schedules: history, and some upcoming ones the simulator will see come due.
INSERT INTO section_schedules (section_id, version_id, action, publish_at, status, processed_at,
                               created_at, updated_at)
SELECT hs.id, sv.id, 'publish', now() - (g || ' days')::interval,
       CASE WHEN g % 17 = 0 THEN 'failed' WHEN g % 11 = 0 THEN 'cancelled' ELSE 'completed' END,
       now() - (g || ' days')::interval, now() - (g + 1 || ' days')::interval,
       now() - (g || ' days')::interval
FROM homepage_sections hs
JOIN LATERAL (SELECT id FROM section_versions WHERE section_id = hs.id
              ORDER BY version_number DESC LIMIT 1) sv ON true
CROSS JOIN generate_series(1, 3) g;

COMMIT;
ANALYZE;
