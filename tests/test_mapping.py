"""Rows to samples, decided once, with literal rows and no database."""

from __future__ import annotations

import datetime as dt
import gc
import math
from decimal import Decimal

import pytest

from exporter.config import Metric, Query
from exporter.errors import ErrorReason, QueryError
from exporter.mapping import Family, Sample, map_rows, to_label, to_value
from exporter.schema import MetricType


def query(*metrics: Metric, max_series: int | None = None) -> Query:
    return Query(
        name="q",
        help="h",
        sql="SELECT",
        needs=(),
        interval=30,
        timeout=5,
        stale_after=90,
        min_server_version=None,
        requires=(),
        params=(),
        enabled=True,
        max_series=max_series,
        metrics=metrics,
    )


GAUGE = Metric("homepage_x", MetricType.GAUGE, "x", "v", ("locale",))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (True, 1.0),
        (False, 0.0),
        (3, 3.0),
        (Decimal("2.50"), 2.5),
        (1.25, 1.25),
        (2**62, float(2**62)),
        (Decimal("Infinity"), math.inf),
        (-math.inf, -math.inf),
        (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), 1767225600.0),
        (dt.datetime(2026, 1, 1), 1767225600.0),  # naive timestamps are UTC
        (dt.timedelta(minutes=20, seconds=1), 1201.0),
    ],
)
def test_values_become_floats(raw: object, expected: float) -> None:
    assert to_value(raw, "v") == expected


def test_nan_stays_nan() -> None:
    assert math.isnan(to_value(Decimal("NaN"), "v") or 0.0)
    assert math.isnan(to_value(math.nan, "v") or 0.0)


def test_null_means_no_sample() -> None:
    assert to_value(None, "v") is None
    (family,) = map_rows(query(GAUGE), ["v", "locale"], [(None, "en"), (1, "de")], max_series=10)
    assert [s.labels for s in family.samples] == [("de",)]


@pytest.mark.parametrize("raw", ["12", b"1", {"a": 1}, [1], 10**400])
def test_non_numbers_are_invalid_results(raw: object) -> None:
    with pytest.raises(QueryError) as caught:
        to_value(raw, "v")
    assert caught.value.reason is ErrorReason.INVALID_RESULT
    assert "column 'v'" in caught.value.message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (7, "7"),
        ('a"b\\c\nd', 'a"b\\c\nd'),
        ("zürich", "zürich"),
    ],
)
def test_labels_become_strings(raw: object, expected: str) -> None:
    assert to_label(raw) == expected


def test_rows_map_to_one_family_per_metric() -> None:
    total = Metric("homepage_y_total", MetricType.COUNTER, "y", "n", ("locale",))
    families = map_rows(
        query(GAUGE, total), ["locale", "v", "n"], [("en", 1, 5), ("de", 2, 6)], max_series=10
    )
    assert [(s.labels, s.value) for s in families[0].samples] == [(("en",), 1.0), (("de",), 2.0)]
    assert [(s.labels, s.value) for s in families[1].samples] == [(("en",), 5.0), (("de",), 6.0)]


def test_a_label_less_metric_fed_by_two_rows_is_invalid() -> None:
    single = Metric("homepage_z", MetricType.GAUGE, "z", "v", ())
    with pytest.raises(QueryError, match="two rows share the labels"):
        map_rows(query(single), ["v"], [(1,), (2,)], max_series=10)


def test_duplicate_label_sets_are_invalid() -> None:
    with pytest.raises(QueryError, match="two rows share the labels"):
        map_rows(query(GAUGE), ["v", "locale"], [(1, "en"), (2, "en")], max_series=10)


def test_missing_columns_are_named() -> None:
    with pytest.raises(QueryError, match="missing column\\(s\\) locale; the query returns v"):
        map_rows(query(GAUGE), ["v"], [(1,)], max_series=10)


def test_no_rows_means_no_samples_not_an_error() -> None:
    (family,) = map_rows(query(GAUGE), [], [], max_series=10)
    assert family.samples == ()


def test_cardinality_guard_marks_the_result_invalid() -> None:
    rows = [(i, f"l{i}") for i in range(11)]
    with pytest.raises(QueryError) as caught:
        map_rows(query(GAUGE), ["v", "locale"], rows, max_series=10)
    assert caught.value.reason is ErrorReason.INVALID_RESULT
    assert "more than the 10 series allowed" in caught.value.message
    # A per-query limit wins over the global one.
    assert map_rows(query(GAUGE, max_series=20), ["v", "locale"], rows, max_series=10)


def test_a_runs_samples_leave_the_garbage_collectors_lists() -> None:
    """A full collection walks every object the collector tracks while the event loop, and
    every scrape, waits; a run's samples live for an interval, by the thousand with hundreds
    of targets, and hold only strings and floats: after one collection it must not see them."""
    kinds = Metric("homepage_k", MetricType.GAUGE, "k", "v", ("locale", "at", "flag", "n"))
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = [
        ("en", when, True, Decimal("1.5"), 1),
        (None, None, False, 7, Decimal("2.5")),
        ("de", when, None, None, when),
        ("fr", when, True, 2**40, dt.timedelta(seconds=3)),
    ]
    families = map_rows(
        query(GAUGE, kinds), ["locale", "at", "flag", "n", "v"], rows, max_series=10
    )
    gc.collect()
    assert sum(f.series for f in families) == len([s for f in families for s in f.samples]) == 8
    # Each family holds its metric (the config's, alive anyway) and nothing else it tracks.
    held = [r for f in families for r in gc.get_referents(f) if r not in (f.metric, Family)]
    assert [r for r in held if gc.is_tracked(r)] == []


def test_a_family_hands_back_the_samples_it_was_given() -> None:
    two = Metric("homepage_two", MetricType.GAUGE, "t", "v", ("a", "b"))
    given = (Sample(("x", ""), 1.0), Sample(("", "y"), math.inf), Sample(("x", "y"), -0.0))
    family = Family(two, given)
    assert family.samples == given
    assert family.series == 3
    assert Family(two, ()).samples == ()
    label_less = Metric("homepage_n", MetricType.COUNTER, "n", "v", ())
    assert Family(label_less, [((), 7.0)]).samples == (Sample((), 7.0),)
    with pytest.raises(ValueError, match="homepage_two: \\('x',\\) is not one value per label"):
        Family(two, [(("x",), 1.0)])
