"""Triage's P3 findings held against `supabase inspect db`, on the same real states.

On-call on Supabase already knows `supabase inspect db` (the Supabase CLI pinned by
tests/supabase_cli/, installed by scripts/test.sh). On each state below both run against the same
database: the CLI as the superuser with --remote=<url>, triage as the exporter role. Restricted to
the CMS (public.homepage*, section*, media*), both name the same sessions and tables; where they
differ on purpose (docs/runbook.md, "Triage and `supabase inspect db`"), the test pins the
difference so that a new CLI version that changes it is noticed.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.demo.cluster import Cluster, ClusterError
from exporter.demo.database import create_cms_database, sql_file
from tests.conftest import CMS, exporter_dsn
from tests.harness import EXPORTER_PASSWORD, wait_for
from tests.test_triage import HEALTHY, run

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / ".cache/supabase-cli/node_modules/@supabase/cli-linux-x64/bin/supabase"
FAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
CMS_NAME = re.compile(r"\b(public\.)?(homepage\w*|section\w*|media\w*)")
# HomepageTableBloated's 20 % dead rows as inspect's bloat factor (pages over expected pages).
BLOAT_FACTOR = 1 / (1 - 0.2)
JSON = ("--output-format", "json")
BLOCK = 8192  # inspect rounds a one-page table's waste up to one page: not bloat

needs_cli = pytest.mark.skipif(
    not CLI.exists(), reason="the Supabase CLI is installed into .cache by scripts/test.sh"
)


def inspect(pg: Cluster, database: str, command: str, home: Path) -> list[dict[str, Any]]:
    """`supabase inspect db <command>` against `database`, as on-call runs it, as JSON rows."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "DO_NOT_TRACK": "1"}
    result = subprocess.run(
        [str(CLI), "inspect", "db", command, f"--remote={pg.url(database=database)}", *JSON],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=home,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["rows"]  # type: ignore[no-any-return]


def triage(pg: Cluster, database: str) -> dict[str, Any]:
    code, out, _ = run(exporter_dsn(pg, database), "--json")
    data: dict[str, Any] = json.loads(out)
    assert data["exit_code"] == code
    return data


def findings(data: dict[str, Any], alert: str) -> list[dict[str, Any]]:
    return [f for f in data["findings"] if f["alert"] == alert]


def cms(name: str) -> bool:
    return CMS_NAME.match(name.removeprefix("public.")) is not None


def mentions_cms(sql: str) -> bool:
    return CMS_NAME.search(sql) is not None


def waste_bytes(pretty: str) -> float:
    number, unit = pretty.split()
    return float(number) * {"bytes": 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[unit]


def count(text: str) -> int:
    return int(text.strip().replace(",", "") or 0)


@pytest.fixture
def homepage(pg: Cluster, db: str) -> str:
    """A healthy, realistic homepage (the demo seed) beside a table of the shop's own."""
    pg.psql_file(sql_file("seed.sql"), database=db)
    pg.psql(
        HEALTHY + "CREATE TABLE shop_orders (id int PRIMARY KEY, total int);"
        " INSERT INTO shop_orders SELECT n, n FROM generate_series(1, 10) n;",
        database=db,
    )
    return db


class Sessions:
    """Background psql sessions, ended by the server (their backends), not only their clients."""

    def __init__(self, pg: Cluster, database: str) -> None:
        self.pg, self.database = pg, database
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, sql: str) -> None:
        self.procs.append(self.pg.psql_session(sql, self.database))

    def pids(self, marker: str) -> set[int]:
        rows = self.pg.psql(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            f" AND query LIKE '%{marker}%'",
            database=self.database,
        )
        return {int(p) for p in rows.split()}

    def close(self) -> None:
        # A killed psql leaves its backend sleeping (and holding its locks) until it next
        # talks to the client: end the backends first.
        self.pg.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name = 'psql'",
            database=self.database,
        )
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def sessions(pg: Cluster, homepage: str) -> Iterator[Sessions]:
    s = Sessions(pg, homepage)
    yield s
    s.close()


def blocked_count(pg: Cluster, database: str) -> int:
    return int(
        pg.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE cardinality(pg_blocking_pids(pid)) > 0",
            database=database,
        )
    )


