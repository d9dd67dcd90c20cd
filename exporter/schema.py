"""The queries.yaml schema (version 1): pydantic models that check the raw file field by field."""

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
)

from exporter.contract import Need, parse_need
from exporter.durations import parse_duration

SCHEMA_VERSION = 1

METRIC_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
QUERY_NAME = r"^[a-z][a-z0-9_]*$"


class MetricType(StrEnum):
    """How Prometheus should read a metric's value."""

    GAUGE = "gauge"
    COUNTER = "counter"


class Param(StrEnum):
    """Settings a query may receive as positional SQL parameters ($1, $2, ... in list order)."""

    LOCALES = "locales"
    MEDIA_STORAGE_QUOTA_BYTES = "media_storage_quota_bytes"
    # The CMS's vocabulary (settings, so a CMS that differs from the reference schema where the
    # runbook is silent needs no edited SQL): which tables are the CMS, the schedule statuses,
    # and the optional columns of section_schedules (read through to_jsonb, so a column that
    # does not exist reads NULL instead of failing the query).
    CMS_TABLES = "cms_tables"
    SCHEDULE_PENDING = "schedule_pending"
    SCHEDULE_PUBLISHED = "schedule_published"
    SCHEDULE_FAILED = "schedule_failed"
    SCHEDULE_CANCELLED = "schedule_cancelled"
    SCHEDULE_SECTION_COLUMN = "schedule_section_column"
    SCHEDULE_VERSION_COLUMN = "schedule_version_column"
    SCHEDULE_PROCESSED_COLUMN = "schedule_processed_column"
    SCHEDULE_ERROR_COLUMN = "schedule_error_column"


def _duration(value: object) -> float:
    if not isinstance(value, str):
        raise ValueError(f'expected a duration string like "30s", got {value!r}')
    return parse_duration(value)


def _no_dunder(name: str) -> str:
    if name.startswith("__"):
        raise ValueError(f"label names starting with __ are reserved by Prometheus, got {name!r}")
    return name


# A query more often than once a second is a load test, not monitoring; a timeout under 10 ms
# cannot even plan a query.
MIN_INTERVAL_SECONDS = 1.0
# The series cap (max_series, MAX_SERIES_PER_QUERY) travels to PostgreSQL as a bigint row
# limit: past 2^63 every run would fail there. Ten million series from one query is a mistake
# in any case (memory), not a limit anyone needs.
MAX_SERIES_LIMIT = 10_000_000
MIN_TIMEOUT_SECONDS = 0.01


def _interval(value: float) -> float:
    if value < MIN_INTERVAL_SECONDS:
        raise ValueError(f"an interval is at least 1s, got {value * 1000:g}ms")
    return value


def _timeout(value: float) -> float:
    if value < MIN_TIMEOUT_SECONDS:
        raise ValueError(f"a timeout is at least 10ms, got {value * 1000:g}ms")
    return value


Duration = Annotated[float, BeforeValidator(_duration)]
Interval = Annotated[float, BeforeValidator(_duration), AfterValidator(_interval)]
Timeout = Annotated[float, BeforeValidator(_duration), AfterValidator(_timeout)]
LabelName = Annotated[StrictStr, Field(pattern=LABEL_NAME), AfterValidator(_no_dunder)]


def _need(value: object) -> Need:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return parse_need(value)


NeedLine = Annotated[Need, PlainValidator(_need)]
NonEmpty = Annotated[StrictStr, Field(min_length=1)]


class _Strict(BaseModel):
    # Scalars are strict (no "yes" -> True, no 5 -> "5"); lists still become tuples.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MetricSpec(_Strict):
    """One metric family that a query's rows feed."""

    name: Annotated[StrictStr, Field(pattern=METRIC_NAME)]
    type: MetricType = MetricType.GAUGE
    help: NonEmpty
    value: NonEmpty
    labels: tuple[LabelName, ...] = ()


class QuerySpec(_Strict):
    """One SQL statement, how often it runs and the metrics it yields."""

    name: Annotated[StrictStr, Field(pattern=QUERY_NAME)]
    help: NonEmpty
    needs: tuple[NeedLine, ...] = ()  # the schema contract: exporter/contract.py
    sql: NonEmpty
    interval: Interval
    timeout: Timeout
    stale_after: Duration | None = None
    min_server_version: Annotated[StrictInt, Field(ge=9, le=99)] | None = None
    requires: tuple[Annotated[StrictStr, Field(pattern=r"^[a-z_][a-z0-9_]*$")], ...] = ()
    params: tuple[Param, ...] = ()
    # Run once per value of this list parameter (one locale at a time), each run within the
    # query's own timeout: a slow locale is measured as slow, not as a timeout of all of them.
    each: Literal[Param.LOCALES] | None = None
    enabled: StrictBool = True
    max_series: Annotated[StrictInt, Field(ge=1, le=MAX_SERIES_LIMIT)] | None = None
    metrics: Annotated[tuple[MetricSpec, ...], Field(min_length=1)]


def _an_int(value: object) -> object:
    """`version: true` and `version: 1.0` equal 1 in Python; the file format says an integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected the integer {SCHEMA_VERSION}, got {value!r}")
    return value


class QueriesFile(_Strict):
    """The whole file."""

    version: Annotated[Literal[1], BeforeValidator(_an_int)]
    queries: tuple[QuerySpec, ...]
