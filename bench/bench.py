"""Benchmarks side by side, in one run on this machine; writes docs/benchmarks.md and plots.

    bench/run [--quick]

Peers, on the same database and with equivalent queries (bench/peers.py):
  nginx        serving our own /metrics bytes as a static file: the physical limit;
  postgres_exporter (Debian's prometheus-postgres-exporter) with a custom queries file;
  query-exporter (PyPI, the newest release that installs on this Python) in its own venv.
Every figure is a median over repeats, reported with ratios against the peers measured in the
same run. Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import peers  # noqa: E402
from exporter.config import Config, load_config  # noqa: E402
from exporter.demo.cluster import Cluster, free_port  # noqa: E402
from exporter.demo.database import EXPORTER_ROLE, create_cms_database, sql_file  # noqa: E402
from exporter.runner import run_query  # noqa: E402
from exporter.settings import SHIPPED_QUERIES, Settings, load_settings  # noqa: E402
from exporter.targets import load_targets  # noqa: E402
from tests.harness import (  # noqa: E402
    EXPORTER_PASSWORD,
    Exporter,
    Scrape,
    exporter_env,
    http_get,
    running,
)

OUT = ROOT / "docs" / "benchmarks.md"
PLOTS = ROOT / "docs" / "benchmarks"
QE_VENV = Path(os.environ.get("QUERY_EXPORTER_VENV", ROOT / "bench" / "out" / "qe-venv"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- processes ------------------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


@dataclass
class Server:
    """Something that serves metrics over HTTP on loopback."""

    name: str
    url: str
    pids: Callable[[], list[int]]
    stop: Callable[[], None]


def contains(marker: str) -> Callable[[bytes], bool]:
    """A readiness test: the body mentions `marker`."""
    encoded = marker.encode()
    return lambda body: encoded in body


def reports_queries(expected: int) -> Callable[[bytes], bool]:
    """A readiness test: every query has reported its up state."""
    return lambda body: len(Scrape(body.decode()).all("homepage_exporter_query_up")) == expected


async def cost_per_run(
    settings: Settings, config: Config, pg: Cluster, database: str, runs: int
) -> dict[str, float]:
    """Server time (ms) of one run of each enabled query, as the exporter role runs it.

    Each query on its own: one warm-up run (statement cache, type introspection), then
    pg_stat_statements reset, `runs` runs, and everything the exporter's roles executed in the
    meantime summed. Matching statements by their text missed some twice (pg_stat_statements
    rewrites constants, and a query run once per locale is several calls per run); a reset per
    query charges a query everything its runs cost and nothing else.
    """
    (target,) = load_targets(settings)
    out: dict[str, float] = {}
    totals = (
        "SELECT coalesce(sum(s.total_exec_time), 0) FROM pg_stat_statements s"
        " JOIN pg_roles r ON r.oid = s.userid"
        f" WHERE r.rolname IN ('{EXPORTER_ROLE}', 'anon', 'authenticated')"
        " AND s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND s.query NOT LIKE '%pg_stat_statements_reset%'"
    )
    async with target.database.open() as db:
        for query in config.enabled:
            await run_query(db, query, target.params, settings.max_series_per_query)
            pg.psql("SELECT pg_stat_statements_reset()", database=database)
            for _ in range(runs):
                await run_query(db, query, target.params, settings.max_series_per_query)
            out[query.name] = float(pg.psql(totals, database=database)) / runs
    return out


def wait_listening(port: int, seconds: float = 30) -> None:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds}s")


def wait_http(url: str, seconds: float = 60, ok: Callable[[bytes], bool] = lambda b: True) -> float:
    """Seconds until `url` answers 200 with a body `ok` accepts."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        with contextlib.suppress(OSError):
            status, _, body = http_get(url, timeout=2)
            if status == 200 and ok(body):
                return time.monotonic() - start
        time.sleep(0.02)
    raise RuntimeError(f"{url} did not come up in {seconds}s")


# --- the servers ------------------------------------------------------------------------------


