"""Many databases in one process: the exporter's CPU, RSS, /probe p99 and connections at 100,
300 and 500 targets, against a baseline measured in the same run.

    .venv/bin/python bench/fleet.py [--targets 100,300,500] [--seconds 60] [--baseline REF]

One PostgreSQL with the reference CMS database and its demo data; PgBouncer in transaction
mode in front of it (as Supavisor), its `--pool-size` server connections standing for the many
databases' own; a targets file naming that database through the pooler N times under
distinct names; each version's shipped queries. For each N the baseline runs first (the exporter at
commit REF, extracted with `git archive`: every target's first runs within a quarter second,
then ±5 % jitter), then this working tree. Each is measured over its first interval (where a
burst would be) and then over `--seconds` of steady state, while a client asks for a random
target's /probe every 20 ms with Prometheus's own Accept and Accept-Encoding (OpenMetrics,
gzip). Writes its table into docs/benchmarks.md between the fleet markers (bench/run runs it
after bench/bench.py, which rewrites that file). Not part of CI.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import multiprocessing
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import timeit
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench import cpu_seconds, pct, rss_mib  # noqa: E402
from exporter.config import load_config  # noqa: E402
from exporter.demo.cluster import Cluster, free_port  # noqa: E402
from exporter.demo.database import EXPORTER_ROLE, create_cms_database, sql_file  # noqa: E402
from exporter.exposition import Fragment  # noqa: E402
from exporter.selfmetrics import target_families  # noqa: E402
from exporter.snapshot import Instant, Outcome  # noqa: E402
from exporter.store import TargetStore  # noqa: E402
from tests.harness import EXPORTER_PASSWORD, Scrape, http_get  # noqa: E402
from tests.pooler import pgbouncer  # noqa: E402

OUT = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- fleet: written by bench/fleet.py -->", "<!-- /fleet -->"
# The last commit before the scheduler spread runs over each interval (issue 21).
BASELINE = "1fe02f2f1cac6f344f922374718d2e6403491592"
POOL_SIZE = 10  # the pooler's server connections, for all the targets together
FIRST_INTERVAL_SECONDS = 35
# What Prometheus (2.x) sends with each scrape: OpenMetrics preferred, gzip accepted.
SCRAPE_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "Accept-Encoding": "gzip",
}  # the shipped queries' shortest interval is 30 s


@dataclass
class Variant:
    name: str
    root: Path  # `python -m exporter` imports the exporter package found here
    queries: Path  # the queries file it shipped with


@dataclass
class Figures:
    start_cores: float = 0.0  # CPU share over the first interval after start
    cores: float = 0.0  # over the steady-state window
    rss_mib: float = 0.0  # the most seen
    p99_ms: float = 0.0  # /probe on a new connection each time, whole run
    p50_ms: float = 0.0
    kept_p99_ms: float = 0.0  # /probe on one kept-alive connection, as Prometheus scrapes
    kept_p50_ms: float = 0.0
    probes: int = 0
    connections_peak: int = 0  # the exporter's connections to the pooler
    connections_end: int = 0
    runs: float = 0.0
    timeouts: float = 0.0
    cpu_seconds: float = 0.0  # over both windows
    full_collections: int = 0  # the collector's generation-2 passes, whole run
    full_gc_max_ms: float = 0.0  # the longest of them: the event loop stood still that long
    gc_seconds: float = 0.0  # all collections, all generations
    tracked: int = 0  # objects the collector tracks at the end (not counting frozen ones)
    census: dict[str, int] = field(default_factory=dict, repr=False)  # ... by type
    latencies: list[float] = field(default_factory=list, repr=False)
    kept_latencies: list[float] = field(default_factory=list, repr=False)


def pooler_connections(pid: int, port: int) -> int:
    """The process's established TCP connections to `port` on loopback."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "01" and int(f[2].rsplit(":", 1)[1], 16) == port and f[9] in inodes:
                    count += 1
    return count


