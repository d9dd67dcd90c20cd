"""The CMS at multiples of the DBA runbook's capacity warnings: loaded, or planned as if larger.

`load` writes the rows of bench/fixture.sql (what bench/ measures durations on). Every row
costs, so 100x (about 225 million versions and 10 million media assets) cannot be written in a
test run. `plan_as_if` gives a copy of a loaded database the planner's view of a larger one
instead: the planner reads a table's size from its file (RelationGetNumberOfBlocks) and only
the density from pg_class, so statistics alone would show 100x rows in 10x pages. Here each
table's and index's file is extended, sparsely, to the pages the larger state fills (zero pages
read as empty), pg_class gets the larger row counts, and the columns whose number of distinct
values grows with the fixture's scale say so (ALTER COLUMN ... SET (n_distinct)). Its plans are
the larger state's; its durations are not (the extra pages are empty): time nothing on it.
"""

from __future__ import annotations

import os
from pathlib import Path

from exporter.demo.cluster import Cluster
from exporter.demo.database import create_cms_database
from tests.conftest import CMS_TABLES
from tests.harness import EXPORTER_PASSWORD

FIXTURE = Path(__file__).resolve().parent.parent / "bench" / "fixture.sql"
SEGMENT_PAGES = 131072  # RELSEG_SIZE: PostgreSQL splits a relation's file at 1 GB
PAGE = 8192

# Columns whose distinct values grow with the fixture's scale (bench/fixture.sql): sections per
# locale (50*N), so the sections that own versions and schedules; versions per section (up to
# 500*N), so version numbers and their hourly created_at. ANALYZE stores these as counts, which
# would stay at the loaded scale's.
GROW_WITH_SCALE = (
    ("section_versions", "section_id"),
    ("section_versions", "version_number"),
    ("section_versions", "created_at"),
    ("section_schedules", "section_id"),
    ("section_schedules", "version_id"),
)
# ... and one whose distinct values the fixture bounds (file_size is 50000 + g % 500000), which
# ANALYZE stores as a fraction of the rows and so would grow.
BOUNDED = (("media_assets", "file_size", 500_000),)


def load(pg: Cluster, database: str, scale: int) -> None:
    """A new database with the reference schema and bench/fixture.sql's rows at `scale`."""
    create_cms_database(pg, database, exporter_password=EXPORTER_PASSWORD, extensions=False)
    pg.psql_file(FIXTURE, database=database, scale=str(scale))


def _extend(path: Path, pages: int) -> None:
    """Grow a relation's file (and its 1 GB segments) to `pages`, as holes: no bytes written."""
    owner = path.stat()
    for segment in range((pages + SEGMENT_PAGES - 1) // SEGMENT_PAGES):
        part = path if segment == 0 else path.with_name(f"{path.name}.{segment}")
        size = min(SEGMENT_PAGES, pages - segment * SEGMENT_PAGES) * PAGE
        if part.exists() and part.stat().st_size >= size:
            continue
        with part.open("ab"):
            pass
        os.truncate(part, size)
        os.chown(part, owner.st_uid, owner.st_gid)
        part.chmod(0o600)


def plan_as_if(pg: Cluster, loaded: str, database: str, factor: int) -> None:
    """`database`: a copy of `loaded` (bench/fixture.sql's rows) whose planner sees the fixture
    at `factor` times the loaded scale: every table `factor` times larger, except the versions,
    `factor` squared (sections times versions per section). The fractions ANALYZE measured stay
    the loaded scale's: the busiest section's share of the versions (its MCV frequency) is
    then overstated, which makes reading one section through an index look dearer, not
    cheaper."""
    pg.psql(f'CREATE DATABASE "{database}" TEMPLATE "{loaded}" STRATEGY FILE_COPY')
    tables = ", ".join(f"'{t}'" for t in CMS_TABLES)
    counts = pg.psql(
        "SELECT tablename, attname, n_distinct FROM pg_stats WHERE schemaname = 'public'"
        f" AND n_distinct > 0 AND tablename IN ({tables})",
        database=database,
    )
    distinct = {(t, c): float(n) for t, c, n in (line.split("|") for line in counts.splitlines())}
    settings = [
        f"ALTER TABLE {t} ALTER COLUMN {c} SET (n_distinct = {distinct[t, c] * factor:.0f});"
        for t, c in GROW_WITH_SCALE
    ]
    settings += [f"ALTER TABLE {t} ALTER COLUMN {c} SET (n_distinct = {n});" for t, c, n in BOUNDED]
    # Nothing may measure the empty pages (VACUUM would also fill them in): autovacuum stays off.
    settings += [f"ALTER TABLE {t} SET (autovacuum_enabled = off);" for t in CMS_TABLES]
    pg.psql_file_text("\n".join(settings) + "\nANALYZE;\n", database=database)
    # The CMS tables and their indexes (TOAST stays as it is: no row here is wide enough).
    cms = (
        "SELECT c.oid, CASE coalesce(i.indrelid, c.oid) WHEN 'section_versions'::regclass"
        f" THEN {factor * factor} ELSE {factor} END AS growth"
        " FROM pg_class c LEFT JOIN pg_index i ON i.indexrelid = c.oid"
        f" WHERE c.relnamespace = 'public'::regnamespace AND (c.relname IN ({tables})"
        f" OR i.indrelid::regclass::text IN ({tables}))"
    )
    relations = pg.psql(
        f"SELECT pg_relation_filepath(oid), pg_relation_size(oid) / {PAGE}, growth FROM ({cms}) r",
        database=database,
    )
    for line in relations.splitlines():
        path, pages, growth = line.split("|")
        _extend(pg.datadir / path, int(pages) * int(growth))
    pg.psql(
        f"UPDATE pg_class c SET relpages = relpages * r.growth, reltuples = reltuples * r.growth,"
        f" relallvisible = relallvisible * r.growth FROM ({cms}) r WHERE c.oid = r.oid",
        database=database,
    )
