"""`each: locales`: a query run once per locale, each within the query's own timeout.

Twenty live locales rendering in 0.55 s each (the runbook's warning) took 11 s as one statement
and timed out at 10 s: the render probe paged as failing while the homepage was merely slow.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from exporter.config import load_config
from exporter.demo.cluster import Cluster
from exporter.errors import ErrorReason
from exporter.runner import EACH_BUDGET_TIMEOUTS, run_query
from exporter.snapshot import Outcome
from exporter.targets import load_targets
from tests.queries_harness import settings_for

QUERIES = """\
version: 1
queries:
  - name: per_locale
    help: A render that costs a set time per locale.
    interval: 30s
    timeout: 1s
    params: [locales]
    each: locales
    sql: |
      SELECT l AS locale, 1 AS ok
      FROM unnest($1::text[]) AS l,
           LATERAL (SELECT pg_sleep(CASE WHEN l LIKE 'slow%' THEN 1.5 ELSE 0.6 END)) AS s
    metrics:
      - {name: per_locale_ok, help: Rendered., value: ok, labels: [locale]}
"""


def run(pg: Cluster, db: str, locales: str, tmp_path: Path) -> Outcome:
    path = tmp_path / "queries.yaml"
    path.write_text(QUERIES)
    (query,) = load_config(path).queries
    settings = settings_for(pg, db, locales=locales)

    async def go() -> Outcome:
        (target,) = load_targets(settings)
        async with target.database.open() as database:
            return await run_query(database, query, target.params, 1000)

    return asyncio.run(go())


def test_each_locale_has_its_own_deadline(pg: Cluster, db: str, tmp_path: Path) -> None:
    """Three locales at 0.6 s: 1.8 s in all, each well within its 1 s."""
    outcome = run(pg, db, "en,de,fr", tmp_path)
    assert outcome.error is None, outcome.error
    (family,) = outcome.values.families
    assert sorted(s.labels for s in family.samples) == [("de",), ("en",), ("fr",)]


def test_a_locale_that_cannot_render_fails_the_run_naming_it(
    pg: Cluster, db: str, tmp_path: Path
) -> None:
    outcome = run(pg, db, "en,slow-nl", tmp_path)
    assert outcome.error is not None
    assert outcome.error.reason is ErrorReason.TIMEOUT
    assert "locales 'slow-nl'" in outcome.error.message


@pytest.mark.slow
def test_a_budget_bounds_the_whole_run(pg: Cluster, db: str, tmp_path: Path) -> None:
    """However many locales, a run takes at most EACH_BUDGET_TIMEOUTS timeouts."""
    many = ",".join(f"l{i}" for i in range(EACH_BUDGET_TIMEOUTS * 2 + 1))
    outcome = run(pg, db, many, tmp_path)
    assert outcome.error is not None
    assert "budget" in outcome.error.message


@pytest.mark.parametrize("each", ["media_storage_quota_bytes", "tz"])
def test_each_must_be_a_list_parameter_of_the_query(tmp_path: Path, each: str) -> None:
    from exporter.errors import ConfigError

    path = tmp_path / "queries.yaml"
    path.write_text(QUERIES.replace("each: locales", f"each: {each}"))
    with pytest.raises(ConfigError, match=r"queries\.per_locale\.each"):
        load_config(path)