@needs_cli
def test_blocking_names_the_same_holder_and_waiter(
    pg: Cluster, homepage: str, sessions: Sessions, tmp_path: Path
) -> None:
    """An editor's transaction holds a section's row; the next save waits behind it."""
    hero = "WHERE locale = 'en' AND section_key = 'hero-banner'"
    sessions.start(
        f"BEGIN; UPDATE homepage_sections SET display_order = display_order {hero};"
        " SELECT pg_sleep(60) /* cms-holder */;"
    )
    sessions.start("BEGIN; UPDATE shop_orders SET total = 0 WHERE id = 1; SELECT pg_sleep(60);")
    wait_for(lambda: len(sessions.pids("pg_sleep(60)")) == 2, 10, "the rows to be held")
    sessions.start(f"UPDATE homepage_sections SET display_order = 1 {hero}")
    sessions.start("UPDATE shop_orders SET total = 1 WHERE id = 1")
    wait_for(lambda: blocked_count(pg, homepage) == 2, 10, "two blocked sessions")

    seen = inspect(pg, homepage, "blocking", tmp_path)
    pairs = {
        (r["blocked_pid"], r["blocking_pid"]): mentions_cms(
            r["blocked_statement"] + r["blocking_statement"]
        )
        for r in seen
    }
    assert len(pairs) == 2, seen
    assert sum(pairs.values()) == 1, seen  # the shop's pair is there too
    (p3,) = findings(triage(pg, homepage), "PostgresBlockedQueries")
    named = {(r["pid"], b) for r in p3["rows"] for b in r["blocked_by"]}
    assert named == {pair for pair, is_cms in pairs.items() if is_cms}
    # The shop's sessions are not the CMS's: not named, never offered a cancel.
    shop = {pid for pair, is_cms in pairs.items() if not is_cms for pid in pair}
    assert not shop & {r["pid"] for r in p3["rows"]}
    assert not any(str(pid) in s for pid in shop for s in p3["statements"])


@needs_cli
def test_a_table_lock_is_named_by_triage_and_not_by_inspect(
    pg: Cluster, homepage: str, sessions: Sessions, tmp_path: Path
) -> None:
    """inspect's blocking pairs sessions by transaction id: a wait on a table lock is not
    shown. Triage asks pg_blocking_pids() and names it (docs/runbook.md says so)."""
    sessions.start(
        "BEGIN; LOCK TABLE section_products IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60);"
    )
    wait_for(lambda: len(sessions.pids("pg_sleep(60)")) == 1, 10, "the lock to be held")
    sessions.start("SELECT count(*) FROM section_products")
    wait_for(lambda: blocked_count(pg, homepage) == 1, 10, "a blocked session")

    (p3,) = findings(triage(pg, homepage), "PostgresBlockedQueries")
    named = {(r["pid"], b) for r in p3["rows"] for b in r["blocked_by"]}
    assert len(named) == 1
    # No inspect index-stats here: it reads the locked table's size and waits for the lock.
    assert inspect(pg, homepage, "blocking", tmp_path) == []


