"""Faults a production exporter meets, with the real database and the real process."""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.demo.cluster import Cluster, free_port
from exporter.demo.database import EXPORTER_ROLE
from tests.conftest import exporter_dsn
from tests.harness import (
    EXPORTER_PASSWORD,
    TICK,
    Exporter,
    exporter_env,
    http_get,
    write_queries,
)

pytestmark = pytest.mark.slow
StartExporter = Callable[..., Exporter]


def scrape_seconds(exporter: Exporter, n: int = 20) -> float:
    """The slowest of n scrapes."""
    worst = 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        exporter.scrape()
        worst = max(worst, time.perf_counter() - t0)
    return worst


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_database_killed_mid_run_then_back(
    start_exporter: StartExporter, queries_file: Path, mode: str
) -> None:
    write_queries(queries_file, TICK)
    with Cluster(preload=()) as cluster:
        cluster.psql(f"CREATE ROLE {EXPORTER_ROLE} LOGIN PASSWORD '{EXPORTER_PASSWORD}'")
        exporter = start_exporter(
            exporter_env(cluster.url(EXPORTER_ROLE, EXPORTER_PASSWORD), queries_file)
        )
        exporter.wait_metric("homepage_exporter_query_up", lambda v: v == 1, 5, query="tick")
        healthy = scrape_seconds(exporter)
        cluster.stop(mode)  # "immediate" is a crash: no goodbye to clients
        t0 = time.monotonic()
        exporter.wait_metric("homepage_exporter_query_up", lambda v: v == 0, 5, query="tick")
        exporter.wait_metric("homepage_exporter_database_up", lambda v: v == 0, 5)
        # Within about one interval (1 s) plus a ping, with generous headroom for a busy CI.
        assert time.monotonic() - t0 < 10
        assert scrape_seconds(exporter) < max(1.0, 5 * healthy)
        cluster.start()
        exporter.wait_metric("homepage_exporter_query_up", lambda v: v == 1, 10, query="tick")
        assert exporter.proc.poll() is None


def test_a_query_stuck_on_a_lock_is_cancelled_and_nothing_else_waits(
    pg: Cluster, start_exporter: StartExporter, queries_file: Path, db: str
) -> None:
    write_queries(
        queries_file,
        TICK
        + """\
  - name: locked
    help: Reads a table another session holds an exclusive lock on.
    sql: SELECT count(*) AS n FROM media_assets
    interval: 2s
    timeout: 1s
    metrics:
      - {name: test_locked_rows, help: Rows., value: n}
""",
    )
    exporter = start_exporter(exporter_env(exporter_dsn(pg, db), queries_file, pool_size="2"))
    exporter.wait_metric("test_locked_rows", lambda v: v == 0, 5)
    # Both queries start together; on a loaded machine the tick may land a moment later.
    exporter.wait_metric("test_tick_seconds", lambda v: v is not None, 5)
    healthy = scrape_seconds(exporter)

    async def hold_lock() -> None:
        holder = await asyncpg.connect(pg.url(database=db))
        try:
            await holder.execute("BEGIN; LOCK TABLE media_assets IN ACCESS EXCLUSIVE MODE")
            before = exporter.scrape().get("test_tick_seconds")
            t0 = time.monotonic()
            # Two consecutive runs stuck on the lock, each cancelled at its 1 s timeout.
            after = await asyncio.to_thread(
                exporter.wait_metric,
                "homepage_exporter_query_errors_total",
                lambda v: (v or 0) >= 2,
                10,
                query="locked",
                reason="timeout",
            )
            waited = time.monotonic() - t0
            assert after.get("homepage_exporter_query_up", query="locked") == 0
            # The tick query kept its 1 s schedule meanwhile.
            tick = after.get("test_tick_seconds")
            assert before is not None
            assert tick is not None
            assert tick - before >= waited - 2.5  # it kept running; generous for a loaded CI
            # Never more connections than the pool, and no query left waiting on the server.
            used = await holder.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", EXPORTER_ROLE
            )
            assert used <= 2
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state = 'active'"
                " AND query LIKE '%media_assets%' AND now() - query_start > interval '1.5 s'",
                EXPORTER_ROLE,
            )
            assert waiting == 0
            assert scrape_seconds(exporter) < max(0.25, 5 * healthy)
        finally:
            await holder.execute("ROLLBACK")
            await holder.close()

    asyncio.run(hold_lock())
    exporter.wait_metric("homepage_exporter_query_up", lambda v: v == 1, 5, query="locked")


