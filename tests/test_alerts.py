"""Alert rules: generated from the thresholds, valid for promtool, tested case by case."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.errors import ConfigError
from tools.mixin.render import RULES, THRESHOLDS, expected
from tools.mixin.rules import alerts, rule_groups
from tools.mixin.thresholds import load_thresholds

ROOT = Path(__file__).resolve().parent.parent
RULES_TEST = ROOT / "alerts" / "homepage-cms.rules.test.yml"
promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((ROOT / RULES).read_text())
    return [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]


def test_generated_files_are_current() -> None:
    for path, text in expected(ROOT).items():
        assert path.read_text() == text, f"{path} is stale: python tools/mixin"


def test_a_threshold_change_reaches_the_rules(tmp_path: Path) -> None:
    text = (
        (ROOT / THRESHOLDS)
        .read_text()
        .replace(
            "render_seconds: {warning: 0.5, critical: 1.0}",
            "render_seconds: {warning: 0.25, critical: 2.0}",
        )
    )
    (tmp_path / "thresholds.yaml").write_text(text)
    changed = rule_groups(load_thresholds(tmp_path / "thresholds.yaml"))
    exprs = {r["expr"] for g in changed["groups"] for r in g["rules"]}
    assert "homepage_render_duration_seconds > 0.25" in exprs
    assert "homepage_render_duration_seconds > 2" in exprs


def test_a_bad_thresholds_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    text = (ROOT / THRESHOLDS).read_text().replace("cache_hit_ratio: 0.95", "cache_hit_ratio: 95")
    (tmp_path / "thresholds.yaml").write_text(text)
    with pytest.raises(ConfigError, match="cache_hit_ratio: Input should be less than or equal"):
        load_thresholds(tmp_path / "thresholds.yaml")


@promtool
def test_promtool_check_rules_with_lint() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", "--lint=all", "--lint-fatal", str(ROOT / RULES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@promtool
@pytest.mark.slow
def test_promtool_unit_tests_pass() -> None:
    result = subprocess.run(
        ["promtool", "test", "rules", str(RULES_TEST)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = yaml.safe_load(RULES_TEST.read_text())["tests"]
    firing: dict[str, list[dict[str, Any]]] = {}
    quiet: set[str] = set()
    for case in cases:
        for check in case["alert_rule_test"]:
            if check["exp_alerts"]:
                firing.setdefault(check["alertname"], []).extend(check["exp_alerts"])
            else:
                quiet.add(check["alertname"])
    for rule in rules():
        name = rule["alert"]
        assert name in quiet, f"{name} has no quiet case"
        severities = {a["exp_labels"]["severity"] for a in firing.get(name, [])}
        assert rule["labels"]["severity"] in severities, f"{name} never fires in a test"
        for exp in firing[name]:
            assert set(exp["exp_annotations"]) == {"summary", "description", "runbook_url"}


def test_mixin_conventions() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = {h.strip().lower() for h in re.findall(r"^### (\w+)$", runbook, re.M)}
    for rule in rules():
        name = rule["alert"]
        assert re.fullmatch(r"(?:[A-Z][a-z0-9]*|CMS|RLS)+", name), name
        assert rule["labels"]["severity"] in ("warning", "critical")
        notes = rule["annotations"]
        assert notes["summary"].endswith("."), name
        assert "{{" not in notes["summary"], f"{name}: the summary is fixed, not templated"
        # absent() has no instance to name: it fires when there is none.
        if not rule["expr"].startswith("absent("):
            assert "{{ $labels.instance }}" in notes["description"], name
        url = notes["runbook_url"]
        assert url.split("#")[1] == name.lower()
        assert name.lower() in anchors, f"docs/runbook.md has no section for {name}"


def test_thresholds_table_values_appear_in_the_rules() -> None:
    t = load_thresholds(ROOT / THRESHOLDS)
    exprs = "\n".join(a.expr for a in alerts(t))
    for value in (
        0.5,
        1,
        5,
        15,
        80,
        90,
        10737418240,
        53687091200,
        50,
        500,
        100000,
        21474836480,
        0.2,
        0.95,
        172800,
        900,
    ):
        assert re.search(rf"[<>] {value:g}\b" if value < 1e6 else rf"[<>] {int(value)}\b", exprs), (
            value
        )
