"""Encoding families into exposition bytes: per-query fragments, assembled pages, gzip on demand,
and which of them a client asked for (Accept, Accept-Encoding).

A query's fragment is encoded once, when its snapshot changes; a page is the concatenation of
fragments plus the exporter's own metrics, assembled once per change. Scrapes only pick bytes.
"""

from __future__ import annotations

import enum
import functools
import gzip
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import exposition as text_format
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics_format

from exporter.durations import format_duration
from exporter.mapping import Family
from exporter.schema import MetricType

# The classic text format; prometheus-client's own default now announces 1.0.0, which older
# Prometheus servers (Debian's 2.42 among them) do not negotiate.
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_EOF = b"# EOF\n"


class Format(enum.Enum):
    """What a client is served: the classic text format or OpenMetrics."""

    TEXT = TEXT_CONTENT_TYPE
    OPENMETRICS = OPENMETRICS_CONTENT_TYPE

    @property
    def content_type(self) -> str:
        return self.value


class Encoding(enum.Enum):
    """How the body travels: as it is, or gzipped."""

    IDENTITY = "identity"
    GZIP = "gzip"


class _Families:
    """The collector protocol over an already built list of families."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def to_client_families(families: Sequence[Family], interval: float) -> Iterator[Metric]:
    """prometheus-client families for a query's result, HELP noting the refresh interval."""
    note = f" (refreshed every {format_duration(interval)})"
    for family in families:
        metric = family.metric
        built: GaugeMetricFamily | CounterMetricFamily
        if metric.type is MetricType.COUNTER:
            built = CounterMetricFamily(metric.name, metric.help + note, labels=metric.labels)
        else:
            built = GaugeMetricFamily(metric.name, metric.help + note, labels=metric.labels)
        for sample in family.samples:
            built.add_metric(list(sample.labels), sample.value)
        yield built


@dataclass(frozen=True, slots=True)
class Fragment:
    """The encoded bytes of some families, in both formats."""

    text: bytes
    openmetrics: bytes

    @classmethod
    def encode(cls, families: Iterable[Metric]) -> Fragment:
        built = list(families)
        om = openmetrics_format.generate_latest(_Families(built))  # type: ignore[no-untyped-call]
        text = text_format.generate_latest(_Families(built))  # type: ignore[arg-type,unused-ignore]
        om = om.removesuffix(_EOF)
        # Gauges read the same in both formats: one copy, not two, kept for every query of
        # every target (hundreds of targets, each fragment kept an interval).
        return cls(text=text, openmetrics=text if om == text else om)


EMPTY = Fragment(b"", b"")


@dataclass(slots=True)
class Page:
    """One exposition, made of fragments. Each body (a format, plain or gzipped) is made at
    most once, on its first request; and the page that replaces one whose bodies were served
    makes those bodies when it is assembled, so that a page scraped more often than it changes
    (one database, scraped by several Prometheus servers) costs its scrapes no join and no
    compression. A page replaced before anyone asked for it passes nothing on: with hundreds
    of targets each page changes after every run, several times between two scrapes, and
    making bodies nobody reads was most of a render's cost and memory."""

    _fragments: tuple[Fragment, ...]
    _bodies: dict[tuple[Format, Encoding], bytes] = field(default_factory=dict)
    _served: set[tuple[Format, Encoding]] = field(default_factory=set)

    @classmethod
    def assemble(cls, fragments: Iterable[Fragment], *, replacing: Page | None = None) -> Page:
        page = cls(tuple(fragments))
        for fmt, encoding in replacing._served if replacing is not None else ():
            page._make(fmt, encoding)
        return page

    @property
    def fragments(self) -> tuple[Fragment, ...]:
        return self._fragments

    def body(self, fmt: Format, encoding: Encoding = Encoding.IDENTITY) -> bytes:
        """The body a client asked for (made now if it is the first to ask)."""
        self._served.add((fmt, encoding))
        return self._make(fmt, encoding)

    def _make(self, fmt: Format, encoding: Encoding) -> bytes:
        made = self._bodies.get((fmt, encoding))
        if made is not None:
            return made
        if encoding is Encoding.GZIP:
            # Level 1: an order of magnitude cheaper than 9 for a few percent more bytes.
            made = gzip.compress(self._make(fmt, Encoding.IDENTITY), compresslevel=1, mtime=0)
        elif fmt is Format.OPENMETRICS:
            made = b"".join(f.openmetrics for f in self._fragments) + _EOF
        else:
            made = b"".join(f.text for f in self._fragments)
        self._bodies[fmt, encoding] = made
        return made

    @property
    def text(self) -> bytes:
        return self._make(Format.TEXT, Encoding.IDENTITY)

    @property
    def openmetrics(self) -> bytes:
        return self._make(Format.OPENMETRICS, Encoding.IDENTITY)


def _qvalues(header: str) -> dict[str, float]:
    """`type;q=0.5, other` as {type: q} (RFC 9110 weights; a bad q counts as 0)."""
    weights: dict[str, float] = {}
    for part in header.split(","):
        name, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name:
            weights[name.lower()] = max(q, weights.get(name.lower(), 0.0))
    return weights


# Prometheus sends the same Accept and Accept-Encoding on every scrape: parse each text once.
@functools.lru_cache(maxsize=64)
def negotiate(accept: str) -> Format:
    """OpenMetrics when the client lists it at a q-value at least that of any other type
    (a tie goes to OpenMetrics: the client named it), else the text format."""
    weights = _qvalues(accept)
    om = weights.pop("application/openmetrics-text", 0.0)
    if om > 0 and om >= max(weights.values(), default=0.0):
        return Format.OPENMETRICS
    return Format.TEXT


@functools.lru_cache(maxsize=64)
def negotiate_encoding(accept_encoding: str) -> Encoding:
    return Encoding.GZIP if _qvalues(accept_encoding).get("gzip", 0.0) > 0 else Encoding.IDENTITY
