"""The exporter's own metric families: per query (from snapshots), per target, per process."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import cast

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


def target_families(snapshots: Iterable[Snapshot], *, database_up: bool) -> Iterator[Metric]:
    """One watched database: reachable or not, and how each of its queries fares."""
    yield GaugeMetricFamily(
        PREFIX + "database_up",
        "1 if the last connection attempt to the database succeeded, else 0.",
        value=1.0 if database_up else 0.0,
    )

    def per_query(name: str, help_text: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(PREFIX + name, help_text, labels=["query"])

    up = per_query("query_up", "1 if the query's last run succeeded, 0 if it failed.")
    duration = per_query("query_duration_seconds", "Wall time of the query's last run.")
    success = per_query(
        "query_last_success_timestamp_seconds", "Unix time of the query's last successful run."
    )
    interval = per_query("query_interval_seconds", "How often the query is scheduled to run.")
    stale = per_query(
        "query_stale_after_seconds", "How long a failing query's last values are kept."
    )
    series = per_query("query_series", "Series the query currently exports.")
    skipped = GaugeMetricFamily(
        PREFIX + "query_skipped",
        "1 for a query not run because the server lacks what it requires.",
        labels=["query", "requirement"],
    )
    run_total = CounterMetricFamily(
        PREFIX + "query_runs", "Runs of the query, successful or not.", labels=["query"]
    )
    error_total = CounterMetricFamily(
        PREFIX + "query_errors",
        "Failed runs of the query, by reason.",
        labels=["query", "reason"],
    )
    for snap in snapshots:
        name = snap.query.name
        interval.add_metric([name], snap.query.interval)
        stale.add_metric([name], snap.query.stale_after)
        match snap.status:
            case Skipped(requirement):
                skipped.add_metric([name, str(requirement)], 1.0)
                continue
            case Ok():
                up.add_metric([name], 1.0)
            case Failing():
                up.add_metric([name], 0.0)
            case NeverRun():
                pass
        series.add_metric([name], float(snap.values.series))
        if snap.duration is not None:
            duration.add_metric([name], snap.duration)
        if snap.last_success is not None:
            success.add_metric([name], snap.last_success.wall)
        run_total.add_metric([name], float(snap.runs))
        for reason in ErrorReason:
            error_total.add_metric([name, reason.value], float(snap.errors.get(reason, 0)))
    yield from (up, duration, success, interval, stale, series, skipped, run_total, error_total)


# prometheus-client's own number format (Go's), typed.
_number = cast(Callable[[float], str], floatToGoString)


def query_samples(snap: Snapshot) -> list[bytes]:
    """One query's sample lines in each per-query family of `target_families`, in its order
    (database_up, the target's, excluded); the same bytes in the text format and OpenMetrics.

    What prometheus-client would write for these families, written directly: each run
    re-encodes its query's lines, and through prometheus-client (building families, then
    validating and escaping every name on every call) that was a sixth of the CPU of a
    process watching 500 databases (py-spy, bench/fleet.py). The names here are fixed and
    valid; label values are escaped as both formats escape them, and numbers are formatted
    by prometheus-client's own floatToGoString. tests/test_transition.py holds the bytes
    equal to prometheus-client's encoding, in every state a query can be in.
    """
    name = _label(snap.query.name)
    one = f'{{query="{name}"}} '
    lines = [b""] * 9
    lines[3] = f"{PREFIX}query_interval_seconds{one}{_number(snap.query.interval)}\n".encode()
    lines[4] = (
        f"{PREFIX}query_stale_after_seconds{one}{_number(snap.query.stale_after)}\n"
    ).encode()
    match snap.status:
        case Skipped(requirement):
            lines[6] = (
                f'{PREFIX}query_skipped{{query="{name}",requirement="{_label(str(requirement))}"}}'
                " 1.0\n"
            ).encode()
            return lines
        case Ok():
            lines[0] = f"{PREFIX}query_up{one}1.0\n".encode()
        case Failing():
            lines[0] = f"{PREFIX}query_up{one}0.0\n".encode()
        case NeverRun():
            pass
    lines[5] = f"{PREFIX}query_series{one}{_number(snap.values.series)}\n".encode()
    if snap.duration is not None:
        lines[1] = f"{PREFIX}query_duration_seconds{one}{_number(snap.duration)}\n".encode()
    if snap.last_success is not None:
        lines[2] = (
            f"{PREFIX}query_last_success_timestamp_seconds{one}{_number(snap.last_success.wall)}\n"
        ).encode()
    lines[7] = f"{PREFIX}query_runs_total{one}{_number(snap.runs)}\n".encode()
    lines[8] = "".join(
        f'{PREFIX}query_errors_total{{query="{name}",reason="{reason.value}"}}'
        f" {_number(snap.errors.get(reason, 0))}\n"
        for reason in ErrorReason
    ).encode()
    return lines


def _label(value: str) -> str:
    """A label value escaped as the text format and OpenMetrics both escape it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
