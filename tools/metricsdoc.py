"""`python tools/metricsdoc.py`: regenerate docs/metrics.md from the shipped queries file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as `python tools/metricsdoc.py`, from any directory
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client.metrics_core import Metric as ClientMetric

from exporter import selfmetrics
from exporter.config import Config, load_config
from exporter.durations import format_duration
from exporter.errors import ConfigError
from exporter.settings import SHIPPED_QUERIES
from tools import ROOT

DOC = ROOT / "docs" / "metrics.md"

HEADER = """\
# Metrics

Generated from `queries.yaml` by `python tools/metricsdoc.py`;
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
    families: list[ClientMetric] = [
        *selfmetrics.target_families([], database_up=True),
        *selfmetrics.exporter_families(reload_successful=True, reload_timestamp=0.0),
    ]
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = ", ".join(f"`{x}`" for x in getattr(family, "_labelnames", ())) or "-"
        yield f"| `{name}` | {family.type} | {labels} | {_cell(family.documentation)} |"
    yield "| `process_*`, `python_*` | - | - | The standard process and runtime metrics. |"
    yield ""


def render(config: Config) -> str:
    return "\n".join([HEADER, *_query_sections(config), *_self_sections()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tools/metricsdoc.py", description="Regenerate docs/metrics.md from a queries file."
    )
    parser.add_argument("--queries", type=Path, default=SHIPPED_QUERIES, help="queries file")
    parser.add_argument("--out", type=Path, default=DOC, help="where to write (- for stdout)")
    args = parser.parse_args(argv)
    try:
        text = render(load_config(args.queries))
    except ConfigError as exc:
        print(f"tools/metricsdoc.py: {exc}", file=sys.stderr)
        return 2
    if str(args.out) == "-":
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
