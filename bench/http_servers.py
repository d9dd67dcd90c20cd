"""The HTTP server on the demo page, against nginx serving the same bytes, in the same run.

`.venv/bin/python -m bench.http_servers` (needs wrk and nginx: bench/run installs them). The
figure docs/benchmarks.md quotes for the choice of HTTP library: scrapes/s, p99 and CPU per
scrape, and the ratio to nginx measured alongside.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from bench.bench import Context, median_load, start_nginx, start_ours, wait_http
from bench.report import write_measured
from exporter.demo.cluster import Cluster
from exporter.demo.database import create_cms_database, sql_file
from exporter.settings import SHIPPED_QUERIES
from tests.harness import EXPORTER_PASSWORD, http_get


def main() -> int:
    seconds, repeats = 8, 3
    with Cluster(cron_database="cms") as pg, tempfile.TemporaryDirectory() as folder:
        create_cms_database(pg, "cms", exporter_password=EXPORTER_PASSWORD)
        pg.psql_file(sql_file("seed.sql"), database="cms")
        ctx = Context(pg, Path(folder), quick=False)
        with contextlib.ExitStack() as stack:
            ours = start_ours(stack, ctx.dsn(), SHIPPED_QUERIES, locales="en,de,fr")
            wait_http(ours.url, 60, lambda b: b"homepage_media_unused_assets" in b)
            body = http_get(ours.url)[2]
            nginx = start_nginx(stack, body, ctx.tmp)
            rows = {s.name: median_load(s, seconds, repeats) for s in (ours, nginx)}
    base = rows["nginx (same bytes)"]
    lines = [
        f"Demo page, {len(body):,} bytes; wrk -t2 -c8, {seconds} s x {repeats}, median.",
        "",
        "| server | scrapes/s | vs nginx | p50 | p99 | CPU per scrape |",
        "|---|---|---|---|---|---|",
    ]
    for name, load in rows.items():
        lines.append(
            f"| {name} | {load.rps:,.0f} | {load.rps / base.rps:.2f}x | {load.p50_ms:.2f} ms |"
            f" {load.p99_ms:.2f} ms | {load.cpu_ms_per_scrape:.3f} ms |"
        )
    table = "\n".join(lines) + "\n"
    write_measured("http_servers.md", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
