"""The guard over TLS against the same guard over plain HTTP, in one run.

Run on demand (`.venv/bin/python -m bench.tls_guard`); prints a Markdown table for
docs/benchmarks.md. The baseline is the plain-HTTP exporter under the same flood of silent
connections, measured in the same run; each TLS row gives its RSS growth and scrape p99 as a
ratio of it. Loopback only; every attack is bounded in connections and seconds.
"""

from __future__ import annotations

import asyncio
import resource
import tempfile
from functools import partial
from pathlib import Path

from bench.report import write_measured
from tests.attacks import (
    Attack,
    Outcome,
    idle_connections,
    slowloris,
    stalled_handshakes,
    under_attack,
)
from tests.attacks import start as start_exporter


def measure(attack: Attack, *, tls: bool) -> Outcome:
    with tempfile.TemporaryDirectory() as tmp:
        exporter = start_exporter(Path(tmp), tls=tls)
        try:
            pid, port, context = exporter.proc.pid, exporter.port, exporter.context
            wrapped = partial(attack, tls=context) if attack is slowloris else attack
            return asyncio.run(under_attack(pid, port, wrapped, tls=context))
        finally:
            exporter.close()


def main() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 16384)), hard))
    silent = partial(idle_connections, count=8000)
    scenarios: list[tuple[str, Attack, bool]] = [
        ("plain HTTP: 8,000 silent connections (baseline)", silent, False),
        ("TLS: 8,000 connections that never start the handshake", silent, True),
        ("TLS: 2,000 handshakes that stall after 6 bytes", stalled_handshakes, True),
        ("TLS: 1,000 slowloris connections after the handshake", slowloris, True),
    ]
    rows = [
        "| attack | scrapes | failed | p99 | RSS growth | RSS after | open files (peak) |",
        "|---|---|---|---|---|---|---|",
    ]
    baseline: Outcome | None = None
    for name, attack, tls in scenarios:
        outcome = measure(attack, tls=tls)
        baseline = baseline or outcome
        p99, base_p99 = outcome.pct(0.99), baseline.pct(0.99)
        growth_ratio = outcome.growth_mb / max(baseline.growth_mb, 1.0)
        rows.append(
            f"| {name} | {len(outcome.latencies)} | {outcome.failures} |"
            f" {p99 * 1000:.1f} ms ({p99 / base_p99:.1f}x) |"
            f" {outcome.growth_mb:+.1f} MB ({growth_ratio:.1f}x) | {outcome.after_mb:+.1f} MB |"
            f" {outcome.peak_files:,} |"
        )
    write_measured("tls_guard.md", "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
