"""Secrets that overlap: one target's password a prefix of another's. Whatever the order the
redactor masks them in, no piece of the longer one may be left in what the process prints.

A shorter secret masked first turns `prod-db-secret` into `[REDACTED]-db-secret`, which no
longer matches the longer one: its tail then leaks. Tried through real failing runs of the
command line, whose log lines quote the database they could not reach.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.demo.cluster import free_port
from exporter.logs import Redactor
from tests.test_cli import cli

# Each test starts the exporter as a process: the whole suite, not the daily loop.
pytestmark = pytest.mark.slow

SHORT = "prod"
LONG = "prod-db-secret"  # SHORT is its prefix
# Pieces of LONG that must not survive once SHORT is masked out of it.
TAILS = ("-db-secret", "db-secret", "secret")


def test_a_secret_that_contains_another_is_masked_whole() -> None:
    for order in ((SHORT, LONG), (LONG, SHORT)):
        masked = Redactor(order)(f"a {LONG} b {SHORT} c")
        assert masked == f"a {Redactor.MASK} b {Redactor.MASK} c"


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_no_piece_of_a_longer_password_survives_in_the_logs(
    tmp_path: Path, log_format: str
) -> None:
    closed = free_port()  # nothing listens there: every run fails and logs where it connected
    # The long password is also the database's name, so the failure line quotes it: the
    # redactor has something to mask (a password alone never reaches an error message).
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        "targets:\n"
        "  - name: short\n"
        f"    database_url: postgresql://exporter:{SHORT}@127.0.0.1:{closed}/cms\n"
        "  - name: long\n"
        f"    database_url: postgresql://exporter:{LONG}@127.0.0.1:{closed}/{LONG}\n"
    )
    env = {
        "HOMEPAGE_EXPORTER_TARGETS_FILE": str(targets),
        "HOMEPAGE_EXPORTER_LOG_LEVEL": "debug",
        "HOMEPAGE_EXPORTER_LOG_FORMAT": log_format,
        "HOMEPAGE_EXPORTER_CONNECT_TIMEOUT": "1s",
    }
    result = cli("once", "--target", "long", env=env)
    assert result.returncode == 1, result.stderr
    everything = result.stdout + result.stderr
    assert "database_unreachable" in everything, "the run failed and said so"
    assert Redactor.MASK in everything, "the failure quoted the secret, masked"
    for piece in (LONG, *TAILS):
        assert piece not in everything, f"{piece!r} leaked: {everything[-2000:]}"