@pytest.mark.parametrize(
    ("url", "cause"),
    [
        (
            "postgresql://{user}:{pw}@no-such-host.invalid:5432/cms",
            "(connecting to no-such-host.invalid:5432/cms)",
        ),
        (
            "postgresql://{user}:{pw}@127.0.0.1:{port}/no_such_database",
            'database "no_such_database" does not exist',
        ),
        (
            "postgresql://{user}:{pw}@127.0.0.1:{closed}/cms",
            "connection refused: nothing listens there (connecting to 127.0.0.1:{closed}/cms)",
        ),
    ],
    ids=["unknown-host", "missing-database", "refused"],
)
def test_connection_mistakes_are_one_clear_log_line(
    pg: Cluster, start_exporter: StartExporter, queries_file: Path, url: str, cause: str
) -> None:
    write_queries(queries_file, TICK)
    closed = free_port()
    dsn = url.format(user=EXPORTER_ROLE, pw=EXPORTER_PASSWORD, port=pg.port, closed=closed)
    cause = cause.format(closed=closed)
    exporter = start_exporter(exporter_env(dsn, queries_file))
    exporter.wait_metric("homepage_exporter_database_up", lambda v: v == 0, 10)
    exporter.wait_metric(  # three failures later, still one line: counted, not slept
        "homepage_exporter_query_errors_total",
        lambda v: (v or 0) >= 3,
        15,
        query="tick",
        reason="connection",
    )
    logs = exporter.logs
    lines = [line for line in logs.splitlines() if "event=database_unreachable" in line]
    assert len(lines) == 1, logs
    assert cause in lines[0].replace('\\"', '"'), lines[0]
    assert EXPORTER_PASSWORD not in logs
    assert "Traceback" not in logs
    assert exporter.proc.poll() is None


def test_permission_denied_on_a_table_names_it_and_the_rest_runs(
    pg: Cluster, start_exporter: StartExporter, queries_file: Path, db: str
) -> None:
    pg.psql(
        "CREATE TABLE private_notes (id int); REVOKE ALL ON private_notes FROM PUBLIC", database=db
    )
    write_queries(
        queries_file,
        TICK
        + """\
  - name: private
    help: Reads a table the exporter role was never granted.
    sql: SELECT count(*) AS n FROM private_notes
    interval: 1s
    timeout: 1s
    metrics:
      - {name: test_private_rows, help: Rows., value: n}
""",
    )
    exporter = start_exporter(exporter_env(exporter_dsn(pg, db), queries_file))
    scrape = exporter.wait_metric(
        "homepage_exporter_query_errors_total",
        lambda v: (v or 0) >= 1,
        5,
        query="private",
        reason="permission",
    )
    assert scrape.get("homepage_exporter_query_up", query="private") == 0
    # The rest runs: the tick query succeeds beside it (both start together; wait for it).
    exporter.wait_metric("homepage_exporter_query_up", lambda v: v == 1, 5, query="tick")
    # Three failed runs in a row: said once, not once per run.
    exporter.wait_metric(
        "homepage_exporter_query_errors_total",
        lambda v: (v or 0) >= 3,
        15,
        query="private",
        reason="permission",
    )
    failed = [line for line in exporter.logs.splitlines() if "event=query_failed" in line]
    assert len(failed) == 1
    assert "query=private" in failed[0]
    assert "permission denied for table private_notes" in failed[0]


def test_a_query_that_writes_is_refused_and_reported(
    pg: Cluster, start_exporter: StartExporter, queries_file: Path, db: str
) -> None:
    write_queries(
        queries_file,
        """\
  - name: sneaky
    help: Tries to write.
    sql: SELECT nextval('public.fault_probe') AS n
    interval: 1s
    timeout: 1s
    metrics:
      - {name: test_sneaky, help: Deleted rows., value: n}
""",
    )
    # A write the role may make (and one that outlives a ROLLBACK): only the read-only
    # transaction stands in its way.
    pg.psql(
        "CREATE SEQUENCE public.fault_probe;"
        " GRANT USAGE, UPDATE ON SEQUENCE public.fault_probe TO homepage_exporter",
        database=db,
    )
    exporter = start_exporter(exporter_env(exporter_dsn(pg, db), queries_file))
    exporter.wait_metric(
        "homepage_exporter_query_errors_total",
        lambda v: (v or 0) >= 1,
        5,
        query="sneaky",
        reason="sql",
    )
    assert "read-only transaction" in exporter.logs
    assert pg.psql("SELECT is_called FROM public.fault_probe", database=db).strip() == "f"


def test_the_exporter_role_cannot_write_even_outside_the_exporter(pg: Cluster, db: str) -> None:
    async def attempts() -> list[str]:
        conn = await asyncpg.connect(exporter_dsn(pg, db))
        refused = []
        try:
            await conn.execute("SET default_transaction_read_only = off")
            for sql in (
                "INSERT INTO media_assets (file_path, file_size) VALUES ('x', 1)",
                "UPDATE homepage_sections SET is_active = false",
                "DELETE FROM section_versions",
                "CREATE TABLE public.evil (id int)",
                "TRUNCATE section_schedules",
                "ALTER TABLE homepage_sections DISABLE ROW LEVEL SECURITY",
            ):
                try:
                    await conn.execute(sql)
                except asyncpg.PostgresError as exc:
                    refused.append(type(exc).__name__)
        finally:
            await conn.close()
        return refused

    refused = asyncio.run(attempts())
    assert len(refused) == 6, refused
    assert set(refused) <= {"InsufficientPrivilegeError"}