def start_ours(stack: contextlib.ExitStack, dsn: str, queries: Path, **extra: str) -> Server:
    exporter = Exporter(exporter_env(dsn, queries, log_level="warning", **extra))
    stack.callback(exporter.close)
    exporter.wait_healthy(30)
    return Server(
        "homepage-cms-exporter",
        exporter.url + "/metrics",
        lambda: [exporter.proc.pid],
        exporter.close,
    )


def start_nginx(stack: contextlib.ExitStack, body: bytes, tmp: Path) -> Server:
    root = tmp / "nginx"
    root.mkdir(exist_ok=True)
    (root / "metrics").write_bytes(body)
    # As root, nginx's worker runs as nobody: it must be able to reach the file.
    for path in (tmp, root, root / "metrics"):
        path.chmod(0o755)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  default_type text/plain;
  sendfile on;
  server {{ listen 127.0.0.1:{port}; root {root}; location / {{ }} }}
}}
""")
    nginx = ["nginx", "-c", str(conf), "-p", str(tmp)]
    proc = stack.enter_context(running(nginx, tmp / "nginx.log"))
    url = f"http://127.0.0.1:{port}/metrics"
    wait_http(url)
    return Server(
        "nginx (same bytes)", url, lambda: [proc.pid, *children(proc.pid)], proc.terminate
    )


def start_postgres_exporter(
    stack: contextlib.ExitStack, dsn: str, queries: dict[str, Any], tmp: Path
) -> Server:
    path = tmp / f"pe-{len(list(tmp.glob('pe-*')))}.yaml"
    path.write_text(yaml.safe_dump(queries, sort_keys=False))
    port = free_port()
    proc = stack.enter_context(
        running(
            [
                "prometheus-postgres-exporter",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--extend.query-path={path}",
                "--disable-default-metrics",
                "--disable-settings-metrics",
                "--log.level=error",
            ],
            tmp / "postgres_exporter.log",
            env={"DATA_SOURCE_NAME": dsn + "?sslmode=disable"},
        )
    )
    url = f"http://127.0.0.1:{port}/metrics"
    # Only "listening": it runs every query inside the scrape, so a slow query delays even the
    # first answer (that is what the isolation scenario measures).
    wait_listening(port)
    return Server("postgres_exporter", url, lambda: [proc.pid], proc.terminate)


def start_query_exporter(
    stack: contextlib.ExitStack, config: dict[str, Any], tmp: Path, ready: Callable[[bytes], bool]
) -> Server:
    path = tmp / f"qe-{len(list(tmp.glob('qe-*')))}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    proc = stack.enter_context(
        running(
            [
                str(QE_VENV / "bin" / "query-exporter"),
                "--config",
                str(path),
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
                "-L",
                "error",
            ],
            tmp / "query_exporter.log",
        )
    )
    url = f"http://127.0.0.1:{port}/metrics"
    wait_http(url, 120, ready)
    return Server("query-exporter", url, lambda: [proc.pid], proc.terminate)


# --- measurements -----------------------------------------------------------------------------


def _ms(text: str) -> float:
    """wrk's latency (850.00us, 1.27ms, 2.01s, 1.02m) in milliseconds; NaN if unreadable."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        return float("nan")
    number, unit = match.groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    return match.group(1) if match else "nan"


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_scrape: float


def wrk(server: Server, seconds: int, connections: int = 8) -> Load:
    before = cpu_seconds(server.pids())
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "60s",
            "--latency",
            server.url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    cpu = cpu_seconds(server.pids()) - before
    rps = float(_find(r"Requests/sec:\s+([\d.]+)", out))
    requests = int(_find(r"(\d+) requests in", out).replace("nan", "0"))
    p50 = _ms(_find(r"50%\s+(\S+)", out))
    p99 = _ms(_find(r"99%\s+(\S+)", out))
    return Load(rps, p50, p99, 1000 * cpu / max(requests, 1))


