"""Log lines cannot be forged: every value escaped, one event one line, long errors shortened.

The hostile text comes from a real PostgreSQL (a function whose RAISE EXCEPTION message carries
CR, LF, ESC sequences, BEL, DEL, a C1 control and a whole fake logfmt line) through the real
exporter's `once`; the formatter is also fed every class of control character directly.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.demo.cluster import Cluster
from exporter.logs import MAX_VALUE_CHARS, LineFormatter, Redactor
from exporter.settings import LogFormat
from tests.conftest import exporter_dsn
from tests.harness import exporter_env, write_queries

FORGED = "ts=2030-01-01T00:00:00.000Z level=info event=all_clear"
# What the database says: a carriage return (a terminal rewrites the line from its start),
# an erase-screen and a set-title sequence, a new line that starts with a forged event.
HOSTILE = f"boom\r\x1b[2J\x1b]0;pwned\x07\n{FORGED}\x7f\u009b31m"
HOSTILE_SQL = (
    r"E'boom\r\x1b[2J\x1b]0;pwned\x07\n" + FORGED + r"\x7f\u009b31m'"
)  # the same bytes, as a PostgreSQL escape string
QUERIES = """\
  - name: hostile
    help: Fails with a hostile error message.
    sql: SELECT hostile_error() AS v
    interval: 30s
    timeout: 5s
    metrics:
      - {name: test_hostile, help: Never set., value: v}
  - name: verbose
    help: Fails with a very long error message.
    sql: SELECT verbose_error() AS v
    interval: 30s
    timeout: 5s
    metrics:
      - {name: test_verbose, help: Never set., value: v}
"""
# Every character a terminal or a log viewer may act on, one class each.
CONTROLS = {
    "CR": "\r",
    "LF": "\n",
    "TAB": "\t",
    "NUL": "\x00",
    "ESC": "\x1b",
    "BEL": "\x07",
    "DEL": "\x7f",
    "C1 NEL": "\x85",
    "C1 CSI": "\x9b",
    "line separator": "\u2028",
    "right-to-left override": "\u202e",
    "lone surrogate": "\udcff",
    "tag character": "\U000e0001",
}
# logfmt as go-logfmt reads it: key=bare or key="JSON string", separated by single spaces.
LOGFMT_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|[^\s="\\]+)(?: |$)')


def parse_logfmt(line: str) -> dict[str, str]:
    """The fields of one logfmt line; fails if any part of it is not a key=value pair."""
    fields: dict[str, str] = {}
    position = 0
    while position < len(line):
        match = LOGFMT_PAIR.match(line, position)
        assert match is not None, f"not logfmt at {position}: {line[position:]!r}"
        key, value = match.groups()
        assert key not in fields, f"{key} twice in {line!r}"
        fields[key] = json.loads(value) if value.startswith('"') else value
        position = match.end()
    return fields


def parse(line: str, fmt: LogFormat) -> dict[str, object]:
    if fmt is LogFormat.JSON:
        parsed = json.loads(line)
        assert isinstance(parsed, dict)
        return parsed
    return dict(parse_logfmt(line))


def formatted(fmt: LogFormat, **fields: object) -> str:
    record = logging.LogRecord("homepage_exporter", logging.WARNING, __file__, 1, "ev", (), None)
    record.fields = fields
    return LineFormatter(fmt, Redactor(["s3cret"])).format(record)


@pytest.mark.parametrize("fmt", list(LogFormat))
@pytest.mark.parametrize("char", CONTROLS.values(), ids=CONTROLS.keys())
def test_every_control_character_is_escaped_and_read_back(fmt: LogFormat, char: str) -> None:
    value = f'a{char}b "q" \\ {FORGED}'
    line = formatted(fmt, error=value)
    assert line.isprintable(), repr(line)
    fields = parse(line, fmt)
    assert fields["error"] == value
    assert (fields["level"], fields["event"], len(fields)) == ("warning", "ev", 4)


@pytest.mark.parametrize("fmt", list(LogFormat))
def test_printable_text_stays_readable(fmt: LogFormat) -> None:
    line = formatted(fmt, target="shop-eu", locale="日本語", note="crème brûlée")
    assert "日本語" in line
    assert "crème brûlée" in line
    if fmt is LogFormat.LOGFMT:
        assert " target=shop-eu " in line


@pytest.mark.parametrize("fmt", list(LogFormat))
def test_a_long_value_is_shortened_after_its_secrets_are_masked(fmt: LogFormat) -> None:
    # The secret straddles the cut: masked first, it cannot be left half visible.
    value = "x" * (MAX_VALUE_CHARS - 3) + "s3cret" + "y" * 100_000
    error = str(parse(formatted(fmt, error=value), fmt)["error"])
    assert "s3c" not in error
    assert error.startswith("x" * (MAX_VALUE_CHARS - 3) + "[RE")
    assert len(error) < MAX_VALUE_CHARS + 50
    assert error.endswith(f"... ({len(value) - 6 + 10 - MAX_VALUE_CHARS} more characters)")


@pytest.fixture
def hostile_db(pg: Cluster, db: str) -> str:
    """A database whose two functions fail with a hostile and a 100,000-character message."""
    pg.psql(
        "CREATE FUNCTION hostile_error() RETURNS int LANGUAGE plpgsql AS"
        f" $$BEGIN RAISE EXCEPTION '%', {HOSTILE_SQL}; END$$;"
        "CREATE FUNCTION verbose_error() RETURNS int LANGUAGE plpgsql AS"
        " $$BEGIN RAISE EXCEPTION '%', repeat('v', 100000); END$$;",
        database=db,
    )
    return db


@pytest.mark.parametrize("fmt", list(LogFormat))
def test_a_hostile_database_error_is_one_escaped_line(
    pg: Cluster, hostile_db: str, tmp_path: Path, fmt: LogFormat
) -> None:
    queries = write_queries(tmp_path / "queries.yaml", QUERIES)
    env = exporter_env(exporter_dsn(pg, hostile_db), queries, log_format=fmt.value)
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "once"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr  # the two queries failed
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr, stderr
    for name, char in CONTROLS.items():
        if char != "\n":
            assert char not in stderr, f"a raw {name} in the log"
    events = [parse(line, fmt) for line in stderr.splitlines()]
    assert [e["event"] for e in events] == ["query_failed", "query_failed"], stderr
    hostile, verbose = sorted(events, key=lambda e: str(e["query"]))
    # The text is all there, escaped (the database layer folds its line breaks into spaces).
    assert "\x1b[2J\x1b]0;pwned\x07" in str(hostile["error"])
    assert FORGED in str(hostile["error"])
    assert str(verbose["error"]).endswith("more characters)")
    assert len(str(verbose["error"])) < MAX_VALUE_CHARS + 50
