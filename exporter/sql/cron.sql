-- The runbook's pg_cron job, in the database named by cron.database_name. On Supabase, enable
-- pg_cron (Database > Extensions) and run this as `postgres`; elsewhere a superuser creates the
-- extension first. The job runs as the role that schedules it.
CREATE EXTENSION IF NOT EXISTS pg_cron;
SELECT cron.schedule(
  'process-scheduled-publishes',
  '*/5 * * * *',
  $$SELECT process_scheduled_publishes()$$
);
