"""The first hour, as a new user meets it: what `check` and `run` say before anything works."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from exporter.demo.cluster import free_port
from tests.test_cli import clean_env, cli

# Each test starts the exporter as a process: the whole suite, not the daily loop.
pytestmark = pytest.mark.slow


def test_check_says_it_did_not_connect() -> None:
    result = cli("check")
    assert result.returncode == 0
    assert "not connected to the database: add --connect" in result.stdout


def test_a_bad_url_names_the_variable_the_user_set() -> None:
    plain = cli("check", env={"DATABASE_URL": "mysql://x"})
    assert plain.returncode == 2
    assert "setting DATABASE_URL: expected a URL like" in plain.stderr
    prefixed = cli("check", env={"HOMEPAGE_EXPORTER_DATABASE_URL": "mysql://x"})
    assert "setting HOMEPAGE_EXPORTER_DATABASE_URL: expected a URL like" in prefixed.stderr


def _run_for(seconds: float, env: dict[str, str]) -> str:
    """`run` for a few seconds, then SIGTERM; its log (stderr and stdout together)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--listen-address", f"127.0.0.1:{free_port()}"],
        env={**clean_env(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(seconds)  # a span of the daemon's life, not a wait for a state
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
    assert "Traceback" not in out
    return out


def test_run_names_the_default_url_it_fell_back_to() -> None:
    out = _run_for(3, {"HOMEPAGE_EXPORTER_CONNECT_TIMEOUT": "1s"})
    line = next(line for line in out.splitlines() if "event=no_database_url" in line)
    assert "using=postgresql://localhost:5432/postgres" in line


def test_a_database_down_at_start_is_one_line_not_one_per_query() -> None:
    url = f"postgresql://homepage_exporter@127.0.0.1:{free_port()}/cms"
    out = _run_for(4, {"DATABASE_URL": url})
    warnings = [line for line in out.splitlines() if "level=warning" in line]
    assert [w for w in warnings if "event=database_unreachable" in w], out
    per_query = [w for w in warnings if re.search(r"event=query_failed .*reason=connection", w)]
    assert per_query == [], "\n".join(per_query[:5])
