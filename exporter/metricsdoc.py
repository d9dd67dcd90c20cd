"""docs/metrics.md from a queries file: `python -m exporter.metricsdoc > docs/metrics.md`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.metrics_core import Metric as ClientMetric

from exporter import selfmetrics
from exporter.config import Config, load_config
from exporter.durations import format_duration
from exporter.settings import SHIPPED_QUERIES

HEADER = """\
# Metrics

Generated from `queries.yaml` by `python -m exporter.metricsdoc > docs/metrics.md`;
a test fails when this file is stale. Do not edit by hand.

Every query runs read-only, with `statement_timeout` equal to its timeout. A failing query keeps
its last values for `stale_after` (three intervals unless set), then its series disappear;
`homepage_exporter_query_up{query}` says which. HELP text on `/metrics` also carries the interval.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _query_sections(config: Config) -> Iterator[str]:
    yield "## Query metrics\n"
    yield "| query | interval | timeout | requires |"
    yield "|---|---|---|---|"
    for q in config.queries:
        requires = ", ".join(q.requires)
        if q.min_server_version:
            requires = ", ".join(filter(None, [requires, f"PostgreSQL >= {q.min_server_version}"]))
        yield (
            f"| [`{q.name}`](#{q.name}) | {format_duration(q.interval)} |"
            f" {format_duration(q.timeout)} | {requires or '-'} |"
        )
    yield ""
    for q in config.queries:
        yield f"### {q.name}\n"
        yield f"{q.help}" + ("" if q.enabled else " **Disabled by default.**") + "\n"
        facts = [f"every {format_duration(q.interval)}", f"timeout {format_duration(q.timeout)}"]
        if q.params:
            facts.append("parameters: " + ", ".join(f"`{p.value}`" for p in q.params))
        yield "- " + "; ".join(facts)
        if q.needs:
            yield "- reads: " + "; ".join(f"`{n}`" for n in q.needs)
        yield ""
        yield "| metric | type | labels | meaning |"
        yield "|---|---|---|---|"
        for m in q.metrics:
            labels = ", ".join(f"`{label}`" for label in m.labels) or "-"
            yield f"| `{m.name}` | {m.type} | {labels} | {_cell(m.help)} |"
        yield ""


def _self_sections() -> Iterator[str]:
    yield "## The exporter's own metrics\n"
    yield "| metric | type | labels | meaning |"
    yield "|---|---|---|---|"
    families: list[ClientMetric] = list(
        selfmetrics.families(
            [], {}, {}, database_up=True, reload_successful=True, reload_timestamp=0.0
        )
    )
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = ", ".join(f"`{x}`" for x in getattr(family, "_labelnames", ())) or "-"
        yield f"| `{name}` | {family.type} | {labels} | {_cell(family.documentation)} |"
    yield "| `process_*`, `python_*` | - | - | The standard process and runtime metrics. |"
    yield ""


def render(config: Config) -> str:
    return "\n".join([HEADER, *_query_sections(config), *_self_sections()])


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else SHIPPED_QUERIES
    sys.stdout.write(render(load_config(path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
