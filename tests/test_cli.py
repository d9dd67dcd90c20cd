"""The command line as a user meets it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter import __version__
from exporter.demo.cluster import Cluster
from tests.conftest import exporter_dsn
from tests.harness import write_queries

# Each test starts the exporter as a process: the whole suite, not the daily loop.
pytestmark = pytest.mark.slow

ONE = """\
  - name: one
    help: One.
    sql: SELECT 1 AS v
    interval: 30s
    timeout: 5s
    metrics:
      - {name: test_one, help: One., value: v}
"""


def clean_env() -> dict[str, str]:
    """This process's environment without any of the exporter's settings."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HOMEPAGE_EXPORTER_") and k != "DATABASE_URL"
    }


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        env={**clean_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"homepage-cms-exporter {__version__}"


def test_check_accepts_the_shipped_queries() -> None:
    result = cli("check")
    assert result.returncode == 0, result.stderr
    assert "queries.yaml: ok" in result.stdout


def test_check_rejects_a_bad_file_with_exit_2_and_one_line(tmp_path: Path) -> None:
    bad = write_queries(tmp_path / "q.yaml", ONE.replace("30s", "thirty"))
    result = cli("check", "--queries-file", str(bad))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "q.yaml:6: queries.one.interval: expected a duration" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HOMEPAGE_EXPORTER_POOL_SIZE": "lots"}, "setting HOMEPAGE_EXPORTER_POOL_SIZE:"),
        ({"HOMEPAGE_EXPORTER_POOL_SIZE": "0"}, "setting HOMEPAGE_EXPORTER_POOL_SIZE:"),
        ({"HOMEPAGE_EXPORTER_LISTEN_ADDRESS": "localhost"}, 'expected "host:port"'),
        ({"HOMEPAGE_EXPORTER_LOG_FORMAT": "xml"}, "HOMEPAGE_EXPORTER_LOG_FORMAT"),
        ({"HOMEPAGE_EXPORTER_DATABASE_URL": "mysql://x"}, "HOMEPAGE_EXPORTER_DATABASE_URL"),
        ({"HOMEPAGE_EXPORTER_DATABASE_PASSWORD_FILE": "/nonexistent/pw"}, "cannot read"),
    ],
    ids=["not-int", "zero-pool", "listen", "log-format", "url-scheme", "password-file"],
)
def test_bad_settings_exit_2_naming_the_variable(env: dict[str, str], expected: str) -> None:
    result = cli("check", env=env)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"HOMEPAGE_EXPORTER_DATABASE_URL": "mysql://x"},
            "setting HOMEPAGE_EXPORTER_DATABASE_URL: expected a URL like",
        ),
        (
            {"DATABASE_URL": "postgresql://u:p@ss@db.example:5432/postgres"},
            "the password contains '@': percent-encode it (@ %40",
        ),
        (
            {"DATABASE_URL": "postgresql://u:pa/ss@db.example:5432/postgres"},
            "the port is not a number; if the password contains / # or ?, percent-encode it",
        ),
    ],
    ids=["no-doubled-prefix", "unescaped-at", "unescaped-slash"],
)
def test_first_hour_url_mistakes_say_what_to_do(env: dict[str, str], expected: str) -> None:
    """Once: "HOMEPAGE_EXPORTER_HOMEPAGE_EXPORTER_DATABASE_URL", and "Name or service not
    known" for an @ in the password (after a connect attempt), a fragment of it for a /."""
    result = cli("check", env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert expected in result.stderr
    assert "HOMEPAGE_EXPORTER_HOMEPAGE_EXPORTER" not in result.stderr
    assert "ss@db" not in result.stderr
    assert "pa/" not in result.stderr


def test_an_empty_password_file_setting_is_unset(tmp_path: Path) -> None:
    """`HOMEPAGE_EXPORTER_DATABASE_PASSWORD_FILE=` once said "cannot read .": empty is unset."""
    queries = write_queries(tmp_path / "q.yaml", ONE)
    env = {
        "HOMEPAGE_EXPORTER_DATABASE_PASSWORD_FILE": "",
        "HOMEPAGE_EXPORTER_TARGETS_FILE": "",
        "HOMEPAGE_EXPORTER_QUERIES_FILE": str(queries),
    }
    result = cli("check", env=env)
    assert result.returncode == 0, result.stderr
    assert "cannot read ." not in result.stderr


def test_flags_override_environment(tmp_path: Path) -> None:
    good = write_queries(tmp_path / "good.yaml", ONE)
    result = cli(
        "check",
        "--pool-size",
        "3",
        env={"HOMEPAGE_EXPORTER_POOL_SIZE": "lots", "HOMEPAGE_EXPORTER_QUERIES_FILE": str(good)},
    )
    assert result.returncode == 0, result.stderr


def test_env_file_and_plain_database_url_are_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("HOMEPAGE_EXPORTER_POOL_SIZE=nope\n")
    result = cli("check", cwd=tmp_path)
    assert result.returncode == 2
    assert "HOMEPAGE_EXPORTER_POOL_SIZE" in result.stderr
    result = cli("check", env={"DATABASE_URL": "ftp://nope"})
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr


def test_a_url_password_never_reaches_the_error(tmp_path: Path) -> None:
    bad = write_queries(tmp_path / "q.yaml", ONE.replace("30s", "x"))
    url = "postgresql://u:Sup3rSecretPw@127.0.0.1:1/db"
    result = cli("check", "--queries-file", str(bad), env={"DATABASE_URL": url})
    assert "Sup3rSecretPw" not in result.stderr + result.stdout


def test_once_prints_the_exposition(pg: Cluster, tmp_path: Path) -> None:
    queries = write_queries(tmp_path / "q.yaml", ONE)
    result = cli(
        "once",
        env={"DATABASE_URL": exporter_dsn(pg), "HOMEPAGE_EXPORTER_QUERIES_FILE": str(queries)},
    )
    assert result.returncode == 0, result.stderr
    assert "test_one 1.0" in result.stdout
    assert 'homepage_exporter_query_up{query="one"} 1.0' in result.stdout


def test_once_exits_1_when_a_query_fails(pg: Cluster, tmp_path: Path) -> None:
    queries = write_queries(
        tmp_path / "q.yaml",
        ONE
        + ONE.replace("name: one", "name: two")
        .replace("SELECT 1 AS v", "SELECT nope AS v")
        .replace("test_one", "test_two"),
    )
    result = cli(
        "once",
        env={"DATABASE_URL": exporter_dsn(pg), "HOMEPAGE_EXPORTER_QUERIES_FILE": str(queries)},
    )
    assert result.returncode == 1
    assert "test_one 1.0" in result.stdout
    assert 'column \\"nope\\" does not exist' in result.stderr or "nope" in result.stderr


def test_check_connect_reports_each_query(pg: Cluster, tmp_path: Path) -> None:
    # A write the role is allowed to make, so only the read-only transaction can refuse it.
    pg.psql(
        "CREATE SEQUENCE IF NOT EXISTS public.cli_probe;"
        " GRANT USAGE, UPDATE ON SEQUENCE public.cli_probe TO homepage_exporter",
        database="cms",
    )
    queries = write_queries(
        tmp_path / "q.yaml",
        ONE
        + ONE.replace("name: one", "name: writes")
        .replace("SELECT 1 AS v", "SELECT nextval('public.cli_probe') AS v")
        .replace("test_one", "test_writes"),
    )
    result = cli(
        "check",
        "--connect",
        env={"DATABASE_URL": exporter_dsn(pg), "HOMEPAGE_EXPORTER_QUERIES_FILE": str(queries)},
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("ok    one") and "rows=1" in line for line in lines)
    writes = next(line for line in lines if line.startswith("FAIL  writes"))
    assert "sql: refused by the read-only transaction" in writes
    assert lines[-1] == "1 ok, 1 failed"


@pytest.mark.slow
def test_no_output_of_a_failing_run_contains_the_password(pg: Cluster, tmp_path: Path) -> None:
    """Every command, failing against a server that rejects the password: scan all it prints."""
    secret = "Pa55-word-that-must-not-leak"
    password_file = tmp_path / "password"
    password_file.write_text(secret + "\n")
    queries = write_queries(tmp_path / "q.yaml", ONE)
    base = {"HOMEPAGE_EXPORTER_QUERIES_FILE": str(queries), "HOMEPAGE_EXPORTER_LOG_LEVEL": "debug"}
    in_url = {**base, "DATABASE_URL": pg.url("homepage_exporter", secret, "cms")}
    in_file = {
        **base,
        "DATABASE_URL": pg.url("homepage_exporter", None, "cms"),
        "HOMEPAGE_EXPORTER_DATABASE_PASSWORD_FILE": str(password_file),
    }
    seen = []
    for env in (in_url, in_file):
        for args in (("check", "--connect"), ("once",), ("check",)):
            result = cli(*args, env=env)
            seen.append(result.stdout + result.stderr)
            if args[0] == "once":
                assert result.returncode == 1
                assert "password authentication failed" in result.stderr
    everything = "\n".join(seen)
    assert secret not in everything
    assert "Traceback" not in everything


def test_settings_repr_hides_the_url_password() -> None:
    from exporter.settings import load_settings

    settings = load_settings({"database_url": "postgresql://u:Hidden-pw1@h/db"})
    assert "Hidden-pw1" not in repr(settings)
    assert "Hidden-pw1" not in str(settings)


@pytest.mark.slow
def test_no_output_names_a_password_from_a_targets_file(tmp_path: Path) -> None:
    """Passwords in a targets file's URLs (and password files) are masked like DATABASE_URL's:
    every target unreachable, every command, the logs at debug, and the served pages."""
    from exporter.demo.cluster import free_port
    from tests.harness import Exporter, wait_for

    closed = free_port()  # nothing listens there
    secrets = {
        "eu": "Eu-secret-7f3c1",
        "us": "Us-secret-9c1d2",
        "apac": "Apac-secret-2d8e3",
        "latam": "Latam-secret-5b6a4",
    }
    (tmp_path / "latam-password").write_text(secrets["latam"] + "\n")
    (tmp_path / "targets.yaml").write_text(f"""
targets:
  - name: eu
    database_url: postgresql://homepage_exporter:{secrets["eu"]}@127.0.0.1:{closed}/cms
  - name: us
    database_url: postgresql://homepage_exporter:{secrets["us"]}@no-such-host.invalid:5432/cms
  - name: apac
    database_url: postgresql://homepage_exporter@127.0.0.1:{closed}/cms?password={secrets["apac"]}
  - name: latam
    database_url: postgresql://homepage_exporter@[::1]:{closed}/cms
    database_password_file: {tmp_path / "latam-password"}
""")
    queries = write_queries(tmp_path / "q.yaml", ONE)
    env = {
        "HOMEPAGE_EXPORTER_TARGETS_FILE": str(tmp_path / "targets.yaml"),
        "HOMEPAGE_EXPORTER_QUERIES_FILE": str(queries),
        "HOMEPAGE_EXPORTER_LOG_LEVEL": "debug",
        "HOMEPAGE_EXPORTER_CONNECT_TIMEOUT": "1s",
        "HOMEPAGE_EXPORTER_PING_INTERVAL": "1s",
    }
    seen = []
    for args in (("check", "--connect"), *(("once", "--target", name) for name in secrets)):
        result = cli(*args, env=env)
        assert result.returncode == 1, result.stderr
        seen.append(result.stdout + result.stderr)
    assert "connecting to 127.0.0.1" in "\n".join(seen)  # the failures were reported
    exporter = Exporter(env)
    try:
        exporter.wait_healthy()
        wait_for(lambda: "database_unreachable" in exporter.logs, 10, "unreachable logged")
        for path in ("/metrics", *(f"/probe?target={name}" for name in secrets)):
            seen.append(exporter.get(path)[2].decode())
    finally:
        exporter.stop()
        seen.append(exporter.logs)
        exporter.close()
    everything = "\n".join(seen)
    for name, secret in secrets.items():
        assert secret not in everything, name
    assert "Traceback" not in everything


def test_check_connect_with_a_wrong_password_says_it_once(pg: Cluster, tmp_path: Path) -> None:
    """Once: the same authentication error for each of 20 queries. Now: one line, exit 1."""
    result = cli(
        "check",
        "--connect",
        env={"DATABASE_URL": exporter_dsn(pg, password="wrong-Password-1")},
    )
    assert result.returncode == 1
    assert result.stdout.count("password authentication failed") == 1
    assert result.stdout.splitlines()[-1].startswith("FAIL  cannot connect:")
    assert "wrong-Password-1" not in result.stdout + result.stderr


def test_nothing_listening_at_the_default_says_how_to_point_elsewhere(tmp_path: Path) -> None:
    """Once: "Multiple exceptions: [Errno 111] ..." for each query. Now: what it means and the
    setting that fixes it."""
    from exporter.demo.cluster import free_port

    closed = free_port()
    # No DATABASE_URL: the default, localhost:5432, where the suite runs no server.
    result = cli("check", "--connect")
    explicit = cli(
        "check", "--connect", env={"DATABASE_URL": f"postgresql://127.0.0.1:{closed}/postgres"}
    )
    assert result.returncode == 1
    assert explicit.returncode == 1
    assert explicit.stdout.count("\n") == 2
    assert "connection refused: nothing listens there" in explicit.stdout
    assert f"127.0.0.1:{closed}" in explicit.stdout
    assert "Multiple exceptions" not in result.stdout + explicit.stdout
    assert "set DATABASE_URL or --database-url" in result.stdout
    assert "set DATABASE_URL" not in explicit.stdout


def test_a_misspelt_setting_is_warned_of_with_the_name_meant(tmp_path: Path) -> None:
    """Once: HOMEPAGE_EXPORTER_LOCALS=de (or in .env) was ignored without a word."""
    (tmp_path / ".env").write_text("HOMEPAGE_EXPORTER_POOL_SIZ=3\n")
    result = cli("check", env={"HOMEPAGE_EXPORTER_LOCALS": "de"}, cwd=tmp_path)
    assert result.returncode == 0
    assert "HOMEPAGE_EXPORTER_LOCALS (did you mean HOMEPAGE_EXPORTER_LOCALES?)" in result.stderr
    assert "HOMEPAGE_EXPORTER_POOL_SIZ (did you mean HOMEPAGE_EXPORTER_POOL_SIZE?)" in result.stderr


def test_every_setting_has_a_flag_that_works() -> None:
    """Once: --connect-timeout, --ping-interval and --max-series-per-query did not exist, though
    the README says every setting has a flag. Flags are generated from the settings now."""
    from exporter.settings import Settings

    helped = cli("run", "--help").stdout
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in helped, name
    result = cli("check", "--connect-timeout", "0", env={})
    assert result.returncode == 2
    assert "setting flag --connect-timeout:" in result.stderr


def test_an_edited_queries_yaml_here_is_not_silently_ignored(tmp_path: Path) -> None:
    """Once: editing the cloned queries.yaml changed nothing (the installed copy ran) and
    nothing said so."""
    from exporter.settings import SHIPPED_QUERIES

    (tmp_path / "queries.yaml").write_text(SHIPPED_QUERIES.read_text() + "\n# edited\n")
    result = cli("check", cwd=tmp_path)
    assert result.returncode == 0
    assert "local_queries_file_not_used" in result.stderr
    assert "--queries-file queries.yaml" in result.stderr
    chosen = cli("check", "--queries-file", "queries.yaml", cwd=tmp_path)
    assert "local_queries_file_not_used" not in chosen.stderr
