"""Soak: many thousand refresh cycles with failures mixed in; resident memory must stay flat.

    .venv/bin/python bench/soak.py [--cycles 20000] [--seconds 300]

Starts a throwaway PostgreSQL on loopback and the real exporter process with twelve queries on
50 ms intervals: some always succeed, some fail at random with SQL errors, some time out on the
server, one returns text where a number belongs, one returns more series than allowed, and one
changes its label set every run (series churn). While they run, /metrics is scraped 20 times a
second. RSS of the exporter is sampled after warm-up and at the end. Not part of CI.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.demo.cluster import Cluster
from exporter.demo.database import EXPORTER_ROLE
from tests.harness import EXPORTER_PASSWORD, Exporter, Scrape, exporter_env

QUERY = """\
  - name: {name}
    help: Soak query.
    sql: {sql}
    interval: 1s
    timeout: 500ms
    stale_after: 3s
    metrics:
      - {{name: soak_{name}, help: Soak., value: v, labels: [k]}}
"""
QUERIES = {
    **{
        f"ok{i}": f"SELECT g AS v, 'k' || g AS k FROM generate_series(1, {10 * (i + 1)}) g"
        for i in range(60)  # the interval floor is 1 s: many queries make many cycles
    },
    "flaky": "SELECT 1 / (random() > 0.4)::int AS v, 'x' AS k",
    "slow": "SELECT 1 AS v, 'x' AS k FROM pg_sleep(CASE WHEN random() < 0.3 THEN 0.2 ELSE 0 END)",
    "texty": "SELECT CASE WHEN random() < 0.5 THEN 'text' ELSE '1' END AS v, 'x' AS k",
    "churn": "SELECT 1 AS v, md5(random()::text) AS k FROM generate_series(1, 50)",
    "explosive": "SELECT g AS v, g::text AS k FROM generate_series(1, 2000) g",
    "missing": "SELECT 1 AS v",
}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def runs(scrape: Scrape) -> float:
    return sum(scrape.all("homepage_exporter_query_runs_total").values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=20_000, help="query runs to reach")
    parser.add_argument("--seconds", type=float, default=300, help="stop after this anyway")
    args = parser.parse_args()
    with Cluster(preload=()) as cluster, tempfile.TemporaryDirectory() as folder:
        cluster.psql(f"CREATE ROLE {EXPORTER_ROLE} LOGIN PASSWORD '{EXPORTER_PASSWORD}'")
        queries = Path(folder) / "queries.yaml"
        queries.write_text(
            "version: 1\nqueries:\n"
            + "".join(QUERY.format(name=name, sql=f'"{sql}"') for name, sql in QUERIES.items())
        )
        exporter = Exporter(
            exporter_env(
                cluster.url(EXPORTER_ROLE, EXPORTER_PASSWORD),
                queries,
                pool_size="4",
                max_series_per_query="1000",
                log_level="warning",
            )
        ).wait_healthy()
        try:
            time.sleep(5)  # warm-up: imports, pools, first renders
            start_rss, start_runs = rss_kib(exporter.proc.pid), runs(exporter.scrape())
            samples, latencies = [start_rss], []
            started = time.monotonic()
            last_sample = started
            while time.monotonic() - started < args.seconds:
                t0 = time.perf_counter()
                status, _, body = exporter.get("/metrics")
                assert status == 200
                latencies.append(time.perf_counter() - t0)
                if time.monotonic() - last_sample > 10:
                    samples.append(rss_kib(exporter.proc.pid))
                    last_sample = time.monotonic()
                    if runs(Scrape(body.decode())) - start_runs >= args.cycles:
                        break
                time.sleep(0.05)
            end = exporter.scrape()
            end_rss = rss_kib(exporter.proc.pid)
            elapsed = time.monotonic() - started
            errors = end.all("homepage_exporter_query_errors_total")
            by_reason: dict[str, float] = {}
            for labels, value in errors.items():
                reason = dict(labels)["reason"]
                by_reason[reason] = by_reason.get(reason, 0) + value
            cycles = runs(end) - start_runs
            latencies.sort()
            print(
                f"soak: {cycles:.0f} query runs in {elapsed:.0f} s"
                f" ({cycles / elapsed:.0f}/s), {len(latencies)} scrapes"
            )
            print(
                "errors by reason: "
                + ", ".join(f"{k}={v:.0f}" for k, v in sorted(by_reason.items()))
            )
            print(
                f"RSS after warm-up {start_rss / 1024:.1f} MiB, at the end"
                f" {end_rss / 1024:.1f} MiB ({(end_rss - start_rss) / 1024:+.1f} MiB);"
                f" samples every 10 s: {', '.join(f'{s / 1024:.1f}' for s in samples)}"
            )
            print(
                f"scrape latency p50 {statistics.median(latencies) * 1000:.2f} ms,"
                f" p99 {latencies[int(len(latencies) * 0.99)] * 1000:.2f} ms"
            )
            return 0
        finally:
            exporter.close()


if __name__ == "__main__":
    raise SystemExit(main())
