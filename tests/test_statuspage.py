"""The status page at `/`: what it shows, that it costs a scrape nothing, and how it looks in a
real headless browser (Debian's Chromium), healthy and in an incident, with screenshots kept
as the suite's artefacts (ARTIFACTS_DIR, default .artifacts/)."""

from __future__ import annotations

import asyncio
import html.parser
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from exporter.config import Config, load_config
from exporter.demo.cluster import Cluster, free_port
from exporter.demo.database import sql_file
from exporter.errors import ErrorReason, QueryError
from exporter.http import HttpServer
from exporter.mapping import Family, Sample
from exporter.settings import SHIPPED_QUERIES, ListenAddress
from exporter.snapshot import Instant, Outcome, Values
from exporter.statuspage import StatusPage, load_checks
from exporter.store import TargetStore
from tests.conftest import exporter_dsn
from tests.harness import Exporter, exporter_env, http_get

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR", ROOT / ".artifacts"))
NOW = 1_764_000_000.0
LINKS = [("Metrics", "/metrics")]


class Rows(html.parser.HTMLParser):
    """data-check / data-query rows and their data-state, from a page's HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.checks: dict[str, str] = {}
        self.queries: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-check"):
            self.checks[str(a["data-check"])] = str(a["data-state"])
        if tag == "tr" and a.get("data-query"):
            self.queries[str(a["data-query"])] = str(a["data-state"])


def parse(body: bytes | str) -> Rows:
    rows = Rows()
    rows.feed(body.decode() if isinstance(body, bytes) else body)
    return rows


def publish(store: TargetStore, query_name: str, metric: str, value: float) -> None:
    previous = store.snapshot(query_name)
    assert previous is not None
    family = next(m for m in previous.query.metrics if m.name == metric)
    labels = tuple("x" for _ in family.labels)
    outcome = Outcome(previous.query, 0.01, Values((Family(family, (Sample(labels, value),)),)))
    assert store.apply(outcome, Instant(NOW, 0.0)) is not None


@pytest.fixture
def config() -> Config:
    return load_config(SHIPPED_QUERIES)


def test_each_check_is_coloured_and_worded_by_the_alerts_thresholds(config: Config) -> None:
    store = TargetStore(config)
    page = StatusPage([("", store)], LINKS, clock=lambda: NOW)
    publish(store, "homepage_render", "homepage_render_duration_seconds", 0.2)
    publish(store, "scheduled_publishes", "homepage_scheduled_publish_lag_minutes", 7)
    publish(store, "publish_failures", "homepage_publish_failures_last_hour", 9)
    body = page.render_now()
    rows = parse(body)
    assert rows.checks == {
        "homepage_render_duration_seconds": "ok",
        "homepage_scheduled_publish_lag_minutes": "warning",  # > 5 min
        "homepage_publish_failures_last_hour": "critical",  # > 5 an hour
        "homepage_media_storage_percent": "unknown",
        "homepage_cms_table_size_bytes": "unknown",
    }
    text = body.decode()
    assert "WARNING" in text
    assert "CRITICAL" in text
    assert "NO DATA" in text
    assert "&gt; 500 ms" in text  # the runbook's own numbers, from alerts/thresholds.yaml
    _, checks = load_checks()
    assert [c.name for c in checks] == [
        "Homepage load time",
        "Scheduled publish lag",
        "Failed publishes",
        "Media storage",
        "Version table size",
    ]


def test_each_query_shows_its_health_and_last_error(config: Config) -> None:
    store = TargetStore(config)
    page = StatusPage([("", store)], LINKS, clock=lambda: NOW + 90)
    previous = store.snapshot("media")
    assert previous is not None
    failing = Outcome(previous.query, 0.1, QueryError(ErrorReason.PERMISSION, "permission denied"))
    assert store.apply(failing, Instant(NOW, 0.0)) is not None
    body = page.render_now()
    rows = parse(body)
    assert rows.queries["media"] == "critical"
    assert rows.queries["sections"] == "unknown"  # not run yet
    assert "last error 90s ago: permission: permission denied" in body.decode()
    assert "<script" not in body.decode()


def test_the_status_page_is_rendered_on_request_once_per_freshness_window(config: Config) -> None:
    """Scrapes never render the status page; `/` renders it when asked, once however many ask
    at once, and serves that render while it is fresh."""
    renders: list[float] = []
    clock = [NOW]

    def counted() -> float:
        renders.append(clock[0])
        return clock[0]

    async def go() -> tuple[bytes, list[bytes]]:
        store = TargetStore(config)
        page = StatusPage([("", store)], LINKS, clock=counted, monotonic=lambda: clock[0])
        port = free_port()
        server = HttpServer(
            store, ListenAddress("127.0.0.1", port), ready=lambda: True, status=page
        )
        # The clients' own threads: the server's render needs one of the loop's.
        with ThreadPoolExecutor(8) as clients:
            async with server:
                loop = asyncio.get_running_loop()

                def get(path: str) -> bytes:
                    status, _, body = http_get(f"http://127.0.0.1:{port}{path}")
                    assert status == 200
                    return body

                for _ in range(100):
                    await loop.run_in_executor(clients, get, "/metrics")
                assert renders == [], "a scrape rendered the status page"
                together = await asyncio.gather(
                    *(loop.run_in_executor(clients, get, "/") for _ in range(8))
                )
                assert len(renders) == 1, "eight requests at once, one render"
                clock[0] += page.fresh_for / 2
                assert await loop.run_in_executor(clients, get, "/") == together[0]
                assert len(renders) == 1, "a fresh render is served again"
                clock[0] += page.fresh_for
                later = await loop.run_in_executor(clients, get, "/")
                assert len(renders) == 2, "a stale render is made again"
                return later, list(together)

    later, together = asyncio.run(go())
    assert all(body == together[0] for body in together)
    assert together[0].startswith(b"<!doctype html>")
    assert later != together[0]  # its "as of" moved on


# --- in a real browser ------------------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it)")
    return found


def browse(url: str, shot: Path, width: int) -> str:
    """The page as Chromium renders it (its DOM), and a screenshot at a phone's or a laptop's
    width."""
    with tempfile.TemporaryDirectory() as profile:
        flags = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--window-size={width},1400",
            "--hide-scrollbars",
        ]
        subprocess.run(
            [*flags, f"--screenshot={shot}", url], capture_output=True, timeout=60, check=True
        )
        dom = subprocess.run(
            [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=60, check=True
        )
    assert shot.stat().st_size > 10_000  # a real picture, not an empty canvas
    return dom.stdout


@pytest.mark.slow
def test_the_status_page_in_a_browser_healthy_then_in_an_incident(pg: Cluster, db: str) -> None:
    chromium()
    pg.psql_file(sql_file("seed.sql"), database=db)
    pg.psql(
        "UPDATE section_schedules SET publish_at = now() + interval '1 day' WHERE status = 'pending';"
        "UPDATE section_schedules SET processed_at = now() - interval '3 days' WHERE status = 'failed';",
        database=db,
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    exporter = Exporter(exporter_env(exporter_dsn(pg, db), locales="en,de,fr"))
    try:
        exporter.wait_healthy()
        exporter.wait_metric(
            "homepage_exporter_query_up", lambda v: v == 1, 20, query="scheduled_publishes"
        )
        exporter.wait_metric(
            "homepage_exporter_query_up", lambda v: v == 1, 20, query="table_stats"
        )
        healthy = parse(browse(exporter.url + "/", ARTIFACTS / "status-healthy-phone.png", 412))
        browse(exporter.url + "/", ARTIFACTS / "status-healthy-laptop.png", 1280)
        assert healthy.checks["homepage_render_duration_seconds"] == "ok"
        assert healthy.checks["homepage_scheduled_publish_lag_minutes"] == "ok"
        assert healthy.checks["homepage_publish_failures_last_hour"] == "ok"
        assert healthy.checks["homepage_cms_table_size_bytes"] == "ok"
        assert healthy.checks["homepage_media_storage_percent"] == "unknown"  # no quota set
        assert set(healthy.checks) == {c.metric for c in load_checks()[1]}
        assert healthy.queries["sections"] == "ok"

        # The incident: publishes stuck for 20 minutes, and one query denied its table.
        pg.psql(
            "INSERT INTO section_schedules (section_id, version_id, publish_at, status)"
            " SELECT id, published_version_id, now() - interval '20 minutes', 'pending'"
            " FROM homepage_sections WHERE locale = 'en' LIMIT 2;"
            "REVOKE EXECUTE ON FUNCTION homepage_exporter.sections_visible_to_anon(text[])"
            " FROM homepage_exporter;",
            database=db,
        )
        exporter.wait_metric("homepage_scheduled_publish_lag_minutes", lambda v: (v or 0) > 15, 40)
        exporter.wait_metric(
            "homepage_exporter_query_up", lambda v: v == 0, 40, query="anon_visibility"
        )
        incident = browse(exporter.url + "/", ARTIFACTS / "status-incident-phone.png", 412)
        rows = parse(incident)
        assert rows.checks["homepage_scheduled_publish_lag_minutes"] == "critical"
        assert rows.queries["anon_visibility"] == "critical"
        assert "permission denied for function sections_visible_to_anon" in incident
        assert rows.checks["homepage_render_duration_seconds"] == "ok"
    finally:
        exporter.close()


def test_the_page_ages_move_on_with_each_request(config: Config) -> None:
    """A quiet database changes nothing for minutes; the page's "… ago" must still move: each
    render (on request, once the last one is stale) reads the clock."""
    store = TargetStore(config)
    clock = [NOW]
    page = StatusPage([("", store)], LINKS, clock=lambda: clock[0], monotonic=lambda: clock[0])
    previous = store.snapshot("media")
    assert previous is not None
    failing = Outcome(previous.query, 0.1, QueryError(ErrorReason.PERMISSION, "denied"))
    assert store.apply(failing, Instant(NOW, 0.0)) is not None

    async def go() -> tuple[bytes, bytes]:
        first = await page.current()
        clock[0] = NOW + 125
        return first, await page.current()

    first, later = asyncio.run(go())
    assert b"last error just now: permission: denied" in first
    assert b"last error 125s ago: permission: denied" in later