def median_load(server: Server, seconds: int, repeats: int) -> Load:
    runs = [wrk(server, seconds) for _ in range(repeats)]
    return Load(
        *(
            statistics.median(getattr(r, f) for r in runs)
            for f in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_scrape")
        )
    )


def scrape_latencies(url: str, seconds: float, timeout: float = 40) -> list[float]:
    """Sequential scrapes for `seconds`, as Prometheus would make them (one at a time)."""
    out = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        t0 = time.perf_counter()
        with contextlib.suppress(OSError):
            http_get(url, timeout=timeout)
        out.append(time.perf_counter() - t0)
        time.sleep(0.1)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the scenarios ------------------------------------------------------------------------------


@dataclass
class Context:
    pg: Cluster
    tmp: Path
    quick: bool
    baseline: str | None = None

    def dsn(self, database: str = "cms") -> str:
        return self.pg.url(EXPORTER_ROLE, EXPORTER_PASSWORD, database)

    @property
    def seconds(self) -> int:
        return 3 if self.quick else 8

    @property
    def repeats(self) -> int:
        return 1 if self.quick else 3


def queries_file(ctx: Context, name: str, body: dict[str, Any]) -> Path:
    path = ctx.tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    load_config(path)
    return path


def series_queries(ctx: Context, count: int) -> Path:
    queries: list[dict[str, Any]] = [
        {
            "name": "series",
            "help": "N series.",
            "sql": peers.series_query(count),
            "interval": "1h",
            "timeout": "2m",
            "metrics": [{"name": "bench_series", "help": "Value.", "value": "v", "labels": ["id"]}],
        }
    ]
    return queries_file(ctx, f"series-{count}", {"version": 1, "queries": queries})


def throughput(ctx: Context) -> dict[str, dict[str, Load | int]]:
    results: dict[str, dict[str, Load | int]] = {}
    shipped = load_config(SHIPPED_QUERIES)
    for label, count in (("demo", 0), ("10k", 10_000), ("100k", 100_000)):
        print(f"throughput: {label}", flush=True)
        with contextlib.ExitStack() as stack:
            if count:
                ours = start_ours(
                    stack,
                    ctx.dsn(),
                    series_queries(ctx, count),
                    max_series_per_query=str(count + 1),
                )
                wait_http(ours.url, 120, contains(f'id="k{count}"'))
                pe_queries = peers.postgres_exporter_series(count)
                qe_config = peers.query_exporter_series(count, ctx.dsn())
                qe_ready = contains(f'id="k{count}"')
            else:
                ours = start_ours(stack, ctx.dsn(), SHIPPED_QUERIES, locales="en,de,fr")
                wait_http(ours.url, 60, contains("homepage_media_unused_assets"))
                pe_queries = peers.postgres_exporter_queries(shipped)
                qe_config = peers.query_exporter_config(shipped, ctx.dsn())
                qe_ready = contains("homepage_media_unused_assets")
            body = http_get(ours.url)[2]
            servers = [
                ours,
                start_nginx(stack, body, ctx.tmp),
                start_postgres_exporter(stack, ctx.dsn(), pe_queries, ctx.tmp),
                start_query_exporter(stack, qe_config, ctx.tmp, qe_ready),
            ]
            row: dict[str, Load | int] = {
                "series": sum(1 for _ in Scrape(body.decode()).samples()),
                "bytes": len(body),
            }
            for server in servers:
                seconds = (
                    ctx.seconds
                    if count < 100_000 or server.name != "postgres_exporter"
                    else max(ctx.seconds, 10)
                )
                row[server.name] = median_load(server, seconds, ctx.repeats)
                print(f"  {server.name}: {row[server.name]}", flush=True)
            results[label] = row
    return results


