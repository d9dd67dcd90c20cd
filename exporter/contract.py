"""The schema contract: what a query reads (`needs:` in queries.yaml), checked against the catalog.

A query whose needs are missing is not run: it is skipped with a `Requirement` naming the first
missing object (`query_skipped{requirement}`), which is a deployment mistake to fix (a ticket),
never an incident to page about. Three forms, each one line of `needs:`:

    section_schedules(status, publish_at)          a table (schema public unless named) and columns
    homepage_exporter.cron_job                     a table or view
    function homepage_exporter.render_as_anon(text[])   a function with its argument types

Only what a deployment may lack belongs there: the runbook's columns, the objects
exporter_role.sql creates. A CMS function that vanished (get_homepage_content) is an incident,
caught by the `functions` query, and is not a need.
"""

from __future__ import annotations

import enum
import re
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config layer imports this module without asyncpg
    from exporter.db import Database

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_RELATION = re.compile(rf"^(?P<name>(?:{_IDENT}\.)?{_IDENT})(?:\s*\((?P<cols>[^()]*)\))?$")
_FUNCTION = re.compile(rf"^function\s+(?P<sig>(?:{_IDENT}\.)?{_IDENT}\s*\([^()]*\))$")
FORMS = 'expected "table(column, ...)", "schema.table" or "function schema.name(argtype, ...)"'
ROLE_SCRIPT_SCHEMA = "homepage_exporter."
CACHE_SECONDS = 60.0  # a reconnect or a migration is seen within a minute


class Kind(enum.StrEnum):
    """What a query may require of the server."""

    EXTENSION = "extension"
    SERVER_VERSION = "server_version"
    RELATION = "relation"
    COLUMN = "column"
    FUNCTION = "function"

    @property
    def is_deployment_mistake(self) -> bool:
        """An object of the schema contract, missing: fixed by whoever deploys (a migration,
        the role script, a vocabulary setting). A missing extension or an older server is
        the server's choice."""
        return self in (Kind.RELATION, Kind.COLUMN, Kind.FUNCTION)


@dataclass(frozen=True, slots=True)
class Requirement:
    """Something the server must have for a query to run: an extension, a version, or an object
    of the schema contract (a relation, a column, a function; exporter/contract.py)."""

    kind: Kind
    value: str
    hint: str = ""  # what creates it, when that is ours to say (exporter_role.sql)

    def __str__(self) -> str:
        if self.kind is Kind.SERVER_VERSION:
            return f"server_version>={self.value}"
        return f"{self.kind}:{self.value}"

    @property
    def advice(self) -> str:
        """One line for a person: what is missing, and what to run."""
        if self.hint:
            return f"{self} (run exporter/sql/{self.hint}, or run it again)"
        if self.kind.is_deployment_mistake:
            return f"{self} (the CMS schema lacks it: see the README's vocabulary settings)"
        return str(self)


@dataclass(frozen=True, slots=True)
class Need:
    """One object a query reads: a relation (with the columns it uses) or a function."""

    kind: Kind  # RELATION or FUNCTION
    name: str  # schema-qualified
    columns: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.kind is Kind.FUNCTION:
            return f"function {self.name}"
        return self.name + (f"({', '.join(self.columns)})" if self.columns else "")


def parse_need(text: str) -> Need:
    """A `needs:` line as a `Need`; raises ValueError with the forms it accepts."""
    line = " ".join(text.split())
    if match := _FUNCTION.match(line):
        sig = match["sig"].replace(" (", "(")
        return Need(Kind.FUNCTION, sig if "." in sig.split("(")[0] else f"public.{sig}")
    if line == "function" or line.startswith("function "):
        raise ValueError(f"{FORMS}, got {text!r}")
    if match := _RELATION.match(line):
        name = match["name"] if "." in match["name"] else f"public.{match['name']}"
        cols = tuple(c.strip() for c in (match["cols"] or "").split(",") if c.strip())
        if match["cols"] is not None and not cols:
            raise ValueError(f"{FORMS}, got {text!r} (empty column list)")
        for col in cols:
            if not re.fullmatch(_IDENT, col):
                raise ValueError(f"{FORMS}, got {text!r} ({col!r} is not a column name)")
        return Need(Kind.RELATION, name, cols)
    raise ValueError(f"{FORMS}, got {text!r}")


def requirement(need: Need, column: str | None) -> Requirement:
    """What `query_skipped{requirement}` says: the missing object, and for the role script's
    objects that the script has not run (or predates them)."""
    if need.kind is Kind.FUNCTION:
        value = need.name
    elif column is not None:
        value = f"{need.name}.{column}"
    else:
        value = need.name
    kind = need.kind if column is None else Kind.COLUMN
    hint = "exporter_role.sql" if need.name.startswith(ROLE_SCRIPT_SCHEMA) else ""
    return Requirement(kind, value, hint)


# One round trip for all of a query's needs: the first that is missing, in the order written.
FIRST_MISSING_SQL = """
SELECT n.ord::int, n.col
FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS n(kind, name, col, ord)
WHERE CASE n.kind
  WHEN 'function' THEN to_regprocedure(n.name) IS NULL
  WHEN 'relation' THEN to_regclass(n.name) IS NULL
  ELSE NOT EXISTS (SELECT FROM pg_attribute a
                   WHERE a.attrelid = to_regclass(n.name) AND a.attname = n.col
                     AND a.attnum > 0 AND NOT a.attisdropped)
END
ORDER BY n.ord LIMIT 1
"""


_Checked = dict[tuple[Need, ...], tuple[float, Requirement | None]]
_cache: weakref.WeakKeyDictionary[Database, _Checked] = weakref.WeakKeyDictionary()


async def first_missing(
    db: Database,
    needs: Sequence[Need],
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
) -> Requirement | None:
    """The first of `needs` the database lacks, or None; cached per database for a minute."""
    if not needs:
        return None
    key = tuple(needs)
    now = clock()
    if db not in _cache:
        _cache[db] = {}
        # The server that answers after an outage may be another one (a restore, a failover):
        # what its catalog said before is not asked for a minute more.
        db.on_reconnect(lambda: _cache.get(db, {}).clear())
    seen = _cache[db].get(key)
    if seen is not None and now - seen[0] < CACHE_SECONDS:
        return seen[1]
    kinds: list[str] = []
    names: list[str] = []
    columns: list[str | None] = []
    owners: list[tuple[Need, str | None]] = []
    for need in needs:
        kinds.append(need.kind.value)
        names.append(need.name)
        columns.append(None)
        owners.append((need, None))
        for column in need.columns:
            kinds.append(Kind.COLUMN.value)
            names.append(need.name)
            columns.append(column)
            owners.append((need, column))
    result = await db.fetch(FIRST_MISSING_SQL, (kinds, names, columns), timeout)
    missing = None
    if result.rows:
        need, lacking = owners[int(str(result.rows[0][0])) - 1]
        missing = requirement(need, lacking)
    _cache[db][key] = (now, missing)
    return missing
