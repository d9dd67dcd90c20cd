"""The exporter's own metric families: per query (from snapshots), per target, per process."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, cast

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from exporter import __version__
from exporter.config import SELF_PREFIX as PREFIX  # one prefix: the queries file may not use it
from exporter.errors import ErrorReason
from exporter.snapshot import Failing, NeverRun, Ok, Skipped, Snapshot


def exporter_families(*, reload_successful: bool, reload_timestamp: float) -> Iterator[Metric]:
    """The process's own facts: build and queries-file reload state."""
    info = GaugeMetricFamily(
        PREFIX + "build_info", "Exporter build information; always 1.", labels=["version"]
    )
    info.add_metric([__version__], 1.0)
    yield info
    yield GaugeMetricFamily(
        PREFIX + "config_last_reload_successful",
        "1 if the last load of the queries file succeeded, else 0.",
        value=1.0 if reload_successful else 0.0,
    )
    yield GaugeMetricFamily(
        PREFIX + "config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful load of the queries file.",
        value=reload_timestamp,
    )


class _PerQuery(NamedTuple):
    """A family with a sample per query: its name (after the prefix), help, extra label."""

    name: str
    help: str
    counter: bool = False
    label: str | None = None  # a second label, after `query`


# The per-query families, in the order they are exposed. Which samples each query has, in
# which state, is `_query_values`; two encoders read both (target_families, query_samples).
_PER_QUERY = (
    _PerQuery("query_up", "1 if the query's last run succeeded, 0 if it failed."),
    _PerQuery("query_duration_seconds", "Wall time of the query's last run."),
    _PerQuery(
        "query_last_success_timestamp_seconds", "Unix time of the query's last successful run."
    ),
    _PerQuery("query_interval_seconds", "How often the query is scheduled to run."),
    _PerQuery("query_stale_after_seconds", "How long a failing query's last values are kept."),
    _PerQuery("query_series", "Series the query currently exports."),
    _PerQuery(
        "query_skipped",
        "1 for a query not run because the server lacks what it requires.",
        label="requirement",
    ),
    _PerQuery("query_runs", "Runs of the query, successful or not.", counter=True),
    _PerQuery("query_errors", "Failed runs of the query, by reason.", counter=True, label="reason"),
)

# One family's samples for one query: (the second label's value or None, value).
_Samples = list[tuple[str | None, float]]


def _query_values(snap: Snapshot) -> list[_Samples]:
    """One query's samples in each of _PER_QUERY's families, in that order."""
    out: list[_Samples] = [[] for _ in _PER_QUERY]
    up, duration, success, interval, stale, series, skipped, runs, errors = out
    interval.append((None, snap.query.interval))
    stale.append((None, snap.query.stale_after))
    match snap.status:
        case Skipped(requirement):
            skipped.append((str(requirement), 1.0))
            return out
        case Ok():
            up.append((None, 1.0))
        case Failing():
            up.append((None, 0.0))
        case NeverRun():
            pass
    series.append((None, float(snap.values.series)))
    if snap.duration is not None:
        duration.append((None, snap.duration))
    if snap.last_success is not None:
        success.append((None, snap.last_success.wall))
    runs.append((None, float(snap.runs)))
    errors.extend((reason.value, float(snap.errors.get(reason, 0))) for reason in ErrorReason)
    return out


def target_families(snapshots: Iterable[Snapshot], *, database_up: bool) -> Iterator[Metric]:
    """One watched database: reachable or not, and how each of its queries fares."""
    yield GaugeMetricFamily(
        PREFIX + "database_up",
        "1 if the last connection attempt to the database succeeded, else 0.",
        value=1.0 if database_up else 0.0,
    )
    families = [
        (CounterMetricFamily if f.counter else GaugeMetricFamily)(
            PREFIX + f.name, f.help, labels=["query"] if f.label is None else ["query", f.label]
        )
        for f in _PER_QUERY
    ]
    for snap in snapshots:
        for family, samples in zip(families, _query_values(snap), strict=True):
            for label, value in samples:
                labels = [snap.query.name] if label is None else [snap.query.name, label]
                family.add_metric(labels, value)
    yield from families


# prometheus-client's own number format (Go's), typed.
_number = cast(Callable[[float], str], floatToGoString)


def query_samples(snap: Snapshot) -> list[bytes]:
    """One query's sample lines in each of _PER_QUERY's families, in that order; the same
    bytes in the text format and OpenMetrics.

    What prometheus-client writes for `target_families`, written directly: each run
    re-encodes its query's lines, and through prometheus-client (building families, then
    validating and escaping every name on every call) that was a sixth of the CPU of a
    process watching 500 databases (py-spy, bench/fleet.py). The names here are fixed and
    valid; label values are escaped as both formats escape them, and numbers are formatted
    by prometheus-client's own floatToGoString. tests/test_transition.py holds the bytes
    equal to prometheus-client's encoding, in every state a query can be in.
    """
    query = f'query="{_label(snap.query.name)}"'
    lines = []
    for family, samples in zip(_PER_QUERY, _query_values(snap), strict=True):
        name = PREFIX + family.name + ("_total" if family.counter else "")
        lines.append(
            "".join(
                f"{name}{{{query}}} {_number(value)}\n"
                if label is None
                else f'{name}{{{query},{family.label}="{_label(label)}"}} {_number(value)}\n'
                for label, value in samples
            ).encode()
        )
    return lines


def _label(value: str) -> str:
    """A label value escaped as the text format and OpenMetrics both escape it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
