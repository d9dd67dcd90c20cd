"""Loading queries.yaml: parse, validate, cross-check, and freeze into values the daemon trusts.

Every error is a `ConfigError` whose message names the file, the line where YAML knows it,
and the key path (`queries.publish_lag.interval`), then says what was expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from exporter.durations import format_duration
from exporter.errors import ConfigError
from exporter.schema import MetricType, Param, QueriesFile, QuerySpec

MAX_FILE_BYTES = 1 << 20
DEFAULT_STALE_INTERVALS = 3
SELF_PREFIX = "homepage_exporter_"
# Names the process and the exporter export themselves: a query must not shadow them.
RESERVED_PREFIXES = (SELF_PREFIX, "process_", "python_")
# Labels Prometheus attaches itself or that carry meaning in the exposition format.
RESERVED_LABELS = frozenset({"job", "instance", "le", "quantile"})

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family a query yields: which column is the value, which are labels."""

    name: str
    type: MetricType
    help: str
    value: str
    labels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Query:
    """One validated query, ready to schedule."""

    name: str
    help: str
    sql: str
    needs: tuple[str, ...]
    interval: float
    timeout: float
    stale_after: float
    min_server_version: int | None
    requires: tuple[str, ...]
    params: tuple[Param, ...]
    enabled: bool
    max_series: int | None
    metrics: tuple[Metric, ...]

    def series_cap(self, default: int) -> int:
        """The most series a run may yield: the query's own max_series, else `default`."""
        return self.max_series or default

    @property
    def columns(self) -> frozenset[str]:
        """Every column the query's metrics read."""
        return frozenset(c for m in self.metrics for c in (m.value, *m.labels))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated queries file."""

    path: Path
    queries: tuple[Query, ...]

    @property
    def enabled(self) -> tuple[Query, ...]:
        return tuple(q for q in self.queries if q.enabled)

    def without_queries(self) -> Config:
        """The same file with no queries: what the exporter-level page of a multi-target
        process reports on."""
        return Config(path=self.path, queries=())


# --- YAML with line numbers -------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (no billion laughs) and duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError(
                None, None, "aliases (*name) are not supported in queries files", event.start_mark
            )
        return super().compose_node(parent, index)


def _lines(node: yaml.Node, path: Path_, out: dict[Path_, int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: {_dotted((*path, key))}: "
                    f"duplicate key (first at line {seen[key]})"
                )
            seen[key] = key_node.start_mark.line + 1
            _lines(value_node, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, (*path, index), out)


def _read_yaml(path: Path) -> tuple[object, dict[Path_, int]]:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: file is {size} bytes, the limit is {MAX_FILE_BYTES}")
        text = path.read_text(encoding="utf-8")
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            lines: dict[Path_, int] = {}
            if node is not None:
                _lines(node, (), lines)
                data = loader.construct_document(node)
            else:
                data = None
        finally:
            loader.dispose()
    except ConfigError as exc:
        raise ConfigError(f"{path}:{exc}".replace(":line ", ":", 1)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{path}: invalid YAML: {type(exc).__name__}") from None
    return data, lines


# --- error formatting ----------------------------------------------------------------------------


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _dotted(path: Sequence[str | int], data: object = None) -> str:
    """`queries.publish_lag.interval`: indices become the query or metric name where known."""
    parts: list[str] = []
    node = data
    for part in path:
        child = None
        if isinstance(part, int):
            if isinstance(node, list) and 0 <= part < len(node):
                child = node[part]
            name = child.get("name") if isinstance(child, dict) else None
            parts.append(name if isinstance(name, str) and name else f"[{part}]")
        else:
            child = node.get(part) if isinstance(node, dict) else None
            parts.append(part if _PLAIN_KEY.fullmatch(part) else repr(part))
        node = child
    return ".".join(parts).replace(".[", "[") or "(top level)"


def _nearest_line(path: Path_, lines: Mapping[Path_, int]) -> int | None:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def _describe(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    given = error.get("input")
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "literal_error" and error["loc"] == ("version",):
        return f"unsupported schema version {given!r}, expected 1"
    message = str(error["msg"]).removeprefix("Value error, ")
    shown = repr(given)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if isinstance(given, dict | list):
        return message
    return f"{message}, got {shown}" if "got" not in message else message


def _place(path: Path, loc: Path_, data: object, lines: Mapping[Path_, int]) -> str:
    line = _nearest_line(loc, lines)
    where = f"{path}:{line}" if line else str(path)
    return f"{where}: {_dotted(loc, data)}"


# --- cross-checks --------------------------------------------------------------------------------


def _cross_check(spec: QueriesFile) -> Iterator[tuple[Path_, str]]:
    """What no single field can know: names across queries, labels against values, timing."""
    query_at: dict[str, int] = {}
    metric_at: dict[str, tuple[str, Path_]] = {}
    for qi, query in enumerate(spec.queries):
        qpath: Path_ = ("queries", qi)
        if query.name in query_at:
            yield (*qpath, "name"), f"query name {query.name!r} is used twice"
        query_at[query.name] = qi
        if query.interval < query.timeout:
            yield (
                (*qpath, "interval"),
                (
                    f"interval {format_duration(query.interval)} is shorter than timeout "
                    f"{format_duration(query.timeout)}; a run could overlap the next"
                ),
            )
        if query.stale_after is not None and query.stale_after < query.interval:
            yield (
                (*qpath, "stale_after"),
                (
                    f"stale_after {format_duration(query.stale_after)} is shorter than interval "
                    f"{format_duration(query.interval)}; values would vanish between runs"
                ),
            )
        if len(set(query.params)) != len(query.params):
            yield (*qpath, "params"), "a parameter is listed twice"
        for mi, metric in enumerate(query.metrics):
            mpath = (*qpath, "metrics", mi)
            yield from _check_metric(metric.name, metric.type, metric.value, metric.labels, mpath)
            # A counter `x_total` is family `x` in OpenMetrics: both spellings must be unique.
            family = metric.name.removesuffix("_total")
            for key in {metric.name, family}:
                if key in metric_at:
                    other, _ = metric_at[key]
                    where = "this query" if other == query.name else f"query {other!r}"
                    yield (*mpath, "name"), f"metric {metric.name!r} is also declared by {where}"
                    break
            metric_at[metric.name] = metric_at[family] = (query.name, mpath)


def _check_metric(
    name: str, kind: MetricType, value: str, labels: tuple[str, ...], mpath: Path_
) -> Iterator[tuple[Path_, str]]:
    reserved = next((p for p in RESERVED_PREFIXES if name.startswith(p)), None)
    if reserved is not None:
        yield (
            (*mpath, "name"),
            (f"names starting with {reserved!r} are reserved for the exporter's own metrics"),
        )
    if kind is MetricType.COUNTER and not name.endswith("_total"):
        yield (*mpath, "name"), f"a counter's name must end in _total, got {name!r}"
    if kind is MetricType.GAUGE and name.endswith("_total"):
        yield (*mpath, "name"), f"_total is for counters; gauge {name!r} should drop it"
    seen: set[str] = set()
    for li, label in enumerate(labels):
        if label in seen:
            yield (*mpath, "labels", li), f"label {label!r} is listed twice"
        if label in RESERVED_LABELS:
            yield (*mpath, "labels", li), f"label {label!r} collides with a reserved label"
        if label == value:
            yield (*mpath, "labels", li), f"column {label!r} is both the value and a label"
        seen.add(label)


# --- public entry point --------------------------------------------------------------------------


def _freeze(spec: QuerySpec) -> Query:
    return Query(
        name=spec.name,
        help=spec.help.strip(),
        sql=spec.sql.strip(),
        needs=spec.needs,
        interval=spec.interval,
        timeout=spec.timeout,
        stale_after=spec.stale_after or spec.interval * DEFAULT_STALE_INTERVALS,
        min_server_version=spec.min_server_version,
        requires=spec.requires,
        params=spec.params,
        enabled=spec.enabled,
        max_series=spec.max_series,
        metrics=tuple(
            Metric(m.name, m.type, m.help.strip(), m.value, m.labels) for m in spec.metrics
        ),
    )


def load_config(path: Path | str) -> Config:
    """Read, validate and freeze a queries file, or raise `ConfigError` naming the first problem."""
    path = Path(os.fspath(path))
    data, lines = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with 'version' and 'queries' at the top")
    try:
        spec = QueriesFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        raise ConfigError(f"{_place(path, loc, data, lines)}: {_describe(first)}") from None
    problems = list(_cross_check(spec))
    if problems:
        loc, message = problems[0]
        raise ConfigError(f"{_place(path, loc, data, lines)}: {message}")
    return Config(path=path, queries=tuple(_freeze(q) for q in spec.queries))
