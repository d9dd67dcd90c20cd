"""The daemon as a process: scheduling, deadlines, outages, reload, shutdown, logs."""

from __future__ import annotations

import gzip
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.demo.cluster import Cluster
from tests.conftest import exporter_dsn
from tests.harness import (
    EXPORTER_PASSWORD,
    TICK,
    Exporter,
    exporter_env,
    http_get,
    wait_for,
    write_queries,
)

pytestmark = pytest.mark.slow

StartExporter = Callable[..., Exporter]


def test_query_values_refresh_on_their_interval(
    pg: Cluster, start_exporter: StartExporter, queries_file: Path
) -> None:
    write_queries(queries_file, TICK)
    exporter = start_exporter(exporter_env(exporter_dsn(pg), queries_file))
    first = exporter.wait_metric("test_tick_seconds", lambda v: v is not None, 5)
    before = first.get("test_tick_seconds")
    runs = first.get("homepage_exporter_query_runs_total", query="tick")
    assert before is not None
    assert runs is not None
    # Two more runs come, and the value moves with them. The interval itself (and its jitter)
    # is held by tests/test_transition.py on a fake clock, not by this machine's load.
    after = exporter.wait_metric(
        "homepage_exporter_query_runs_total", lambda v: (v or 0) >= runs + 2, 10, query="tick"
    )
    tick = after.get("test_tick_seconds")
    assert tick is not None
    assert tick > before
    assert after.get("homepage_exporter_query_up", query="tick") == 1
    assert after.get("homepage_exporter_database_up") == 1
    assert after.get("homepage_exporter_query_interval_seconds", query="tick") == 1


def test_a_slow_query_never_overlaps_itself(
    pg: Cluster, start_exporter: StartExporter, queries_file: Path
) -> None:
    write_queries(
        queries_file,
        """\
  - name: slowish
    help: Takes most of its interval.
    sql: SELECT 1 AS one, pg_sleep(0.9) IS NULL AS slept_marker_slowish
    interval: 1s
    timeout: 1s
    metrics:
      - {name: test_slowish, help: One., value: one}
""",
    )
    exporter = start_exporter(exporter_env(exporter_dsn(pg), queries_file, pool_size="4"))
    most = 0
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        running = pg.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
            " AND query LIKE '%slept_marker_slowish%' AND pid <> pg_backend_pid()"
        )
        most = max(most, int(running))
        time.sleep(0.05)
    assert most == 1
    assert exporter.scrape().get("test_slowish") == 1


def test_a_timed_out_query_is_cancelled_on_the_server(
    pg: Cluster, start_exporter: StartExporter, queries_file: Path
) -> None:
    write_queries(
        queries_file,
        TICK
        + """\
  - name: hangs
    help: Sleeps far past its timeout.
    sql: SELECT pg_sleep(30) IS NULL AS marker_hangs_forever
    interval: 2s
    timeout: 1s
    metrics:
      - {name: test_hangs, help: Never arrives., value: marker_hangs_forever}
""",
    )
    exporter = start_exporter(exporter_env(exporter_dsn(pg), queries_file))
    scrape = exporter.wait_metric(
        "homepage_exporter_query_errors_total",
        lambda v: (v or 0) >= 1,
        8,
        query="hangs",
        reason="timeout",
    )
    assert scrape.get("homepage_exporter_query_up", query="hangs") == 0
    # The server is not still sleeping: statement_timeout cancelled it there too.
    lingering = pg.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%marker_hangs_forever%'"
        " AND state = 'active' AND now() - query_start > interval '1.5 seconds'"
        " AND pid <> pg_backend_pid()"
    )
    assert lingering == "0\n"
    # The other query kept its schedule meanwhile.
    assert scrape.get("homepage_exporter_query_up", query="tick") == 1
    assert "query_failed" in exporter.logs
    assert "reason=timeout" in exporter.logs