def isolation(ctx: Context) -> dict[str, dict[str, tuple[float, float]]]:
    """Scrape latency p50/p99: healthy, one query hanging 30 s, database down."""
    shipped = yaml.safe_load(SHIPPED_QUERIES.read_text())
    hang = {
        "name": "hangs",
        "help": "Sleeps.",
        "sql": "SELECT 1 AS v FROM pg_sleep(30)",
        "interval": "1m",
        "timeout": "45s",
        "metrics": [{"name": "bench_hangs", "help": "One.", "value": "v"}],
    }
    for query in shipped["queries"]:
        query["interval"] = "5s"
        query["timeout"] = "5s"
    healthy_file = queries_file(ctx, "iso-healthy", shipped)
    hang_file = queries_file(ctx, "iso-hang", {**shipped, "queries": [*shipped["queries"], hang]})
    window = 8 if ctx.quick else 35
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for scenario, path in (
        ("healthy", healthy_file),
        ("query hangs 30 s", hang_file),
        ("database down", healthy_file),
    ):
        print(f"isolation: {scenario}", flush=True)
        config = load_config(path)
        with contextlib.ExitStack() as stack:
            servers = [
                start_ours(stack, ctx.dsn(), path),
                start_postgres_exporter(
                    stack, ctx.dsn(), peers.postgres_exporter_queries(config), ctx.tmp
                ),
                start_query_exporter(
                    stack,
                    peers.query_exporter_config(config, ctx.dsn(), interval=5),
                    ctx.tmp,
                    lambda b: b"homepage_sections_live" in b,
                ),
            ]
            if scenario == "database down":
                ctx.pg.stop("fast")
                stack.callback(ctx.pg.start)
                time.sleep(2)
            row = {}
            for server in servers:
                latencies = scrape_latencies(server.url, window)
                row[server.name] = (pct(latencies, 0.5) * 1000, pct(latencies, 0.99) * 1000)
                print(
                    f"  {server.name}: p50 {row[server.name][0]:.1f} ms"
                    f" p99 {row[server.name][1]:.1f} ms",
                    flush=True,
                )
            out[scenario] = row
    return out


def database_load(ctx: Context) -> dict[str, dict[str, Any]]:
    """Database time per hour of the shipped query set, from pg_stat_statements, at 1x and 10x;
    with `--baseline REF`, also that of REF's queries.yaml on the same database in the same run."""
    out: dict[str, dict[str, Any]] = {}
    configs = {"this tree": load_config(SHIPPED_QUERIES)}
    if ctx.baseline:
        old = ctx.tmp / "baseline-queries.yaml"
        old.write_bytes(
            subprocess.run(
                ["git", "show", f"{ctx.baseline}:queries.yaml"],
                cwd=ROOT,
                check=True,
                capture_output=True,
            ).stdout
        )
        configs["baseline"] = load_config(old)
    for scale in ("1", "10"):
        database = f"cms_scale{scale}"
        print(f"database load: {scale}x (building the fixture)", flush=True)
        create_cms_database(ctx.pg, database, exporter_password=EXPORTER_PASSWORD)
        ctx.pg.psql_file(ROOT / "bench" / "fixture.sql", database=database, scale=scale)
        settings = load_settings(
            {
                "database_url": ctx.dsn(database),
                "locales": "en,de,fr",
                "media_storage_quota_bytes": 10**12,
            }
        )
        size = ctx.pg.psql(f"SELECT pg_database_size('{database}')", database=database)
        row: dict[str, Any] = {"database_bytes": float(size)}
        for name, config in configs.items():
            per_run = asyncio.run(cost_per_run(settings, config, ctx.pg, database, runs=3))
            # Server time of one run, times the runs an hour at the shipped intervals.
            per_query = {q.name: per_run[q.name] * 3600 / q.interval for q in config.enabled}
            per_hour_ms = sum(per_query.values())
            top = dict(sorted(per_query.items(), key=lambda kv: -kv[1])[:6])
            print(
                f"  {name}: {per_hour_ms / 1000:.2f} s/h; per query, ms/hour: "
                + ", ".join(f"{n} {v:.0f}" for n, v in top.items()),
                flush=True,
            )
            prefix = "" if name == "this tree" else "baseline_"
            row[f"{prefix}db_seconds_per_hour"] = per_hour_ms / 1000
            row[f"{prefix}core_percent"] = per_hour_ms / 1000 / 3600 * 100
            row[f"{prefix}top_ms_per_hour"] = top
        if ctx.baseline:
            row["baseline"] = ctx.baseline
        out[f"{scale}x"] = row
        ctx.pg.psql(f'DROP DATABASE "{database}" WITH (FORCE)')
    return out


