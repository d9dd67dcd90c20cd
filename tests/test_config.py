"""queries.yaml validation: each class of mistake names file, line, key path and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.config import load_config
from exporter.errors import ConfigError
from exporter.settings import SHIPPED_QUERIES

GOOD_QUERY = """\
  - name: lag
    help: Publish lag.
    sql: SELECT 1 AS v, 'en' AS locale
    interval: 30s
    timeout: 5s
    metrics:
      - name: homepage_lag_seconds
        help: Lag.
        value: v
        labels: [locale]
"""


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "queries.yaml"
    path.write_text(body)
    return path


def error_for(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, body))
    return str(caught.value)


def test_a_good_file_loads_into_frozen_values(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "version: 1\nqueries:\n" + GOOD_QUERY))
    (query,) = config.queries
    assert query.interval == 30
    assert query.timeout == 5
    assert query.stale_after == 90  # three intervals by default
    assert query.metrics[0].labels == ("locale",)
    with pytest.raises(AttributeError):
        query.interval = 1  # type: ignore[misc]


def test_the_shipped_queries_file_is_valid() -> None:
    assert load_config(SHIPPED_QUERIES).queries


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            GOOD_QUERY.replace("interval: 30s", "interval: soon"),
            ':6: queries.lag.interval: expected a duration like "30s", "5m" or "1h", got \'soon\'',
        ),
        (GOOD_QUERY.replace("    timeout: 5s\n", ""), ":3: queries.lag.timeout: required key"),
        (GOOD_QUERY + "    colour: blue\n", ":13: queries.lag.colour: unknown key"),
        (
            GOOD_QUERY.replace("interval: 30s", "interval: 2s"),
            ":6: queries.lag.interval: interval 2s is shorter than timeout 5s",
        ),
        (
            GOOD_QUERY.replace("homepage_lag_seconds", "homepage-lag"),
            ":9: queries.lag.metrics.homepage-lag.name: String should match pattern",
        ),
        (
            GOOD_QUERY.replace("labels: [locale]", "labels: [locale, locale]"),
            ":12: queries.lag.metrics.homepage_lag_seconds.labels[1]:"
            " label 'locale' is listed twice",
        ),
        (
            GOOD_QUERY.replace("labels: [locale]", "labels: [instance]"),
            "labels[0]: label 'instance' collides with a reserved label",
        ),
        (
            GOOD_QUERY.replace("labels: [locale]", "labels: [__meta]"),
            "labels[0]: label names starting with __ are reserved",
        ),
        (
            GOOD_QUERY.replace("labels: [locale]", "labels: [v]"),
            "column 'v' is both the value and a label",
        ),
        (
            GOOD_QUERY.replace(
                "        help: Lag.\n", "        help: Lag.\n        type: counter\n"
            ),
            "a counter's name must end in _total, got 'homepage_lag_seconds'",
        ),
        (
            GOOD_QUERY.replace(
                "        help: Lag.\n", "        help: Lag.\n        type: summary\n"
            ),
            "queries.lag.metrics.homepage_lag_seconds.type: Input should be 'gauge' or 'counter'",
        ),
        (
            GOOD_QUERY.replace("homepage_lag_seconds", "homepage_exporter_lag"),
            "names starting with 'homepage_exporter_' are reserved for the exporter's own metrics",
        ),
        (
            GOOD_QUERY + GOOD_QUERY.replace("name: lag", "name: lag2"),
            ":19: queries.lag2.metrics.homepage_lag_seconds.name: metric 'homepage_lag_seconds'"
            " is also declared by query 'lag'",
        ),
        (
            GOOD_QUERY + GOOD_QUERY.replace("homepage_lag_seconds", "homepage_other"),
            ":13: queries.lag.name: query name 'lag' is used twice",
        ),
        (
            GOOD_QUERY.replace("    enabled: true\n", "").replace(
                "    help: Publish lag.\n", "    help: Publish lag.\n    enabled: 'yes'\n"
            ),
            "queries.lag.enabled: Input should be a valid boolean, got 'yes'",
        ),
        (
            GOOD_QUERY.replace(
                "    help: Publish lag.\n", "    help: Publish lag.\n    params: [tz]\n"
            ),
            "queries.lag.params[0]: Input should be 'locales', 'media_storage_quota_bytes', ",
        ),
    ],
    ids=[
        "bad-duration",
        "missing-key",
        "unknown-key",
        "interval-below-timeout",
        "bad-metric-name",
        "duplicate-label",
        "reserved-label",
        "dunder-label",
        "value-as-label",
        "counter-suffix",
        "unknown-type",
        "reserved-prefix",
        "metric-in-two-queries",
        "duplicate-query",
        "string-bool",
        "unknown-param",
    ],
)
def test_each_mistake_names_its_place(tmp_path: Path, body: str, expected: str) -> None:
    message = error_for(tmp_path, "version: 1\nqueries:\n" + body)
    assert message.startswith(str(tmp_path / "queries.yaml"))
    assert expected in message


def test_counter_and_gauge_may_not_share_a_family_name(tmp_path: Path) -> None:
    body = GOOD_QUERY + GOOD_QUERY.replace("name: lag", "name: lag2").replace(
        "name: homepage_lag_seconds\n        help: Lag.",
        "name: homepage_lag_seconds_total\n        help: Lag.\n        type: counter",
    )
    assert "also declared by query 'lag'" in error_for(tmp_path, "version: 1\nqueries:\n" + body)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 2\nqueries: []\n", ":1: version: unsupported schema version 2, expected 1"),
        ("queries: []\n", "version: required key is missing"),
        ("- just\n- a list\n", "expected a mapping with 'version' and 'queries'"),
        ("version: 1\nqueries: [\n", ": invalid YAML:"),
        ("version: 1\nversion: 1\nqueries: []\n", ":2: version: duplicate key (first at line 1)"),
        ("a: &x [1]\nb: *x\n", ":2: invalid YAML: aliases (*name) are not supported"),
        ("", "expected a mapping"),
    ],
    ids=["version", "no-version", "not-a-mapping", "broken-yaml", "dup-key", "alias", "empty"],
)
def test_file_level_mistakes(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error_for(tmp_path, text)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such file"):
        load_config(tmp_path / "nope.yaml")


def test_binary_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "queries.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


@pytest.mark.parametrize(
    ("wrong", "right", "expected"),
    [
        (
            "    interval: 30s\n",
            "    intervall: 30s\n",
            "unknown key 'intervall': did you mean 'interval'?",
        ),
        ("    timeout: 5s\n", "    timeot: 5s\n", "unknown key 'timeot': did you mean 'timeout'?"),
        ("        value: ", "        vaule: ", "unknown key 'vaule': did you mean 'value'?"),
    ],
    ids=["required", "optional", "metric"],
)
def test_a_misspelt_key_is_named_with_the_key_meant(
    tmp_path: Path, wrong: str, right: str, expected: str
) -> None:
    """Once: "interval: required key is missing", with the misspelling never named."""
    path = tmp_path / "q.yaml"
    path.write_text(SHIPPED_QUERIES.read_text().replace(wrong, right, 1))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert expected in str(caught.value)
    assert "required key is missing" not in str(caught.value)