def test_starts_with_the_database_down_and_recovers_alone(
    start_exporter: StartExporter, queries_file: Path
) -> None:
    write_queries(queries_file, TICK)
    cluster = Cluster(preload=())
    cluster.init()
    try:
        cluster.start()
        cluster.psql(f"CREATE ROLE homepage_exporter LOGIN PASSWORD '{EXPORTER_PASSWORD}'")
        cluster.stop()
        exporter = start_exporter(
            exporter_env(cluster.url("homepage_exporter", EXPORTER_PASSWORD), queries_file)
        )
        down = exporter.scrape()
        assert down.get("homepage_exporter_database_up") == 0
        assert http_get(exporter.url + "/readyz")[0] == 503
        exporter.wait_metric("homepage_exporter_query_up", lambda v: v == 0, 5, query="tick")
        cluster.start()
        exporter.wait_metric("homepage_exporter_database_up", lambda v: v == 1, 5)
        exporter.wait_metric("homepage_exporter_query_up", lambda v: v == 1, 5, query="tick")
        assert http_get(exporter.url + "/readyz")[0] == 200
        # Logged once when it went down (the ping's line: no query repeats it) and once when
        # it came back, not every interval.
        assert exporter.logs.count("database_unreachable") == 1
        assert exporter.logs.count("event=query_failed") == 0
        assert exporter.logs.count("event=query_recovered") == 1
    finally:
        cluster.destroy()


def test_database_restart_mid_run_is_reported_and_recovered(
    start_exporter: StartExporter, queries_file: Path
) -> None:
    write_queries(queries_file, TICK)
    cluster = Cluster(preload=())
    with cluster:
        cluster.psql(f"CREATE ROLE homepage_exporter LOGIN PASSWORD '{EXPORTER_PASSWORD}'")
        exporter = start_exporter(
            exporter_env(cluster.url("homepage_exporter", EXPORTER_PASSWORD), queries_file)
        )
        exporter.wait_metric("homepage_exporter_query_up", lambda v: v == 1, 5, query="tick")
        cluster.stop("fast")
        started = time.monotonic()
        exporter.wait_metric("homepage_exporter_database_up", lambda v: v == 0, 5)
        exporter.wait_metric("homepage_exporter_query_up", lambda v: v == 0, 5, query="tick")
        # /metrics keeps answering while the database is gone (generous bounds: a busy CI).
        t0 = time.perf_counter()
        exporter.scrape()
        assert time.perf_counter() - t0 < 2
        assert time.monotonic() - started < 10
        cluster.start()
        exporter.wait_metric("homepage_exporter_database_up", lambda v: v == 1, 5)
        exporter.wait_metric("homepage_exporter_query_up", lambda v: v == 1, 5, query="tick")


def test_failed_query_keeps_values_until_stale_then_withdraws_them(
    pg: Cluster, start_exporter: StartExporter, queries_file: Path
) -> None:
    pg.psql(
        "CREATE TABLE IF NOT EXISTS public.homepage_toggle (divisor int);"
        "TRUNCATE public.homepage_toggle; INSERT INTO public.homepage_toggle VALUES (1);"
        "GRANT SELECT ON public.homepage_toggle TO homepage_exporter",
        database="cms",
    )
    write_queries(
        queries_file,
        """\
  - name: toggled
    help: Fails with division by zero once the divisor is 0.
    sql: SELECT 10 / divisor AS v FROM public.homepage_toggle
    interval: 1s
    timeout: 1s
    stale_after: 3s
    metrics:
      - {name: test_toggled, help: Ten over the divisor., value: v}
""",
    )
    exporter = start_exporter(exporter_env(exporter_dsn(pg), queries_file))
    exporter.wait_metric("test_toggled", lambda v: v == 10, 5)
    pg.psql("UPDATE public.homepage_toggle SET divisor = 0", database="cms")
    kept = exporter.wait_metric("homepage_exporter_query_up", lambda v: v == 0, 5, query="toggled")
    assert kept.get("test_toggled") == 10  # last good value, within the staleness window
    errors = kept.get("homepage_exporter_query_errors_total", query="toggled", reason="sql")
    assert errors is not None
    assert errors >= 1
    exporter.wait_metric("test_toggled", lambda v: v is None, 10)
    pg.psql("UPDATE public.homepage_toggle SET divisor = 2", database="cms")
    exporter.wait_metric("test_toggled", lambda v: v == 5, 5)


