"""RSS and scrape latency of a well-behaved client under each resource attack.

Run on demand (`.venv/bin/python -m bench.hostile`); prints a Markdown table for
docs/benchmarks.md. The baseline is the same exporter, measured in the same run with no
attack. Loopback only; every attack is bounded in connections and seconds.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import tempfile
from pathlib import Path

from bench.report import write_measured
from tests.attacks import (
    USER,
    Attack,
    basic,
    idle_connections,
    junk_flood,
    non_reading_pipeliners,
    slowloris,
    under_attack,
    wrong_password,
)
from tests.attacks import start as start_exporter

PASSWORD = "bench-pass"
AUTH = basic(USER, PASSWORD)


async def nothing(port: int) -> None:
    await asyncio.sleep(5)


def main() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 16384)), hard))
    limit = ("prlimit", "--nofile=1024:1024") if shutil.which("prlimit") else ()
    scenarios: list[tuple[str, Attack, bool, tuple[str, ...]]] = [
        ("baseline (no attack, 5 s)", nothing, False, ()),
        ("20 pipeliners that never read", non_reading_pipeliners, False, ()),
        ("30 unauthenticated clients sending junk", junk_flood(wrong_password(USER)), True, ()),
        ("1,000 slowloris connections, 1,024-file limit", slowloris, False, limit),
        ("2,500 idle connections", idle_connections, False, ()),
    ]
    rows = ["| attack | scrapes | failed | p50 | p99 | max | RSS growth | RSS after |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    baseline = float("nan")
    for name, attack, auth, wrapper in scenarios:
        with tempfile.TemporaryDirectory() as tmp:
            password = PASSWORD if auth else None
            exporter = start_exporter(Path(tmp), password=password, wrapper=wrapper)
            try:
                pid, port = exporter.proc.pid, exporter.port
                outcome = asyncio.run(under_attack(pid, port, attack, AUTH if auth else None))
            finally:
                exporter.close()
        p99 = outcome.pct(0.99)
        if attack is nothing:
            baseline = p99
        rows.append(
            f"| {name} | {len(outcome.latencies)} | {outcome.failures} |"
            f" {outcome.pct(0.5) * 1000:.1f} ms | {p99 * 1000:.1f} ms ({p99 / baseline:.1f}x) |"
            f" {max(outcome.latencies) * 1000:.1f} ms | {outcome.growth_mb:+.1f} MB |"
            f" {outcome.after_mb:+.1f} MB |"
        )
    table = "\n".join(rows) + "\n"
    write_measured("hostile.md", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