def memory_and_startup(ctx: Context) -> dict[str, float]:
    out: dict[str, float] = {}
    starts = []
    for _ in range(3 if ctx.quick else 7):
        with contextlib.ExitStack() as stack:
            t0 = time.monotonic()
            exporter = Exporter(
                exporter_env(ctx.dsn(), SHIPPED_QUERIES, log_level="warning", locales="en,de,fr")
            )
            stack.callback(exporter.close)
            wait_http(
                exporter.url + "/metrics",
                30,
                reports_queries(len(load_config(SHIPPED_QUERIES).enabled)),
            )
            starts.append(time.monotonic() - t0)
            if "idle_rss_mib" not in out:
                time.sleep(10)
                out["idle_rss_mib"] = rss_mib(exporter.proc.pid)
    out["startup_seconds"] = statistics.median(starts)
    soak = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--cycles", "10000", "--seconds", "120"],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"RSS after warm-up ([\d.]+) MiB, at the end ([\d.]+) MiB", soak.stdout)
    assert match is not None, soak.stdout
    out["soak_start_rss_mib"], out["soak_end_rss_mib"] = map(float, match.groups())
    cycles = re.search(r"soak: (\d+) query runs", soak.stdout)
    out["soak_cycles"] = float(cycles.group(1)) if cycles else 0.0
    print(f"memory and startup: {out}", flush=True)
    return out


# --- report -----------------------------------------------------------------------------------


def version(command: list[str], stream: str = "stdout") -> str:
    """First line a peer prints about its version; 'not installed' (an --only run needs none)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        return "not installed"
    return str(getattr(done, stream)).strip().split("\n")[0]


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    versions = {
        "postgres_exporter": version(["prometheus-postgres-exporter", "--version"], "stderr"),
        "query-exporter": version([str(QE_VENV / "bin" / "query-exporter"), "--version"]),
        "nginx": version(["nginx", "-v"], "stderr"),
        "wrk": version(["wrk", "--version"]),
    }
    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "python": platform.python_version(),
        "kernel": platform.release(),
        **versions,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, one repeat")
    parser.add_argument("--only", choices=["throughput", "isolation", "load", "memory"])
    parser.add_argument(
        "--baseline", help="git ref whose queries.yaml the load part also measures, same run"
    )
    args = parser.parse_args()
    results_file = ROOT / "bench" / "out" / "results.json"
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = (
        json.loads(results_file.read_text()) if args.only and results_file.exists() else {}
    )
    with Cluster(cron_database="cms") as pg, tempfile.TemporaryDirectory() as folder:
        create_cms_database(pg, "cms", exporter_password=EXPORTER_PASSWORD)
        pg.psql_file(sql_file("seed.sql"), database="cms")
        ctx = Context(pg, Path(folder), args.quick, args.baseline)
        plan: dict[str, Callable[[Context], Any]] = {
            "throughput": throughput,
            "isolation": isolation,
            "load": database_load,
            "memory": memory_and_startup,
        }
        for key, run in plan.items():
            if args.only in (None, key):
                results[key] = run(ctx)
                # Saved after each part: a later failure loses nothing (--only resumes).
                results_file.write_text(json.dumps(results, indent=2, default=lambda o: o.__dict__))
    results["machine"] = machine()
    results["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results["command"] = "bench/run" + (" --quick" if args.quick else "")
    results_file.write_text(json.dumps(results, indent=2, default=lambda o: o.__dict__))
    from bench.report import write_report

    write_report(json.loads(results_file.read_text()), OUT, PLOTS)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