def test_sighup_reloads_a_good_file_and_keeps_serving_on_a_bad_one(
    pg: Cluster, start_exporter: StartExporter, queries_file: Path
) -> None:
    write_queries(queries_file, TICK)
    exporter = start_exporter(exporter_env(exporter_dsn(pg), queries_file))
    exporter.wait_metric("test_tick_seconds", lambda v: v is not None, 5)
    write_queries(
        queries_file,
        TICK
        + """\
  - name: answer
    help: Added by a reload.
    sql: SELECT 42 AS v
    interval: 1s
    timeout: 1s
    metrics:
      - {name: test_answer, help: The answer., value: v}
""",
    )
    exporter.send(signal.SIGHUP)
    exporter.wait_metric("test_answer", lambda v: v == 42, 5)
    assert exporter.scrape().get("homepage_exporter_config_last_reload_successful") == 1

    queries_file.write_text("version: 1\nqueries:\n  - name: broken\n    interval: soon\n")
    exporter.send(signal.SIGHUP)
    scrape = exporter.wait_metric(
        "homepage_exporter_config_last_reload_successful", lambda v: v == 0, 5
    )
    assert scrape.get("test_answer") == 42  # the old queries keep running
    assert "config_reload_failed" in exporter.logs
    assert "queries[0]" in exporter.logs or "queries.broken" in exporter.logs
    runs = scrape.get("homepage_exporter_query_runs_total", query="tick") or 0
    exporter.wait_metric(  # still running its queries, not only serving
        "homepage_exporter_query_runs_total", lambda v: (v or 0) > runs, 10, query="tick"
    )
    assert exporter.proc.poll() is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signals_shut_down_gracefully(
    pg: Cluster, start_exporter: StartExporter, queries_file: Path, sig: signal.Signals
) -> None:
    write_queries(queries_file, TICK)
    exporter = start_exporter(exporter_env(exporter_dsn(pg), queries_file))
    exporter.wait_metric("test_tick_seconds", lambda v: v is not None, 5)
    t0 = time.monotonic()
    assert exporter.stop(sig) == 0
    assert time.monotonic() - t0 < 5
    assert "event=stopped" in exporter.logs
    assert "Traceback" not in exporter.logs
    # The pool closed its connections on the way out.
    wait_for(
        lambda: (
            pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'homepage_exporter'")
            == "0\n"
        ),
        5,
        "exporter connections to close",
    )


def test_wrong_password_is_one_clear_log_line_without_the_password(
    pg: Cluster, start_exporter: StartExporter, queries_file: Path
) -> None:
    write_queries(queries_file, TICK)
    wrong = "not-the-Password-9431"
    exporter = start_exporter(exporter_env(exporter_dsn(pg, password=wrong), queries_file))
    # Three failed runs and pings later, still one line: silence proven by events, not by time.
    exporter.wait_metric(
        "homepage_exporter_query_errors_total",
        lambda v: (v or 0) >= 3,
        15,
        query="tick",
        reason="connection",
    )
    logs = exporter.logs
    assert "password authentication failed" in logs
    assert logs.count("event=database_unreachable") == 1
    assert wrong not in logs
    assert wrong not in exporter.scrape().text
    assert "Traceback" not in logs


def test_http_endpoints(pg: Cluster, start_exporter: StartExporter, queries_file: Path) -> None:
    write_queries(queries_file, TICK)
    exporter = start_exporter(exporter_env(exporter_dsn(pg), queries_file))
    exporter.wait_metric("test_tick_seconds", lambda v: v is not None, 5)
    status, headers, body = http_get(exporter.url + "/")
    assert status == 200
    assert b'href="/metrics"' in body
    assert http_get(exporter.url + "/nope")[0] == 404
    status, headers, body = http_get(exporter.url + "/metrics", method="HEAD")
    assert status == 200
    assert body == b""
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    status, headers, body = http_get(exporter.url + "/metrics", {"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert b"test_tick_seconds" in gzip.decompress(body)
    status, headers, body = http_get(
        exporter.url + "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert b"# TYPE homepage_exporter_query_errors counter" in body
    assert http_get(exporter.url + "/healthz")[0] == 200
    assert http_get(exporter.url + "/readyz")[0] == 200
