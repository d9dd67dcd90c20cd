"""The cron check against a year of pg_cron history, before and after reading it by runid.

    python -m bench.cron_history [--rows 3100000] [--repeats 7]

pg_cron never purges cron.job_run_details and indexes it by runid only. This loads a year of
runs of six jobs (one a minute each, 3.1 million rows) into a throwaway cluster, then times
the `cron_jobs` statement as the exporter role: the one shipped before (counts over the whole
history) and the one shipped now (`queries.yaml`), in the same run, median of the repeats.
The figures go to bench/cron_history.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import platform
import statistics
import time
from pathlib import Path

import asyncpg

from exporter.config import load_config
from exporter.demo.cluster import Cluster
from exporter.demo.database import EXPORTER_ROLE, create_cms_database
from exporter.settings import SHIPPED_QUERIES

PASSWORD = "bench-exporter-pw"  # a loopback throwaway cluster
DATABASE = "cms"
REPORT = Path(__file__).with_name("cron_history.md")

# The statement shipped before this change (git history: queries.yaml, cron_jobs), kept here
# as the baseline it is measured against.
BEFORE = """
WITH jobs AS (
  SELECT jobid, COALESCE(jobname, 'jobid_' || jobid) AS jobname, active
  FROM homepage_exporter.cron_job
  WHERE database = current_database()
  UNION ALL
  SELECT NULL, 'process-scheduled-publishes', false
  WHERE NOT EXISTS (SELECT FROM homepage_exporter.cron_job
                    WHERE jobname = 'process-scheduled-publishes')
)
SELECT j.jobname, j.active,
       r.status = 'succeeded' AS last_success,
       CASE WHEN r.status = 'failed' THEN 1 END AS last_failed,
       left(regexp_replace(coalesce(r.return_message, ''), '\\s+', ' ', 'g'), 80) AS message,
       extract(epoch FROM r.end_time - r.start_time) AS last_duration,
       extract(epoch FROM r.start_time) AS last_start,
       (SELECT count(*) FROM homepage_exporter.cron_job_run_details f
         WHERE f.jobid = j.jobid AND f.status = 'failed') AS failed_runs,
       (SELECT count(*) FROM homepage_exporter.cron_job_run_details f
         WHERE f.jobid = j.jobid AND f.status = 'failed'
           AND f.end_time > now() - interval '1 hour') AS failed_runs_last_hour,
       (SELECT count(*) FROM homepage_exporter.cron_job_run_details a
         WHERE a.jobid = j.jobid AND a.status IN ('starting', 'running')) AS running
FROM jobs j
LEFT JOIN LATERAL (
  SELECT d.status, d.start_time, d.end_time, d.return_message
  FROM homepage_exporter.cron_job_run_details d
  WHERE d.jobid = j.jobid AND d.status IN ('succeeded', 'failed') AND d.end_time IS NOT NULL
  ORDER BY d.runid DESC
  LIMIT 1
) AS r ON true
"""


def load_history(cluster: Cluster, rows: int) -> None:
    cluster.psql(
        f"""
    SELECT cron.unschedule(jobid) FROM cron.job;
    SELECT cron.schedule(name, '0 0 1 1 *', 'SELECT 1')
    FROM unnest(ARRAY['process-scheduled-publishes', 'a', 'b', 'c', 'd', 'e']) AS name;
    INSERT INTO cron.job_run_details (jobid, job_pid, database, username, command, status,
                                      return_message, start_time, end_time)
    SELECT j.jobids[1 + g % 6], 1, 'cms', 'postgres', 'SELECT 1', 'succeeded', 'SELECT 1',
           now() - (({rows} - g) / 6 + 1) * interval '1 minute',
           now() - (({rows} - g) / 6 + 1) * interval '1 minute' + interval '1 second'
    FROM generate_series(1, {rows}) AS g,
         (SELECT array_agg(jobid) AS jobids FROM cron.job) AS j;
    """,
        database=DATABASE,
    )
    cluster.psql("VACUUM ANALYZE cron.job_run_details", database=DATABASE)


async def timings(url: str, sql: str, repeats: int) -> list[float]:
    conn = await asyncpg.connect(url)
    try:
        await conn.fetch(sql)  # warm the cache: both are measured warm
        out = []
        for _ in range(repeats):
            started = time.perf_counter()
            await conn.fetch(sql)
            out.append(time.perf_counter() - started)
        return out
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/cron_history.py", description=__doc__)
    parser.add_argument("--rows", type=int, default=3_100_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    after = next(q for q in load_config(SHIPPED_QUERIES).queries if q.name == "cron_jobs").sql
    with Cluster(cron_database=DATABASE) as cluster:
        if "pg_cron" not in cluster.preload:
            print("pg_cron is not installed for this PostgreSQL: nothing to measure")
            return 1
        create_cms_database(cluster, DATABASE, exporter_password=PASSWORD)
        started = time.perf_counter()
        load_history(cluster, args.rows)
        loaded = time.perf_counter() - started
        url = cluster.url(EXPORTER_ROLE, PASSWORD, DATABASE)
        before_s = statistics.median(asyncio.run(timings(url, BEFORE, args.repeats)))
        after_s = statistics.median(asyncio.run(timings(url, after, args.repeats)))
        version = cluster.major_version
    lines = [
        "# The cron check against a year of pg_cron history",
        "",
        "Generated by `python -m bench.cron_history` (same run, same cluster, warm cache,",
        f"median of {args.repeats}; the exporter role through its views).",
        "",
        f"- Machine: {platform.machine()}, {platform.system()}, PostgreSQL {version},"
        f" {dt.date.today().isoformat()}.",
        f"- History: {args.rows:,} rows in cron.job_run_details, 6 jobs"
        f" (loaded in {loaded:.1f} s).",
        "",
        "| cron_jobs statement | time per run |",
        "|---|---|",
        f"| before: counts over the whole history | {before_s * 1000:,.1f} ms |",
        f"| now: the newest 10,000 runs along the runid index | {after_s * 1000:,.1f} ms |",
        f"| ratio | {before_s / after_s:,.0f}x faster |",
        "",
    ]
    REPORT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
