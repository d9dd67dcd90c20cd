"""The schema contract's `needs:` lines: parsed once at load, refused with the place named."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from exporter.config import load_config
from exporter.contract import (
    CACHE_SECONDS,
    Kind,
    Need,
    Requirement,
    first_missing,
    parse_need,
    requirement,
)
from exporter.demo.cluster import Cluster
from exporter.demo.database import load_exporter_role
from exporter.errors import ConfigError
from exporter.snapshot import Skipped
from exporter.targets import load_targets
from tests.harness import EXPORTER_PASSWORD
from tests.queries_harness import run_named, settings_for


@pytest.mark.parametrize(
    ("line", "need"),
    [
        ("section_schedules(status, publish_at)", Need(Kind.RELATION, "public.section_schedules", ("status", "publish_at"))),
        ("homepage_exporter.cron_job", Need(Kind.RELATION, "homepage_exporter.cron_job")),
        ("function homepage_exporter.render_as_anon(text[])", Need(Kind.FUNCTION, "homepage_exporter.render_as_anon(text[])")),
        ("function get_homepage_content(text)", Need(Kind.FUNCTION, "public.get_homepage_content(text)")),
        ("  media_assets( file_size ) ", Need(Kind.RELATION, "public.media_assets", ("file_size",))),
    ],
)  # fmt: skip
def test_each_form_parses(line: str, need: Need) -> None:
    assert parse_need(line) == need


@pytest.mark.parametrize(
    "line",
    ["pg_class, pg_policy", "section_schedules()", "get_homepage_content(text) (migration)",
     "section_schedules(status, 1col)", "function", ""],
)  # fmt: skip
def test_anything_else_is_refused_with_the_forms(line: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_need(line)


def test_a_bad_needs_line_names_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "queries.yaml"
    path.write_text(
        "version: 1\nqueries:\n  - name: q\n    help: h\n    interval: 30s\n    timeout: 5s\n"
        '    needs: ["section_schedules(status)", "pg_class, pg_policy"]\n'
        "    sql: SELECT 1 AS v\n    metrics:\n      - {name: m, help: h, value: v}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert f"{path}:7: queries.q.needs[1]: expected" in str(error.value)


def test_the_role_scripts_objects_say_to_run_it() -> None:
    need = parse_need("function homepage_exporter.render_as_anon(text[])")
    assert requirement(need, None).advice == (
        "function:homepage_exporter.render_as_anon(text[])"
        " (run exporter/sql/exporter_role.sql, or run it again)"
    )
    column = requirement(parse_need("section_schedules(status, updated_at)"), "updated_at")
    assert str(column) == "column:public.section_schedules.updated_at"
    assert "vocabulary" in column.advice
    assert str(Requirement(Kind.SERVER_VERSION, "13")) == "server_version>=13"


def test_a_migration_is_seen_within_the_cache_minute(pg: Cluster, db: str) -> None:
    """The catalog is asked again once the minute is up: a column added by a migration (or the
    role script run after start) stops the skip without a restart."""
    need = parse_need("section_schedules(status, executed_at)")
    now = [1000.0]

    async def ask() -> Requirement | None:
        (target,) = load_targets(settings_for(pg, db))
        async with target.database.open() as database:
            first = await first_missing(database, [need], 5, clock=lambda: now[0])
            pg.psql("ALTER TABLE section_schedules ADD COLUMN executed_at timestamptz", database=db)
            now[0] += CACHE_SECONDS / 2
            cached = await first_missing(database, [need], 5, clock=lambda: now[0])
            now[0] += CACHE_SECONDS
            fresh = await first_missing(database, [need], 5, clock=lambda: now[0])
        assert first is not None
        assert str(first) == "column:public.section_schedules.executed_at"
        assert cached == first  # within the minute: the answer it had
        return fresh

    assert asyncio.run(ask()) is None


def test_a_reconnect_asks_the_catalog_again_at_once(pg: Cluster, db: str) -> None:
    """After an outage the server may be another one (a restore, a failover): the contract's
    cached answers go with the old connections, not a minute later."""
    need = parse_need("section_schedules(status, executed_at)")

    async def ask() -> tuple[Requirement | None, Requirement | None]:
        (target,) = load_targets(settings_for(pg, db))
        async with target.database.open() as database:
            first = await first_missing(database, [need], 5, clock=lambda: 0.0)
            pg.psql("ALTER TABLE section_schedules ADD COLUMN executed_at timestamptz", database=db)
            database.connection_lost()
            await database.reconnected()
            return first, await first_missing(database, [need], 5, clock=lambda: 0.0)

    first, after = asyncio.run(ask())
    assert first is not None
    assert after is None, "the answer from before the outage was kept"


def test_an_upgrade_before_the_role_script_is_run_again_skips_the_render_probe_by_name(
    pg: Cluster, db: str
) -> None:
    """README: after an upgrade, run exporter_role.sql again. A database set up by the script
    before live_links() existed: homepage_render is skipped naming it (the deployment-mistake
    alert's requirement), and once the script has run again it answers."""
    pg.psql("DROP FUNCTION homepage_exporter.live_links(text[])", database=db)
    skipped = run_named(pg, db, "homepage_render", locales="en")
    assert isinstance(skipped.result, Skipped), skipped.result
    assert str(skipped.result.requirement) == "function:homepage_exporter.live_links(text[])"
    assert skipped.result.requirement.kind.is_deployment_mistake
    load_exporter_role(pg, db, EXPORTER_PASSWORD)  # the README's step, run again
    assert run_named(pg, db, "homepage_render", locales="en").error is None