def probe(port: int, n: int, stop: Event, results: Connection) -> None:
    """Until `stop`, every 20 ms a random target's /probe, alternately on a new connection
    (the worst case: connect and accept in every request) and on one kept-alive connection
    (what Prometheus does: since 2.0 its scrape client reuses connections); sends the two
    lists of latencies, in seconds, to `results`."""
    url = f"http://127.0.0.1:{port}"
    rng = random.Random(n)  # which target to ask
    fresh_latencies: list[float] = []
    kept_latencies: list[float] = []
    kept: http.client.HTTPConnection | None = None
    fresh = True
    while not stop.is_set():
        path = f"/probe?target=t{rng.randrange(n):04d}"
        try:
            if fresh:
                t0 = time.perf_counter()
                http_get(url + path, SCRAPE_HEADERS, timeout=30)
                fresh_latencies.append(time.perf_counter() - t0)
            else:
                if kept is None:
                    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    kept.connect()  # not counted: the request is
                t0 = time.perf_counter()
                kept.request("GET", path, headers=SCRAPE_HEADERS)
                kept.getresponse().read()
                kept_latencies.append(time.perf_counter() - t0)
        except (OSError, http.client.HTTPException):
            if not fresh and kept is not None:
                kept.close()
                kept = None  # a new one next time
        fresh = not fresh
        time.sleep(0.02)
    if kept is not None:
        kept.close()
    results.send((fresh_latencies, kept_latencies))


def targets_file(folder: Path, n: int, pooler: int) -> Path:
    password = folder / "password"
    password.write_text(EXPORTER_PASSWORD + "\n")
    url = f"postgresql://{EXPORTER_ROLE}@127.0.0.1:{pooler}/cms"
    path = folder / f"targets-{n}.yaml"
    path.write_text(
        "targets:\n"
        + "".join(
            f"  - name: t{i:04d}\n    database_url: {url}\n    database_password_file: {password}\n"
            for i in range(n)
        )
    )
    return path


def baseline_tree(ref: str, folder: Path) -> Path:
    """The exporter package (and its queries file) as it was at `ref`."""
    tree = folder / "baseline"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "exporter", "queries.yaml"],
        capture_output=True,
        check=True,
    ).stdout
    archive_path = folder / "baseline.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(tree, filter="tar")
    return tree


