"""Rows to samples: a pure function that decides, once, what every SQL value means to Prometheus.

Values: NULL -> no sample (e.g. a percentage without a quota); booleans -> 1/0; integers, floats
and Decimals -> float (NaN and +/-Inf kept); timestamps -> Unix seconds; intervals -> seconds.
Anything else (text, JSON, a float too large for a double) is an invalid result.
Labels: NULL -> "", booleans -> "true"/"false", everything else -> str().
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from exporter.config import Metric, Query
from exporter.errors import ErrorReason, QueryError


class Sample(NamedTuple):
    """One series of a family: its label values, in the metric's label order, and its value."""

    labels: tuple[str, ...]
    value: float


@dataclass(frozen=True, slots=True, init=False)
class Family:
    """One metric with the samples of one run.

    Kept flat, as one tuple of every sample's label values (the metric's labels at a time)
    and one of their values, and handed out as `Sample`s. A tuple holding only strings or
    floats leaves the garbage collector's lists at the first collection it survives (CPython
    does that for exact tuples, not for a NamedTuple or a dataclass, and a nested tuple only
    one level per collection), and each full collection walks every object still on them while
    the event loop, and every scrape, waits. A target's samples live for an interval: at 300
    targets, as one object each, they were 120,000 of the 410,000 objects each full
    collection walked.
    """

    metric: Metric
    _labels: tuple[str, ...]
    _values: tuple[float, ...]

    def __init__(self, metric: Metric, samples: Iterable[tuple[tuple[str, ...], float]]) -> None:
        width = len(metric.labels)
        labels: list[str] = []
        values: list[float] = []
        for sample_labels, value in samples:
            if len(sample_labels) != width:
                raise ValueError(f"{metric.name}: {sample_labels!r} is not one value per label")
            labels.extend(sample_labels)
            values.append(value)
        object.__setattr__(self, "metric", metric)
        object.__setattr__(self, "_labels", tuple(labels))
        object.__setattr__(self, "_values", tuple(values))

    @property
    def samples(self) -> tuple[Sample, ...]:
        width = len(self.metric.labels)
        return tuple(
            Sample(self._labels[i * width : (i + 1) * width], value)
            for i, value in enumerate(self._values)
        )

    @property
    def series(self) -> int:
        return len(self._values)


def invalid(message: str) -> QueryError:
    return QueryError(ErrorReason.INVALID_RESULT, message)


def to_value(raw: object, column: str) -> float | None:
    """A SQL value as a sample value, None for NULL; raises `QueryError` for non-numbers."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | decimal.Decimal):
        try:
            number = float(raw)
        except OverflowError:
            raise invalid(f"column {column!r}: {raw} does not fit a float64") from None
        if math.isinf(number) and isinstance(raw, int):
            raise invalid(f"column {column!r}: integer does not fit a float64")
        return number
    if isinstance(raw, float):
        return raw
    if isinstance(raw, dt.datetime):
        if raw.tzinfo is None:
            raw = raw.replace(tzinfo=dt.UTC)
        return raw.timestamp()
    if isinstance(raw, dt.timedelta):
        return raw.total_seconds()
    shown = repr(raw)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    raise invalid(f"column {column!r}: expected a number, got {type(raw).__name__} {shown}")


def to_label(raw: object) -> str:
    if raw is None:
        return ""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return str(raw)


def map_rows(
    query: Query,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    max_series: int,
) -> tuple[Family, ...]:
    """The families one run yields; `QueryError(INVALID_RESULT)` when the rows do not fit."""
    if rows:
        index = {name: i for i, name in enumerate(columns)}
        missing = sorted(query.columns - index.keys())
        if missing:
            raise invalid(
                f"missing column(s) {', '.join(missing)}; the query returns {', '.join(columns)}"
            )
    else:
        index = {}
    limit = query.series_cap(max_series)
    if len(rows) > limit:
        raise invalid(f"{len(rows)} rows, more than the {limit} series allowed")
    total = 0
    families = []
    for metric in query.metrics:
        samples: dict[tuple[str, ...], float] = {}
        value_at = index.get(metric.value, 0)
        label_at = [index[label] for label in metric.labels] if rows else []
        for row in rows:
            value = to_value(row[value_at], metric.value)
            if value is None:
                continue
            labels = tuple(to_label(row[i]) for i in label_at)
            if labels in samples:
                shown = ", ".join(f"{k}={v!r}" for k, v in zip(metric.labels, labels, strict=True))
                raise invalid(f"{metric.name}: two rows share the labels {{{shown}}}")
            samples[labels] = value
        total += len(samples)
        if total > limit:
            raise invalid(f"more than {limit} series (raise max_series or narrow the query)")
        families.append(Family(metric, samples.items()))
    return tuple(families)