HOSTILE_SQL = r"""
SELECT * FROM (VALUES
  ('nan', 'NaN'::float8), ('inf', 'Infinity'::float8), ('neg_inf', '-Infinity'::float8),
  ('decimal', 12.5::numeric), ('huge', (2::numeric ^ 70)), ('bool', NULL::float8),
  ('quote "q"', 1), (E'back\\slash', 2), (E'new\nline', 3), ('zürich ✓', 4)
) AS v(label, value)
"""


def test_hostile_values_and_labels_come_out_valid(
    pg: Cluster, start_exporter: StartExporter, queries_file: Path
) -> None:
    write_queries(
        queries_file,
        f"""\
  - name: hostile
    help: Awkward values and labels.
    sql: |
{"".join("      " + line + chr(10) for line in HOSTILE_SQL.strip().splitlines())}
    interval: 1s
    timeout: 1s
    metrics:
      - {{name: test_hostile, help: 'Help with "quotes", \\ and ünïcode.', value: value, labels: [label]}}
  - name: typed
    help: Booleans and NULLs.
    sql: SELECT true AS t, false AS f, NULL::int AS missing
    interval: 1s
    timeout: 1s
    metrics:
      - {{name: test_true, help: True., value: t}}
      - {{name: test_false, help: False., value: f}}
      - {{name: test_missing, help: Null., value: missing}}
""",
    )
    exporter = start_exporter(exporter_env(exporter_dsn(pg), queries_file))
    exporter.wait_metric("test_true", lambda v: v is not None, 5)
    scrape = exporter.wait_metric("test_hostile", lambda v: v is not None, 5, label="decimal")
    samples = {
        labels["label"]: value for name, labels, value in scrape.samples() if name == "test_hostile"
    }
    assert math.isnan(samples["nan"])
    assert samples["inf"] == math.inf
    assert samples["neg_inf"] == -math.inf
    assert samples["decimal"] == 12.5
    assert samples["huge"] == float(2**70)
    assert "bool" not in samples  # NULL: no sample
    assert samples['quote "q"'] == 1
    assert samples["back\\slash"] == 2
    assert samples["new\nline"] == 3
    assert samples["zürich ✓"] == 4
    assert scrape.get("test_true") == 1
    assert scrape.get("test_false") == 0
    assert scrape.get("test_missing") is None
    om = http_get(exporter.url + "/metrics", {"Accept": "application/openmetrics-text"})[2]
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

    assert any(f.name == "test_hostile" for f in parse_om(om.decode()))  # type: ignore[no-untyped-call]
    assert list(text_string_to_metric_families(scrape.text))
    if shutil.which("promtool"):
        result = subprocess.run(
            ["promtool", "check", "metrics"],
            input=scrape.text.encode(),
            capture_output=True,
            check=False,
        )
        assert result.returncode in (0, 3), result.stderr  # 3: lint remarks only


def test_text_where_a_number_belongs_is_an_invalid_result(
    pg: Cluster, start_exporter: StartExporter, queries_file: Path
) -> None:
    write_queries(
        queries_file,
        TICK
        + """\
  - name: texty
    help: Returns text as the value.
    sql: SELECT 'twelve' AS v
    interval: 1s
    timeout: 1s
    metrics:
      - {name: test_texty, help: Text., value: v}
""",
    )
    exporter = start_exporter(exporter_env(exporter_dsn(pg), queries_file))
    exporter.wait_metric(
        "homepage_exporter_query_errors_total",
        lambda v: (v or 0) >= 1,
        5,
        query="texty",
        reason="invalid_result",
    )
    assert "expected a number, got str 'twelve'" in exporter.logs


def test_cardinality_guard_fails_the_query_without_growing(
    pg: Cluster, start_exporter: StartExporter, queries_file: Path
) -> None:
    write_queries(
        queries_file,
        TICK
        + """\
  - name: explosive
    help: Far more series than allowed.
    sql: SELECT g AS v, g::text AS id FROM generate_series(1, 50000) g
    interval: 1s
    timeout: 1s
    metrics:
      - {name: test_explosive, help: Too many., value: v, labels: [id]}
""",
    )
    exporter = start_exporter(
        exporter_env(exporter_dsn(pg), queries_file, max_series_per_query="1000")
    )
    scrape = exporter.wait_metric(
        "homepage_exporter_query_errors_total",
        lambda v: (v or 0) >= 2,
        8,
        query="explosive",
        reason="invalid_result",
    )
    assert scrape.get("test_explosive", id="1") is None
    assert len(scrape.text) < 100_000
    assert "more than 1000 rows" in exporter.logs