def measure(
    variant: Variant, n: int, pooler: int, folder: Path, seconds: float, *, traced: bool = False
) -> Figures:
    port = free_port()
    log = folder / f"{variant.name.split()[0]}-{n}.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HOMEPAGE_EXPORTER_") and k != "DATABASE_URL"
    }
    env.update(
        HOMEPAGE_EXPORTER_LISTEN_ADDRESS=f"127.0.0.1:{port}",
        HOMEPAGE_EXPORTER_TARGETS_FILE=str(targets_file(folder, n, pooler)),
        HOMEPAGE_EXPORTER_QUERIES_FILE=str(variant.queries),
        HOMEPAGE_EXPORTER_DATABASE_URL="postgresql://unused@127.0.0.1:1/unused",
    )
    if traced:
        env["PYTHONTRACEMALLOC"] = "1"  # where the memory is, by line (slows the process)
    figures = Figures()
    report = folder / f"{variant.name.split()[0]}-{n}.gc.json"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            # The exporter, its collections timed (bench/gcwatch.py).
            [sys.executable, str(ROOT / "bench" / "gcwatch.py"), str(report), "run"],
            cwd=folder,  # no .env there; the package comes from PYTHONPATH
            env={**env, "PYTHONPATH": str(variant.root)},
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}"
    processes = multiprocessing.get_context("fork")
    stop = processes.Event()

    try:
        started = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{variant.name} exited:\n{log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if http_get(url + "/healthz", timeout=1)[0] == 200:
                    break
            if time.monotonic() - started > 60:
                raise RuntimeError(f"{variant.name} did not come up")
            time.sleep(0.05)
        # The client runs in a process of its own, so that nothing this loop does (reading
        # /proc for hundreds of sockets every second) can hold it up. Measured, it had not:
        # docs/benchmarks.md; but the figure no longer depends on that.
        received, sent = processes.Pipe(duplex=False)
        prober = processes.Process(target=probe, args=(port, n, stop, sent), daemon=True)
        prober.start()
        cpu0 = cpu_seconds([proc.pid])
        t0 = time.monotonic()
        steady_from: tuple[float, float] | None = None
        while time.monotonic() - t0 < FIRST_INTERVAL_SECONDS + seconds:
            time.sleep(1)
            now = time.monotonic()
            if steady_from is None and now - t0 >= FIRST_INTERVAL_SECONDS:
                cpu = cpu_seconds([proc.pid])
                figures.start_cores = (cpu - cpu0) / (now - t0)
                steady_from = (cpu, now)
            figures.rss_mib = max(figures.rss_mib, rss_mib(proc.pid))
            figures.connections_peak = max(
                figures.connections_peak, pooler_connections(proc.pid, pooler)
            )
        assert steady_from is not None
        figures.cores = (cpu_seconds([proc.pid]) - steady_from[0]) / (
            time.monotonic() - steady_from[1]
        )
        figures.cpu_seconds = cpu_seconds([proc.pid]) - cpu0
        figures.connections_end = pooler_connections(proc.pid, pooler)
        stop.set()
        if not received.poll(60):
            raise RuntimeError("the /probe client sent no latencies")
        figures.latencies, figures.kept_latencies = received.recv()
        prober.join()
        # Runs and timeouts: from at most 100 targets' pages (evenly spread), scaled to all:
        # a saturated exporter answering n pages one by one would take minutes.
        sample = sorted({i * n // min(n, 100) for i in range(min(n, 100))})
        read = 0
        for i in sample:
            try:
                body = http_get(f"{url}/probe?target=t{i:04d}", timeout=10)[2]
            except OSError:
                continue  # a saturated exporter (the baseline at 500): counted from the rest
            read += 1
            page = Scrape(body.decode())
            figures.runs += sum(page.all("homepage_exporter_query_runs_total").values())
            figures.timeouts += sum(
                v
                for labels, v in page.all("homepage_exporter_query_errors_total").items()
                if ("reason", "timeout") in labels
            )
        figures.runs *= n / max(read, 1)
        figures.timeouts *= n / max(read, 1)
        gc_figures(proc, report, figures)
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    figures.probes = len(figures.latencies) + len(figures.kept_latencies)
    figures.p99_ms = pct(figures.latencies, 0.99) * 1000
    figures.p50_ms = statistics.median(figures.latencies) * 1000
    figures.kept_p99_ms = pct(figures.kept_latencies, 0.99) * 1000
    figures.kept_p50_ms = statistics.median(figures.kept_latencies) * 1000
    return figures


def gc_figures(proc: subprocess.Popen[bytes], report: Path, figures: Figures) -> None:
    """The collections gcwatch timed, and what the collector tracks at the end, by type."""
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while not report.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            print("  (no GC report)", flush=True)
            return
        time.sleep(0.2)
    data = json.loads(report.read_text())
    full = [seconds for generation, seconds, _ in data["collections"] if generation == 2]
    figures.full_collections = len(full)
    figures.full_gc_max_ms = max(full, default=0.0) * 1000
    figures.gc_seconds = sum(seconds for _, seconds, _ in data["collections"])
    figures.tracked = data["tracked"]
    figures.census = data["by_type"]
    for generation in range(3):
        runs = [(s, c) for g, s, c in data["collections"] if g == generation]
        longest = max((s for s, _ in runs), default=0) * 1000
        print(
            f"  generation {generation}: {len(runs)} collections,"
            f" {sum(s for s, _ in runs):.2f} s, longest {longest:.0f} ms,"
            f" {sum(c for _, c in runs):,} objects collected",
            flush=True,
        )
    print("  full collections, ms: " + ", ".join(f"{s * 1000:.0f}" for s in full), flush=True)
    print(f"  frozen {data['frozen']:,}, thresholds {data['threshold']}", flush=True)
    held = list(data["held_by_type"].items())[:12]
    print("  held (KiB): " + ", ".join(f"{k} {v / 1024:,.0f}" for k, v in held), flush=True)
    if "allocated_total" in data:
        print(f"  allocated, traced: {data['allocated_total'] / 2**20:.1f} MiB", flush=True)
        for line, size, count in data["allocated_by_line"][:25]:
            print(f"    {size / 2**20:7.2f} MiB {count:9,} {line}", flush=True)


def own_metrics_per_run() -> tuple[float, float]:
    """Milliseconds a run spends re-rendering its target's own metrics (the shipped queries):
    encoding all of them again, as before, and splicing in the one that changed, as now."""
    config = load_config(ROOT / "queries.yaml")
    store = TargetStore(config)
    query = config.enabled[0]

    def one_run() -> None:
        previous = store.snapshot(query.name)
        assert previous is not None
        store.apply(Outcome(query, 0.01, previous.values), Instant(0.0, 0.0))  # renders

    def whole() -> None:
        Fragment.encode(target_families(store.snapshots, database_up=True))

    repeats = 200
    return (
        timeit.timeit(whole, number=repeats) / repeats * 1000,
        timeit.timeit(one_run, number=repeats) / repeats * 1000,
    )


def table(results: dict[int, dict[str, Figures]], variants: list[Variant]) -> list[str]:
    base = variants[0].name
    lines = [
        "| targets | exporter | CPU, first 35 s | CPU, steady | RSS |"
        " /probe p50, p99 (kept-alive connection) | /probe p50, p99 (new connection) |"
        " full GCs (count, longest) | GC-tracked objects |"
        " connections (peak, end) | runs | timed out | CPU per completed run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, row in results.items():
        for variant in variants:
            f = row[variant.name]
            ratio = ""
            if variant.name != base and base.startswith("baseline"):
                ratio = f" ({f.cores / max(row[base].cores, 1e-9):.2f}x)"
            lines.append(
                f"| {n} | {variant.name} | {f.start_cores:.2f} core | {f.cores:.2f} core{ratio} |"
                f" {f.rss_mib:.0f} MiB | {f.kept_p50_ms:.1f}, {f.kept_p99_ms:.1f} ms |"
                f" {f.p50_ms:.1f}, {f.p99_ms:.1f} ms |"
                f" {f.full_collections}, {f.full_gc_max_ms:.0f} ms | {f.tracked:,} |"
                f" {f.connections_peak}, {f.connections_end} | {f.runs:,.0f} | {f.timeouts:,.0f} |"
                f" {f.cpu_seconds * 1000 / max(f.runs - f.timeouts, 1):.1f} ms |"
            )
    return lines


def baseline_text(ref: str) -> str:
    if ref == BASELINE:
        return f"the exporter at the commit before runs were spread over each interval ({ref[:7]})"
    return f"the exporter at commit {ref[:7]}"


def write(
    results: dict[int, dict[str, Figures]],
    variants: list[Variant],
    command: str,
    pool_size: int,
    render: tuple[float, float],
    baseline: str,
) -> None:
    cpu = next(
        line.split(":", 1)[1].strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    )
    load = os.getloadavg()
    section = [
        BEGIN,
        "## 6. Many databases in one process",
        "",
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC with `{command}`"
        f" on {os.cpu_count()} x {cpu}"
        f" (load average {load[0]:.1f} at the end: the machine is shared). One PostgreSQL"
        " with the demo CMS database, PgBouncer in transaction mode in front of it"
        f" ({pool_size} server connections), each version's shipped queries (24), and a"
        " targets file naming"
        " that database N times through the pooler. CPU: the exporter process's share of"
        " one core. Connections: its own to the pooler. /probe: a random target's page every"
        " 20 ms, from start to end, alternately on one kept-alive connection (as Prometheus"
        " scrapes: its scrape client has reused connections since 2.0) and on a new connection"
        " each time (connect and accept counted in the request). Full GCs: the collector's"
        " generation-2 passes over the whole run and the longest (the event loop stands still"
        " meanwhile), timed in the"
        " process by bench/gcwatch.py; GC-tracked objects: what such a pass walks, counted at"
        f" the end. Baseline: {baseline_text(baseline)}, measured in the same run; the ratio is"
        " steady-state CPU against it.",
        "",
        *table(results, variants),
        "",
        "What a run costs beyond its query, profiled with py-spy at 300 targets (`py-spy record"
        " -p PID -d 30` on the exporter this command starts): 77 % of the process's time went"
        " to re-encoding every query's own metrics (`homepage_exporter_query_*`) after each"
        " run, 11 % to re-rendering the status page of all targets, 7 % to the run itself."
        " Now a run re-encodes only its own query's and splices it in (same bytes), a page"
        " joins and compresses only the bodies that were asked for, and the status page is"
        " rendered only when someone opens it. Re-rendering a target's own metrics after one"
        " run of the shipped"
        f" queries, measured by this command: {render[0]:.1f} ms encoding them all (before),"
        f" {render[1]:.2f} ms now (its snapshot replaced: splice and page).",
        "",
        END,
    ]
    text = OUT.read_text() if OUT.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    block = "\n".join(section)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip("\n") + "\n\n" + block + "\n"
    )
    OUT.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="100,300,500", help="comma-separated sizes")
    parser.add_argument("--seconds", type=float, default=60, help="steady-state window")
    parser.add_argument("--baseline", default=BASELINE, help="git ref; 'none' to skip")
    parser.add_argument("--pool-size", type=int, default=POOL_SIZE, help="server connections")
    parser.add_argument("--quick", action="store_true", help="100 and 300 targets, 20 s")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also measure the exporter in another tree (e.g. a copy with a proposed change)",
    )
    parser.add_argument(
        "--tracemalloc", action="store_true", help="print where the memory is (slower runs)"
    )
    parser.add_argument("--only", help=argparse.SUPPRESS)  # bench/run passes bench.py's on
    args = parser.parse_args()
    if args.only not in (None, "fleet"):
        return 0
    # Stopped early (Ctrl-C, SIGTERM): the pooler, the cluster and the exporter still go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sizes = [100, 300] if args.quick else [int(s) for s in args.targets.split(",")]
    seconds = 20 if args.quick else args.seconds
    command = "bench/fleet.py " + " ".join(sys.argv[1:])
    render = own_metrics_per_run()
    with Cluster(cron_database="cms") as pg, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        create_cms_database(pg, "cms", exporter_password=EXPORTER_PASSWORD)
        pg.psql_file(sql_file("seed.sql"), database="cms")
        # The pooler's server connections stand for the many databases' own: more than the
        # role's limit of five for one database.
        pg.psql(f"ALTER ROLE {EXPORTER_ROLE} CONNECTION LIMIT {args.pool_size + 2}")
        variants = [Variant("this tree", ROOT, ROOT / "queries.yaml")]
        for spec in args.tree:
            name, _, path = spec.partition("=")
            other = Path(path).resolve()
            variants.append(Variant(name, other, other / "queries.yaml"))
        if args.baseline != "none":
            tree = baseline_tree(args.baseline, folder)
            variants.insert(
                0, Variant(f"baseline {args.baseline[:7]}", tree, tree / "queries.yaml")
            )
        results: dict[int, dict[str, Figures]] = {}
        with pgbouncer(
            pg,
            "cms",
            {EXPORTER_ROLE: EXPORTER_PASSWORD},
            max_client_conn=3 * max(sizes) + 100,
            pool_size=args.pool_size,
        ) as pooler:
            for n in sizes:
                results[n] = {}
                for variant in variants:
                    print(f"fleet: {n} targets, {variant.name}", flush=True)
                    figures = measure(variant, n, pooler, folder, seconds, traced=args.tracemalloc)
                    results[n][variant.name] = figures
                    print(f"  {figures}", flush=True)
                    top = list(figures.census.items())[:15]
                    print("  tracked: " + ", ".join(f"{k} {v:,}" for k, v in top), flush=True)
    print("\n".join(table(results, variants)))
    write(results, variants, command.strip(), args.pool_size, render, args.baseline)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