@pytest.fixture
def late_clock() -> Iterator[tuple[Cluster, Path]]:
    """A cluster whose clock on-call can move on (libfaketime): a query started before the
    move is as old, to every session, as if the minutes had passed."""
    if not FAKETIME:
        pytest.skip("libfaketime is installed by scripts/test.sh")
    cluster = Cluster(cron_database=CMS)
    cluster.init()
    clock = cluster.write_private("faketimerc", "+0\n")
    # The server only: psql, the CLI and triage run on the real clock.
    preload = {
        "LD_PRELOAD": FAKETIME[0],
        "FAKETIME_TIMESTAMP_FILE": str(clock),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # timeouts and pg_sleep keep real time
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in preload.items():
            mp.setenv(key, value)
        cluster.start()
    try:
        create_cms_database(cluster, CMS, exporter_password=EXPORTER_PASSWORD)
        cluster.psql_file(sql_file("seed.sql"), database=CMS)
        cluster.psql(HEALTHY, database=CMS)
        yield cluster, clock
    finally:
        cluster.destroy()


@needs_cli
def test_long_running_queries_name_the_same_cms_query(
    late_clock: tuple[Cluster, Path], tmp_path: Path
) -> None:
    """A CMS query and the shop's analytics, both running; then six minutes pass."""
    pg, clock = late_clock
    sessions = Sessions(pg, CMS)
    try:
        sessions.start("SELECT pg_sleep(120) FROM homepage_sections LIMIT 1")
        sessions.start("SELECT pg_sleep(120) /* the shop's analytics */")
        wait_for(lambda: len(sessions.pids("SELECT pg_sleep(120)")) == 2, 10, "both queries")
        # Both at 5 minutes (the runbook's and inspect's): nothing yet.
        assert inspect(pg, CMS, "long-running-queries", tmp_path) == []
        assert findings(triage(pg, CMS), "HomepageLongRunningQuery") == []

        clock.write_text("+6m\n")
        seen = inspect(pg, CMS, "long-running-queries", tmp_path)
        assert len(seen) == 2, seen  # every long query, the shop's too
        (p3,) = findings(triage(pg, CMS), "HomepageLongRunningQuery")
        assert {r["pid"] for r in p3["rows"]} == {
            r["pid"] for r in seen if mentions_cms(r["query"])
        }
        assert p3["statements"] == [
            f"SELECT pg_cancel_backend({r['pid']});" for r in seen if mentions_cms(r["query"])
        ]
    finally:
        sessions.close()


@needs_cli
def test_bloat_and_vacuum_name_the_same_table(pg: Cluster, homepage: str, tmp_path: Path) -> None:
    """The archive filled and emptied while autovacuum was off on it: 18,000 dead rows."""
    fill_and_empty = (
        "ALTER TABLE {t} SET (autovacuum_enabled = false);"
        " INSERT INTO {t} SELECT r.* FROM generate_series(1, 20000) n, LATERAL ({row}) r;"
        " DELETE FROM {t} WHERE {n} % 10 <> 0; ANALYZE {t};"
    )
    pg.psql(
        fill_and_empty.format(
            t="section_versions_archive",
            row="SELECT gen_random_uuid(), gen_random_uuid(), n, '{}'::jsonb, now(), now()",
            n="version_number",
        )
        + "CREATE TABLE shop_events (n int, payload text);"
        + fill_and_empty.format(t="shop_events", row="SELECT n, repeat('x', 40)", n="n"),
        database=homepage,
    )
    (p3,) = findings(triage(pg, homepage), "HomepageTableBloated")
    bloated = {r["table"] for r in p3["rows"]}
    assert bloated == {"section_versions_archive"}

    estimate = [r for r in inspect(pg, homepage, "bloat", tmp_path) if r["type"] == "table"]
    over = {
        r["name"].removeprefix("public."): cms(r["name"])
        for r in estimate
        if float(r["bloat"]) > BLOAT_FACTOR and waste_bytes(r["waste"]) > BLOCK
    }
    assert {t for t, is_cms in over.items() if is_cms} == bloated
    assert "shop_events" in over  # inspect sees the shop's table; triage is for the CMS

    vacuum = {
        r["name"].removeprefix("public."): r
        for r in inspect(pg, homepage, "vacuum-stats", tmp_path)
    }
    assert {t for t, r in vacuum.items() if cms(t) and r["expect_autovacuum"] == "yes"} == bloated
    for row in p3["rows"]:
        assert count(vacuum[row["table"]]["dead_rowcount"]) == row["dead_rows"]
        assert vacuum[row["table"]]["last_vacuum"] == ""
        assert row["last_vacuumed"] is None

    # Triage's statement, run: no dead rows left, for both. inspect's estimate of the space
    # stays (VACUUM frees it for reuse, only VACUUM FULL or pg_repack give it back).
    for statement in p3["statements"]:
        pg.psql(statement, database=homepage)
    assert findings(triage(pg, homepage), "HomepageTableBloated") == []
    after = inspect(pg, homepage, "vacuum-stats", tmp_path)
    archive = next(r for r in after if r["name"] == "public.section_versions_archive")
    assert archive["expect_autovacuum"] == "no"
    assert archive["last_vacuum"] != ""
    estimate = [r for r in inspect(pg, homepage, "bloat", tmp_path) if r["type"] == "table"]
    assert any(
        r["name"] == "public.section_versions_archive" and float(r["bloat"]) > BLOAT_FACTOR
        for r in estimate
    )


@needs_cli
def test_index_findings_beside_index_stats(pg: Cluster, homepage: str, tmp_path: Path) -> None:
    """A failed CREATE UNIQUE INDEX CONCURRENTLY (left invalid), a dropped runbook index and
    an index nothing uses."""
    pg.psql(
        "DROP INDEX idx_section_schedules_pending;"
        " CREATE INDEX idx_media_assets_size ON media_assets (file_size);",
        database=homepage,
    )
    with pytest.raises(ClusterError, match="could not create unique index"):
        pg.psql(
            "CREATE UNIQUE INDEX CONCURRENTLY idx_media_assets_mime ON media_assets (mime_type)",
            database=homepage,
        )
    data = triage(pg, homepage)
    (invalid,) = findings(data, "HomepageIndexInvalid")
    (missing,) = findings(data, "HomepageIndexMissing")
    assert [r["index"] for r in invalid["rows"]] == ["idx_media_assets_mime"]

    stats = {
        r["name"].removeprefix("public."): r
        for r in inspect(pg, homepage, "index-stats", tmp_path)
        if cms(r["table"])
    }
    # The invalid index: inspect lists it among the unused (no scan can use it).
    assert stats["idx_media_assets_mime"]["unused"] is True
    # The missing one: inspect lists what exists; triage knows what the runbook expects.
    assert [r["index"] for r in missing["rows"]] == ["idx_section_schedules_pending"]
    assert "idx_section_schedules_pending" not in stats
    # An unused index is not an incident: inspect flags it (and, on a small table, the
    # runbook's own render index); triage names neither.
    assert stats["idx_media_assets_size"]["unused"] is True
    named = {str(r.get("index")) for f in data["findings"] for r in f["rows"]}
    assert "idx_media_assets_size" not in named
