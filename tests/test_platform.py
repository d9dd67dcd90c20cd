"""Supabase's platform metrics: the scrape job, the rules on Supabase's documented names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.demo.cluster import free_port
from tests.harness import http_get, running_ready, wait_for

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "supabase-platform.rules.yml"
RULES_TEST = ROOT / "alerts" / "supabase-platform.rules.test.yml"
FIXTURE = ROOT / "tests" / "fixtures" / "supabase-metrics.prom"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")


def documented() -> dict[str, set[str]]:
    """Metric name -> label names, from the exposition written from Supabase's docs."""
    families = text_string_to_metric_families(FIXTURE.read_text())
    out: dict[str, set[str]] = {}
    for family in families:
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names) of each raw metric a PromQL expression selects."""
    found = []
    for name, matchers in re.findall(r"\b([a-z_][a-zA-Z0-9_]*)\{([^}]*)\}", expr):
        labels = {m.split("=")[0].strip().rstrip("!~") for m in matchers.split(",") if m.strip()}
        found.append((name, labels))
    return found


def test_the_rules_read_only_documented_metrics_and_labels() -> None:
    docs = documented()
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    recorded = {r["record"] for r in rules if "record" in r}
    seen = 0
    for rule in rules:
        for name, labels in selectors(rule["expr"]):
            if name == "up" or name in recorded:
                continue
            assert name in docs, f"{name} is not in Supabase's documented exposition"
            assert labels - {"job"} <= docs[name], (name, labels - docs[name])
            seen += 1
    assert seen >= 5
    # The promtool cases feed the same names and labels the fixture has.
    cases = yaml.safe_load(RULES_TEST.read_text())["tests"]
    for case in cases:
        for series in case["input_series"]:
            name, labels = selectors(series["series"])[0]
            if name != "up":
                assert labels - {"job", "instance"} == docs[name], (name, labels)


@needs_promtool
def test_promtool_checks_and_unit_tests_pass() -> None:
    assert PROMTOOL is not None
    for argv in (["check", "rules", "--lint=all", str(RULES)], ["test", "rules", str(RULES_TEST)]):
        result = subprocess.run([PROMTOOL, *argv], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_platform_alert_has_a_firing_and_a_quiet_case_and_a_runbook_section() -> None:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules if "alert" in r}
    cases = yaml.safe_load(RULES_TEST.read_text())["tests"]
    firing = {c["alertname"] for t in cases for c in t["alert_rule_test"] if c["exp_alerts"]}
    quiet = {c["alertname"] for t in cases for c in t["alert_rule_test"] if not c["exp_alerts"]}
    assert names == firing == quiet
    runbook = (ROOT / "docs" / "runbook.md").read_text().lower()
    for name in names:
        assert f"### {name.lower()}\n" in runbook, name


@needs_promtool
def test_the_deployed_prometheus_config_loads_the_rules_not_their_tests(tmp_path: Path) -> None:
    """deploy/prometheus.yml as the compose file mounts alerts/ (rules and tests side by side)."""
    assert PROMTOOL is not None
    rules_dir = tmp_path / "rules"
    shutil.copytree(ROOT / "alerts", rules_dir)
    secret = tmp_path / "supabase-secret-key"
    secret.write_text("sb_secret_example\n")
    text = (ROOT / "deploy" / "prometheus.yml").read_text()
    text = text.replace("/etc/prometheus/rules", str(rules_dir))
    text = text.replace("/etc/prometheus/secrets/supabase-secret-key", str(secret))
    config = tmp_path / "prometheus.yml"
    config.write_text(text)
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "homepage-cms.rules.yml" in result.stdout
    assert "supabase-platform.rules.yml" in result.stdout
    assert "test.yml" not in result.stdout


PROMETHEUS = shutil.which("prometheus")
DASHBOARD = ROOT / "grafana" / "dashboards" / "supabase-platform.json"


class _Exposition(BaseHTTPRequestHandler):
    """Serves the fixture exposition, as Supabase's Metrics API would (without its TLS)."""

    def do_GET(self) -> None:
        body = FIXTURE.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _targets(board: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target


def test_the_platform_dashboard_follows_the_conventions() -> None:
    board = json.loads(DASHBOARD.read_text())
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    limits: dict[str, list[float]] = {}
    for rule in rules:
        if "alert" in rule and " > " in rule["expr"]:
            limits.setdefault(rule["alert"], []).append(float(rule["expr"].split(" > ")[-1]))
    for title, target in _targets(board):
        assert target["datasource"]["uid"] == "${datasource}", title
        assert "$job" in target["expr"], title
        assert "$instance" in target["expr"], title
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        for link in panel.get("links", []):
            alert = link["url"].split("#")[1]
            name = next((n for n in limits if n.lower() == alert), None)
            steps = [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
            if name is not None:
                assert steps[1:] == sorted(limits[name]), (panel["title"], steps)


# A server that listens before it is ready, as Prometheus and Alertmanager do: /-/ready answers
# 503 to its first three requests (by count, not by time), then 200.
UNREADY_AT_FIRST = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    asked = 0

    def do_GET(self):
        Handler.asked += 1
        self.send_response(200 if Handler.asked > 3 else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def test_servers_are_used_once_ready_not_once_up(tmp_path: Path) -> None:
    """The helper every test starts Prometheus and Alertmanager with waits for /-/ready."""
    script = tmp_path / "unready_at_first.py"
    script.write_text(UNREADY_AT_FIRST)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running_ready([sys.executable, str(script), str(port)], tmp_path / "log", url):
        assert http_get(f"{url}/-/ready")[0] == 200


@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed")
def test_every_platform_panel_returns_data_from_a_real_prometheus(tmp_path: Path) -> None:
    assert PROMETHEUS is not None
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Exposition)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "supabase",
                        "metrics_path": "/customer/v1/privileged/metrics",
                        "static_configs": [{"targets": [f"127.0.0.1:{server.server_port}"]}],
                    }
                ],
            }
        )
    )

    def query(expr: str) -> list[Any]:
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, _, body = http_get(url)
        assert status == 200, body
        result: list[Any] = json.loads(body)["data"]["result"]
        return result

    try:
        with running_ready(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            tmp_path / "prometheus.log",
            f"http://127.0.0.1:{port}",
        ):
            wait_for(lambda: query("count_over_time(up[1m]) > 3"), 60, "a few scrapes")
            board = json.loads(DASHBOARD.read_text())
            empty = [
                title
                for title, target in _targets(board)
                if not query(target["expr"].replace("$job", "supabase").replace("$instance", ".+"))
            ]
            assert not empty, empty
            # The recording rules evaluate on the documented names too.
            for record in ("supabase:memory_used:ratio", "supabase:data_disk_used:ratio",
                           "supabase:connections:sum", "supabase:cpu_busy:ratio_rate5m"):  # fmt: skip
                assert query(record), record
    finally:
        server.shutdown()
        server.server_close()


@needs_promtool
def test_the_compose_prometheus_config_loads_with_alerts_mounted_as_compose_mounts_them(
    tmp_path: Path,
) -> None:
    """docker-compose.yml mounts ./alerts (rules and their promtool tests) at /etc/prometheus/rules;
    Prometheus refused to start when the rule glob picked up the tests."""
    assert PROMTOOL is not None
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./alerts:/etc/prometheus/rules:ro" in mounts
    rules_dir = tmp_path / "rules"
    shutil.copytree(ROOT / "alerts", rules_dir)
    text = (ROOT / "deploy" / "compose" / "prometheus.yml").read_text()
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/rules", str(rules_dir)))
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test.yml" not in result.stdout
