"""SQL shipped with the exporter: reference CMS schema, pg_cron job, least-privileged role."""
