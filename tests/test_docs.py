"""Generated documentation stays in step with what it documents."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exporter.config import load_config
from exporter.settings import SHIPPED_QUERIES
from tools.metricsdoc import render

ROOT = Path(__file__).resolve().parent.parent


def test_metrics_md_is_current() -> None:
    current = (ROOT / "docs" / "metrics.md").read_text()
    assert current == render(load_config(SHIPPED_QUERIES)), (
        "docs/metrics.md is stale: python tools/metricsdoc.py"
    )


@pytest.mark.slow
def test_the_generators_run_from_any_directory_and_take_help(tmp_path: Path) -> None:
    """They live in tools/, outside the package, and find the repository themselves."""
    doc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "metricsdoc.py"), "--out", "-"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert doc.stdout == (ROOT / "docs" / "metrics.md").read_text()
    mixin = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "mixin"), "--root", str(tmp_path)],
        cwd=tmp_path / "..",
        capture_output=True,
        text=True,
        check=False,
    )
    assert mixin.returncode == 2
    assert "thresholds.yaml" in mixin.stderr
    helped = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "mixin"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "usage:" in helped.stdout
    assert not (tmp_path / "--help").exists()


def test_every_metric_is_documented() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    for query in load_config(SHIPPED_QUERIES).queries:
        for metric in query.metrics:
            assert f"`{metric.name}`" in text


def test_the_package_queries_file_is_the_top_level_one() -> None:
    assert SHIPPED_QUERIES.read_text() == (ROOT / "queries.yaml").read_text()


def test_the_readme_counts_the_shipped_rules() -> None:
    rules = yaml.safe_load((ROOT / "alerts" / "homepage-cms.rules.yml").read_text())["groups"]
    alerting = [r for g in rules for r in g["rules"] if "alert" in r]
    recording = [r for g in rules for r in g["rules"] if "record" in r]
    names = {r["alert"] for r in alerting}
    readme = (ROOT / "README.md").read_text()
    stated = f"({len(names)} alerts in {len(alerting)} rules, {len(recording)} recording rules)"
    assert stated in readme


def test_every_repository_file_the_docs_cite_exists() -> None:
    """A cited file that is not in the repository (the DBA runbook's own path was one) sends a
    reader nowhere; the DBA runbook is cited by its title."""
    cited = re.compile(r"`([\w.-]+(?:/[\w.*-]+)+\.(?:md|ya?ml|sql|py|sh|json|toml))`")
    missing = [
        f"{doc.relative_to(ROOT)}: {path}"
        for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for path in cited.findall(doc.read_text())
        if not any(ROOT.glob(path))
    ]
    assert missing == []
