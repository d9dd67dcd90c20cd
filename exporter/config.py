"""Loading queries.yaml: parse, validate, cross-check, and freeze into values the daemon trusts.

Every error is a `ConfigError` whose message names the file, the line where YAML knows it,
and the key path (`queries.publish_lag.interval`), then says what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from exporter.contract import Need
from exporter.durations import format_duration
from exporter.errors import ConfigError
from exporter.schema import MetricType, Param, QueriesFile, QuerySpec
from exporter.yamlfile import Loc, read_yaml

DEFAULT_STALE_INTERVALS = 3
SELF_PREFIX = "homepage_exporter_"
# Names the process and the exporter export themselves: a query must not shadow them.
RESERVED_PREFIXES = (SELF_PREFIX, "process_", "python_")
# Labels Prometheus attaches itself or that carry meaning in the exposition format.
RESERVED_LABELS = frozenset({"job", "instance", "le", "quantile"})


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
    needs: tuple[Need, ...]  # checked against the catalog before each run (contract.py)
    interval: float
    timeout: float
    stale_after: float
    min_server_version: int | None
    requires: tuple[str, ...]
    params: tuple[Param, ...]
    enabled: bool
    max_series: int | None
    metrics: tuple[Metric, ...]
    each: Param | None = None  # run once per value of this list parameter (scheduler.run_query)

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


# --- cross-checks --------------------------------------------------------------------------------


def _cross_check(spec: QueriesFile) -> Iterator[tuple[Loc, str]]:
    """What no single field can know: names across queries, labels against values, timing."""
    query_at: dict[str, int] = {}
    metric_at: dict[str, tuple[str, Loc]] = {}
    for qi, query in enumerate(spec.queries):
        qpath: Loc = ("queries", qi)
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
        if query.each is not None and query.each not in query.params:
            yield (*qpath, "each"), f"{str(query.each)!r} is not one of the query's params"
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
    name: str, kind: MetricType, value: str, labels: tuple[str, ...], mpath: Loc
) -> Iterator[tuple[Loc, str]]:
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
        each=spec.each,
        enabled=spec.enabled,
        max_series=spec.max_series,
        metrics=tuple(
            Metric(m.name, m.type, m.help.strip(), m.value, m.labels) for m in spec.metrics
        ),
    )


def load_config(path: Path | str) -> Config:
    """Read, validate and freeze a queries file, or raise `ConfigError` naming the first problem."""
    path = Path(os.fspath(path))
    doc = read_yaml(path)
    if not isinstance(doc.data, dict):
        raise ConfigError.at(path, "expected a mapping with 'version' and 'queries' at the top")
    version = doc.data.get("version")
    if version != 1:
        message = (
            "required key is missing"
            if version is None
            else (f"unsupported schema version {version!r}, expected 1")
        )
        raise doc.error(("version",), message)
    spec = doc.validate(QueriesFile, show_input=True)
    problems = list(_cross_check(spec))
    if problems:
        loc, message = problems[0]
        raise doc.error(loc, message)
    return Config(path=path, queries=tuple(_freeze(q) for q in spec.queries))
