-- The runbook's pg_cron job. Run as a superuser in the database named by cron.database_name.
CREATE EXTENSION IF NOT EXISTS pg_cron;
SELECT cron.schedule(
  'process-scheduled-publishes',
  '*/5 * * * *',
  $$SELECT process_scheduled_publishes()$$
);
