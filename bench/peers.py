"""Equivalent configurations of our queries for the peers: postgres_exporter and query-exporter.

Neither peer can bind parameters from settings, so `$1` becomes a literal (the locales, or no
media quota).
"""

from __future__ import annotations

import re
from typing import Any

from exporter.config import Config, Query
from exporter.schema import MetricType, Param

LOCALES = ("en", "de", "fr")


def literal_sql(query: Query) -> str:
    """The query's SQL with its parameters written in."""
    sql = query.sql
    for position, param in enumerate(query.params, start=1):
        if param is Param.LOCALES:
            value = "ARRAY[" + ", ".join(f"'{loc}'" for loc in LOCALES) + "]"
        else:
            value = "NULL"
        sql = re.sub(rf"\${position}(?!\d)", value, sql)
    return sql


def series_query(count: int) -> str:
    return f"SELECT g AS v, 'k' || g AS id FROM generate_series(1, {count}) AS g"


def postgres_exporter_queries(config: Config) -> dict[str, Any]:
    """postgres_exporter's --extend.query-path format: one entry per query, columns by usage."""
    out: dict[str, Any] = {}
    for query in config.enabled:
        columns: dict[str, str] = {}
        for metric in query.metrics:
            for label in metric.labels:
                columns[label] = "LABEL"
            columns[metric.value] = "COUNTER" if metric.type is MetricType.COUNTER else "GAUGE"
        out[f"pe_{query.name}"] = {
            "query": literal_sql(query),
            "metrics": [
                {name: {"usage": usage, "description": f"{query.name} {name}"}}
                for name, usage in columns.items()
            ],
        }
    return out


def postgres_exporter_series(count: int) -> dict[str, Any]:
    return {
        "pe_series": {
            "query": series_query(count),
            "metrics": [
                {"id": {"usage": "LABEL", "description": "id"}},
                {"v": {"usage": "GAUGE", "description": "value"}},
            ],
        }
    }


def query_exporter_config(
    config: Config,
    dsn: str,
    *,
    interval: int | None = None,
) -> dict[str, Any]:
    """query-exporter's config: metrics are named by result columns, so each query is wrapped to
    rename value columns to metric names."""
    metrics: dict[str, Any] = {}
    queries: dict[str, Any] = {}
    for query in config.enabled:
        labels = sorted({label for m in query.metrics for label in m.labels})
        select = [f'q."{m.value}" AS {m.name}' for m in query.metrics]
        select += [f'q."{label}"::text AS "{label}"' for label in labels]
        for metric in query.metrics:
            kind = "counter" if metric.type is MetricType.COUNTER else "gauge"
            metrics[metric.name] = {"type": kind, "description": metric.help}
            if metric.labels:
                metrics[metric.name]["labels"] = labels
        queries[query.name] = {
            "databases": ["cms"],
            "metrics": [m.name for m in query.metrics],
            "sql": f"SELECT {', '.join(select)} FROM ({literal_sql(query)}) AS q",
            "interval": interval or int(query.interval),
            "timeout": float(min(query.timeout, 60)),
        }
    return {"databases": {"cms": {"dsn": dsn}}, "metrics": metrics, "queries": queries}


def query_exporter_series(count: int, dsn: str) -> dict[str, Any]:
    return {
        "databases": {"cms": {"dsn": dsn}},
        "metrics": {"qe_series": {"type": "gauge", "description": "value", "labels": ["id"]}},
        "queries": {
            "series": {
                "databases": ["cms"],
                "metrics": ["qe_series"],
                "interval": 3600,
                "timeout": 60.0,
                "sql": f"SELECT v AS qe_series, id FROM ({series_query(count)}) AS q",
            }
        },
    }
