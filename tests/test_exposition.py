"""Encoding: fragments, pages, gzip, content negotiation; checked by real parsers."""

from __future__ import annotations

import gzip
import math
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.config import Metric
from exporter.demo.cluster import free_port
from exporter.exposition import (
    Encoding,
    Format,
    Fragment,
    Page,
    negotiate,
    negotiate_encoding,
    to_client_families,
)
from exporter.mapping import Family, Sample
from exporter.schema import MetricType
from tests.harness import Exporter, exporter_env

HOSTILE = 'quote " backslash \\ newline \n zürich ✓'


def page() -> Page:
    gauge = Metric("homepage_g", MetricType.GAUGE, "A gauge.", "v", ("label",))
    counter = Metric("homepage_c_total", MetricType.COUNTER, "A counter.", "n", ())
    families = [
        Family(
            gauge, (Sample((HOSTILE,), 1.5), Sample(("nan",), math.nan), Sample(("inf",), math.inf))
        ),
        Family(counter, (Sample((), 7.0),)),
    ]
    fragment = Fragment.encode(to_client_families(families, 30))
    return Page.assemble([fragment, Fragment.encode(())])


def test_text_round_trips_hostile_labels_and_special_values() -> None:
    samples = {
        s.labels.get("label", ""): s.value
        for f in parse_text(page().text.decode())
        for s in f.samples
        if s.name == "homepage_g"
    }
    assert samples[HOSTILE] == 1.5
    assert math.isnan(samples["nan"])
    assert samples["inf"] == math.inf


def test_openmetrics_round_trips_and_ends_once_with_eof() -> None:
    body = page().openmetrics.decode()
    assert body.count("# EOF") == 1
    assert body.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(body)}  # type: ignore[no-untyped-call]
    assert families["homepage_c"].type == "counter"
    assert families["homepage_c"].samples[0].value == 7.0


def test_help_mentions_the_refresh_interval() -> None:
    assert b"# HELP homepage_g A gauge. (refreshed every 30s)" in page().text


def test_a_fragment_that_reads_the_same_in_both_formats_is_kept_once() -> None:
    """Gauges read the same in text and OpenMetrics: hundreds of targets keep one copy of each
    query's bytes, not two. Counters differ (their TYPE line), so they keep both."""
    gauge = Metric("homepage_g", MetricType.GAUGE, "A gauge.", "v", ("label",))
    counter = Metric("homepage_c_total", MetricType.COUNTER, "A counter.", "n", ())
    only_gauges = Fragment.encode(to_client_families([Family(gauge, (Sample(("a",), 1.0),))], 30))
    assert only_gauges.openmetrics is only_gauges.text
    with_counter = Fragment.encode(to_client_families([Family(counter, (Sample((), 7.0),))], 30))
    assert with_counter.openmetrics != with_counter.text


def test_gzip_is_made_once_and_cached() -> None:
    p = page()
    first = p.body(Format.TEXT, Encoding.GZIP)
    assert gzip.decompress(first) == p.text
    assert p.body(Format.TEXT, Encoding.GZIP) is first


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_page() -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=page().text, capture_output=True, check=False
    )
    # promtool lints too (exit 3 for lint only); a parse error is exit 1.
    assert result.returncode in (0, 3), result.stderr


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", False),
        ("text/plain", False),
        ("application/openmetrics-text; version=1.0.0", True),
        (
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1",
            True,
        ),
        ("application/openmetrics-text;q=0.2,text/plain;q=0.9", False),
        ("application/openmetrics-text;q=0", False),
    ],
)
def test_openmetrics_negotiation(accept: str, expected: bool) -> None:
    assert (negotiate(accept) is Format.OPENMETRICS) is expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("deflate, gzip;q=1.0", True),
        ("gzip;q=0", False),
        ("br", False),
        ("", False),
    ],
)
def test_gzip_negotiation(header: str, expected: bool) -> None:
    assert (negotiate_encoding(header) is Encoding.GZIP) is expected


# What prometheus/client_python's choose_encoder (exposition.py) and Prometheus's own
# negotiation (prometheus/common expfmt.NegotiateIncludingOpenMetrics, whose goautoneg sort
# keeps header order between equal weights) both answer: OpenMetrics on a tie listed first.
# Prometheus scrapes with the last header (OpenMetrics at q=0.5, above text).
TIE = "application/openmetrics-text;q=0.5, text/plain;q=0.5"
PROMETHEUS_SCRAPE = (
    "application/openmetrics-text;version=1.0.0;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


@pytest.fixture(scope="module")
def served() -> Iterator[Exporter]:
    """The real exporter over real HTTP; its database is unreachable, its page still served."""
    exporter = Exporter(exporter_env(f"postgresql://u@127.0.0.1:{free_port()}/db"))
    try:
        yield exporter.wait_healthy()
    finally:
        exporter.close()


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (TIE, True),
        (PROMETHEUS_SCRAPE, True),
        ("text/plain;q=0.9, application/openmetrics-text;q=0.5", False),
        ("", False),
    ],
    ids=["tie", "prometheus-scrape", "text-preferred", "none"],
)
def test_negotiation_over_http_agrees_with_client_python(
    served: Exporter, accept: str, openmetrics: bool
) -> None:
    status, headers, body = served.get("/metrics", {"Accept": accept})
    assert status == 200
    kind = headers["Content-Type"].split(";")[0]
    assert kind == ("application/openmetrics-text" if openmetrics else "text/plain")
    assert body.endswith(b"# EOF\n") is openmetrics
    if accept.startswith("application/openmetrics-text"):  # client_python's own answer
        assert choose_encoder(accept)[1].startswith("application/openmetrics-text")
