"""Generators for files committed in this repository (rules, dashboards, docs): development
tools, not part of the installed exporter. Each runs from anywhere inside the repository:
`python tools/mixin` and `python tools/metricsdoc.py`."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
