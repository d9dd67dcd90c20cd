"""docs/benchmarks.md and its plots from bench/out/results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

OURS, NGINX, PE, QE = (
    "homepage-cms-exporter",
    "nginx (same bytes)",
    "postgres_exporter",
    "query-exporter",
)


def _ok(passed: bool) -> str:
    return "met" if passed else "**missed**"


def _throughput(results: dict[str, Any]) -> list[str]:
    lines = [
        "## 1. `/metrics` throughput, latency and CPU per scrape",
        "",
        "wrk, 2 threads, 8 connections, loopback, uncompressed; medians of the repeats.",
        "",
        "| series | bytes | server | scrapes/s | p50 ms | p99 ms | CPU ms/scrape |"
        " throughput vs nginx | CPU vs ours |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in results.items():
        ours = row[OURS]
        for name in (OURS, NGINX, PE, QE):
            load = row[name]
            lines.append(
                f"| {label} ({row['series']}) | {row['bytes']:,} | {name} | {load['rps']:,.0f} |"
                f" {load['p50_ms']:.2f} | {load['p99_ms']:.2f} | {load['cpu_ms_per_scrape']:.3f} |"
                f" {load['rps'] / row[NGINX]['rps']:.2f}x |"
                f" {load['cpu_ms_per_scrape'] / max(ours['cpu_ms_per_scrape'], 1e-6):.1f}x |"
            )
    return lines


def _isolation(results: dict[str, Any]) -> list[str]:
    lines = [
        "## 2. Scrape latency when the database misbehaves",
        "",
        "Sequential scrapes (as Prometheus makes them) over the window; the shipped queries on a"
        " 5 s interval, plus `SELECT pg_sleep(30)` in the hanging case.",
        "",
        "| scenario | server | p50 ms | p99 ms | p99 vs its own healthy |",
        "|---|---|---|---|---|",
    ]
    healthy = results["healthy"]
    for scenario, row in results.items():
        for name, (p50, p99) in row.items():
            ratio = p99 / max(healthy[name][1], 1e-6)
            lines.append(f"| {scenario} | {name} | {p50:.1f} | {p99:.1f} | {ratio:.1f}x |")
    return lines


def _plots(results: dict[str, Any], folder: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["(matplotlib is not installed: no plots)"]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    if "throughput" in results:
        fig, ax = plt.subplots(figsize=(8, 4))
        labels = list(results["throughput"])
        width = 0.2
        for i, name in enumerate((OURS, NGINX, PE, QE)):
            values = [results["throughput"][label][name]["rps"] for label in labels]
            ax.bar([x + i * width for x in range(len(labels))], values, width, label=name)
        ax.set_xticks([x + 1.5 * width for x in range(len(labels))], labels)
        ax.set_yscale("log")
        ax.set_ylabel("scrapes per second (log)")
        ax.set_title("/metrics throughput by series count")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "throughput.png", dpi=110)
        plt.close(fig)
        out.append("![throughput](benchmarks/throughput.png)")
    if "isolation" in results:
        fig, ax = plt.subplots(figsize=(8, 4))
        scenarios = list(results["isolation"])
        names = list(results["isolation"]["healthy"])
        width = 0.25
        for i, name in enumerate(names):
            values = [results["isolation"][s][name][1] for s in scenarios]
            ax.bar([x + i * width for x in range(len(scenarios))], values, width, label=name)
        ax.set_xticks([x + width for x in range(len(scenarios))], scenarios)
        ax.set_yscale("log")
        ax.set_ylabel("scrape p99, ms (log)")
        ax.set_title("Scrape latency when the database misbehaves")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "isolation.png", dpi=110)
        plt.close(fig)
        out.append("![isolation](benchmarks/isolation.png)")
    return out


PROFILED = Path(__file__).with_name("profiled.md")
HTTP_CHOICE = Path(__file__).with_name("http.md")
# Written by `python -m bench.http_servers` and `python -m bench.hostile` when run.
MEASURED = Path(__file__).parent / "out"


def write_report(results: dict[str, Any], path: Path, plots: Path) -> None:
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {results['date']} with `{results['command']}` on {m['cpu']}, Python"
        f" {m['python']}, kernel {m['kernel']}. Peers: {m['postgres_exporter']};"
        f" {m['query-exporter']} (its newest release needs Python 3.12; this is the newest"
        f" that installs on 3.11); {m['nginx']}; {m['wrk']}.",
        "Everything on loopback, on the same PostgreSQL 15 with the reference schema and demo"
        " data; peers run the same SQL (bench/peers.py): parameters become literals and the"
        " two `anon` queries run as the exporter role, since neither peer can bind or switch"
        " role.",
        "",
        *_plots(results, plots),
        "",
    ]
    goals = []
    if "throughput" in results:
        lines += [*_throughput(results["throughput"]), ""]
        for label, row in results["throughput"].items():
            ratio = row[OURS]["rps"] / row[NGINX]["rps"]
            goals.append(
                f"| throughput at {label} >= 0.3x nginx | {ratio:.2f}x | {_ok(ratio >= 0.3)} |"
            )
    if "isolation" in results:
        lines += [*_isolation(results["isolation"]), ""]
        healthy = results["isolation"]["healthy"][OURS][1]
        for scenario in ("query hangs 30 s", "database down"):
            p99 = results["isolation"][scenario][OURS][1]
            goals.append(
                f"| p99 while {scenario} within 2x healthy | {p99 / healthy:.1f}x |"
                f" {_ok(p99 <= 2 * healthy)} |"
            )
    if "load" in results:
        lines += [
            "## 3. Load on the database",
            "",
            "Server-side execution time of the shipped query set: each query run alone, its"
            " runs charged everything the exporter's roles executed between two resets of"
            " pg_stat_statements (a query run once per locale makes a call per locale), times"
            " its runs per hour at the shipped intervals; one pool of at most `POOL_SIZE` (2)"
            " connections.",
            "",
            "| data | database size | DB seconds per hour | share of one core | baseline"
            " (same run) | vs baseline | most costly, ms per hour |",
            "|---|---|---|---|---|---|---|",
        ]
        for scale, row in results["load"].items():
            base = row.get("baseline_db_seconds_per_hour")
            versus = (
                (f"{base:.2f} s/h ({row['baseline']})", f"{row['db_seconds_per_hour'] / base:.2f}x")
                if base
                else ("", "")
            )
            top = ", ".join(f"{n} {v:,.0f}" for n, v in row.get("top_ms_per_hour", {}).items())
            lines.append(
                f"| {scale} | {row['database_bytes'] / 2**20:,.0f} MiB |"
                f" {row['db_seconds_per_hour']:.2f} | {row['core_percent']:.4f} % |"
                f" {versus[0]} | {versus[1]} | {top} |"
            )
            if scale == "10x":
                goals.append(
                    f"| DB time at 10x under 0.1 % of a core |"
                    f" {row['core_percent']:.4f} % | {_ok(row['core_percent'] < 0.1)} |"
                )
        lines.append("")
    if "memory" in results:
        mem = results["memory"]
        lines += [
            "## 4. Memory and 5. start-up",
            "",
            f"- Resident memory idle (shipped queries, demo data, 10 s after start):"
            f" {mem['idle_rss_mib']:.1f} MiB.",
            f"- Soak (bench/soak.py, {mem['soak_cycles']:.0f} query runs with failures"
            f" mixed in): {mem['soak_start_rss_mib']:.1f} MiB after warm-up,"
            f" {mem['soak_end_rss_mib']:.1f} MiB at the end.",
            f"- Start to a complete `/metrics` (every query reported), median:"
            f" {mem['startup_seconds'] * 1000:.0f} ms.",
            "",
        ]
        goals.append(
            f"| idle RSS at most 50 MB | {mem['idle_rss_mib']:.1f} MiB |"
            f" {_ok(mem['idle_rss_mib'] * 1.048576 <= 50)} |"
        )
        growth = mem["soak_end_rss_mib"] - mem["soak_start_rss_mib"]
        goals.append(f"| RSS flat over the soak | {growth:+.1f} MiB | {_ok(growth < 2)} |")
        goals.append(
            f"| start-up under 1 s | {mem['startup_seconds'] * 1000:.0f} ms |"
            f" {_ok(mem['startup_seconds'] < 1)} |"
        )
    lines += [
        "## Goals",
        "",
        "| goal | measured | |",
        "|---|---|---|",
        *goals,
        "",
        HTTP_CHOICE.read_text().format(
            servers=_measured("http_servers.md"), hostile=_measured("hostile.md")
        ),
        PROFILED.read_text(),
    ]
    path.write_text("\n".join(lines) + "\n")


def write_measured(name: str, table: str) -> None:
    """Keep a figure table for the report (bench/out/NAME), and print it."""
    MEASURED.mkdir(exist_ok=True)
    (MEASURED / name).write_text(table)
    print(table, end="")


def _measured(name: str) -> str:
    path = MEASURED / name
    return (
        path.read_text().strip() if path.exists() else f"(not measured: run bench/{name[:-3]}.py)"
    )
