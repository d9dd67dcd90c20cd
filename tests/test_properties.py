"""Property tests: whatever a user types into queries.yaml or the settings, the answer is a valid
config or one line naming the place, exit code 2, and never a traceback."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.cli import main
from exporter.config import Config, load_config
from exporter.errors import ConfigError
from exporter.settings import ENV_PREFIX, Settings, load_settings
from exporter.webconfig import WebConfigFile

KEYS = [
    "version",
    "queries",
    "name",
    "help",
    "sql",
    "interval",
    "timeout",
    "stale_after",
    "min_server_version",
    "requires",
    "params",
    "enabled",
    "max_series",
    "metrics",
    "type",
    "value",
    "labels",
    "needs",
]
GOOD_QUERY: dict[str, Any] = {
    "name": "q",
    "help": "h",
    "sql": "SELECT 1 AS v",
    "interval": "30s",
    "timeout": "5s",
    "metrics": [{"name": "homepage_q", "help": "h", "value": "v", "labels": []}],
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "30s",
            "0s",
            "-5m",
            "1h30m",
            "soon",
            "gauge",
            "counter",
            "homepage_x",
            "locales",
            "__x",
            "job",
            "1e400",
            "",
            " ",
        ]
    ),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=12))
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=6)
    ),
    max_leaves=25,
)


@st.composite
def mutated_files(draw: st.DrawFn) -> Any:
    """A valid file with one part replaced by something arbitrary."""
    query = dict(GOOD_QUERY)
    metric = dict(GOOD_QUERY["metrics"][0])
    target = draw(st.sampled_from(["top", "query", "metric"]))
    key = draw(keys)
    value = draw(trees)
    if target == "metric":
        metric[key] = value
    elif target == "query":
        query[key] = value
    query["metrics"] = [metric]
    doc: dict[str, Any] = {"version": 1, "queries": [query]}
    if target == "top":
        doc[key] = value
    return doc


@contextlib.contextmanager
def written(text: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "queries.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        yield path


def assert_one_line_about(path: Path, error: ConfigError) -> None:
    message = str(error)
    assert "\n" not in message, message
    assert message.startswith(str(path)), message
    assert "Traceback" not in message


def load_or_error(text: str) -> None:
    with written(text) as path:
        try:
            assert isinstance(load_config(path), Config)
        except ConfigError as error:
            assert_one_line_about(path, error)


PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROFILE
@given(mutated_files())
def test_mutated_files_load_or_name_the_key(doc: Any) -> None:
    load_or_error(yaml.safe_dump(doc, allow_unicode=True))


@PROFILE
@given(trees)
def test_arbitrary_documents_load_or_fail_in_one_line(doc: Any) -> None:
    load_or_error(yaml.safe_dump(doc, allow_unicode=True))


@PROFILE
@given(st.text(max_size=300))
def test_arbitrary_text_loads_or_fails_in_one_line(text: str) -> None:
    load_or_error(text)


@pytest.mark.parametrize(
    "text",
    [
        "!!python/object/apply:os.system ['echo pwned']",
        "a: !!binary AAAA\n",
        "&a [*a]",
        "[" * 5000 + "]" * 5000,
        "{" * 3000,
        "version: 1\nqueries:\n  - !!set {a, b}\n",
        "\t\x00\x1b[31m",
        "version: 1\nqueries: " + "x" * 100_000,
    ],
    ids=["python-tag", "binary", "alias", "deep-list", "open-braces", "set", "controls", "huge"],
)
def test_hostile_yaml_is_refused_in_one_line(text: str) -> None:
    load_or_error(text)


def _reads_a_file(annotation: object) -> bool:
    return annotation is Path or Path in get_args(annotation)


# Every setting, from the model itself: a new one is fuzzed the day it is added.
SETTING_NAMES = sorted(name.upper() for name in Settings.model_fields)
FILE_SETTINGS = frozenset(
    name.upper() for name, f in Settings.model_fields.items() if _reads_a_file(f.annotation)
)


@dataclass(frozen=True)
class Content:
    """What a setting that names a file points at: a file with this text, written per example."""

    text: str


env_values = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\x00", codec="utf-8"), max_size=40),
    st.sampled_from(
        [
            "0",
            "-1",
            "99999999999999999999",
            "1e3",
            "true",
            ":",
            "[::1]:1",
            "postgresql://u:p@h/db",
            "mysql://x",
            "5s",
            "never",
            "/nonexistent",
            "en,,de",
            ",",
        ]
    ),
)


# A file setting's file holds arbitrary text, or YAML with the keys the files it reads know.
FILE_KEYS = sorted(
    {*KEYS, *Settings.model_fields, *WebConfigFile.model_fields, "targets", "cert_file"}
)
file_trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(FILE_KEYS), children, max_size=6),
    ),
    max_leaves=25,
)
contents = st.builds(
    Content,
    st.one_of(
        st.text(max_size=200),
        file_trees.map(lambda doc: yaml.safe_dump(doc, allow_unicode=True)),
    ),
)


@st.composite
def setting_values(draw: st.DrawFn, max_size: int) -> dict[str, str | Content]:
    """Some settings, each given an arbitrary value; a file setting, often a file to read."""
    names = draw(
        st.lists(st.sampled_from(SETTING_NAMES), min_size=1, max_size=max_size, unique=True)
    )
    return {
        n: draw(st.one_of(env_values, contents) if n in FILE_SETTINGS else env_values)
        for n in names
    }


def env_of(values: dict[str, str | Content], folder: Path) -> dict[str, str]:
    """The environment for `values`, writing each file's content into `folder`."""
    env = {}
    for name, value in values.items():
        if isinstance(value, Content):
            path = folder / name.lower()
            path.write_text(value.text, encoding="utf-8", errors="surrogatepass")
            env[ENV_PREFIX + name] = str(path)
        else:
            env[ENV_PREFIX + name] = value
    return env


def test_every_setting_that_reads_a_file_is_known() -> None:
    """The file settings found from the types are the ones the exporter reads."""
    assert {
        "DATABASE_PASSWORD_FILE",
        "QUERIES_FILE",
        "WEB_CONFIG_FILE",
        "TARGETS_FILE",
    } <= FILE_SETTINGS


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX) or k == "DATABASE_URL"}
    for key in saved:
        del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        for key in values:
            os.environ.pop(key, None)
        os.environ.update(saved)


@PROFILE
@given(setting_values(max_size=3))
def test_any_settings_load_or_name_the_variable(values: dict[str, str | Content]) -> None:
    with (
        tempfile.TemporaryDirectory() as folder,
        environment(env_of(values, Path(folder))),
        contextlib.chdir(tempfile.gettempdir()),
    ):
        try:
            load_settings()
        except ConfigError as error:
            message = str(error)
            assert "\n" not in message
            assert (
                message.startswith(f"setting {ENV_PREFIX}") or "DATABASE_PASSWORD_FILE" in message
            )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.slow
@given(setting_values(max_size=2))
def test_check_exits_0_or_2_with_one_line(values: dict[str, str | Content]) -> None:
    err = io.StringIO()
    with (
        tempfile.TemporaryDirectory() as folder,
        environment(env_of(values, Path(folder))),
        contextlib.chdir(tempfile.gettempdir()),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        code = main(["check"])
    assert code in (0, 2)
    if code == 2:
        assert err.getvalue().count("\n") == 1, err.getvalue()
        assert "Traceback" not in err.getvalue()
