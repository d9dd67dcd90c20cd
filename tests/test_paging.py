"""The paging path with the real programs: database -> exporter -> Prometheus (our rules) ->
Alertmanager (our documented route) -> a webhook; and every dashboard query against that
Prometheus."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import load_config
from exporter.demo.cluster import Cluster, free_port
from exporter.demo.database import create_cms_database
from exporter.settings import SHIPPED_QUERIES
from tests.conftest import exporter_dsn
from tests.harness import (
    EXPORTER_PASSWORD,
    Exporter,
    exporter_env,
    http_get,
    running_ready,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (ALERTMANAGER and PROMETHEUS), reason="prometheus and alertmanager are not installed"
    ),
]

DATABASE = "paging"
JOB = "process-scheduled-publishes"
STATE = f"""
INSERT INTO homepage_sections (id, section_key, locale, status, is_active) VALUES
  ('00000000-0000-0000-0000-000000000001', 'hero', 'en', 'published', true),
  ('00000000-0000-0000-0000-000000000002', 'grid', 'en', 'published', true);
-- A schedule 20 minutes overdue: past the critical 15-minute lag.
INSERT INTO section_schedules (id, section_id, version_id, publish_at) VALUES
  ('00000000-0000-0000-0000-0000000000aa', '00000000-0000-0000-0000-000000000001',
   gen_random_uuid(), now() - interval '20 minutes');
-- pg_cron may not add runs of its own while we look; its newest finished run failed.
SELECT cron.alter_job(jobid, schedule := '0 0 1 1 *') FROM cron.job WHERE jobname = '{JOB}';
INSERT INTO cron.job_run_details (jobid, job_pid, database, username, command, status,
                                  return_message, start_time, end_time)
SELECT jobid, 1, '{DATABASE}', 'postgres', command, 'failed', 'ERROR: simulated',
       now() - interval '2 minutes', now() - interval '2 minutes' + interval '300 ms'
FROM cron.job WHERE jobname = '{JOB}';
ANALYZE;
"""
FIX = f"""
UPDATE section_schedules SET status = 'completed', processed_at = now();
INSERT INTO cron.job_run_details (jobid, job_pid, database, username, command, status,
                                  return_message, start_time, end_time)
SELECT jobid, 2, '{DATABASE}', 'postgres', command, 'succeeded', '1 row',
       now() - interval '1 second', now()
FROM cron.job WHERE jobname = '{JOB}';
"""
# Alerts that must never be sent for this state.
QUIET = {
    "HomepageNoLiveSections",
    "HomepageInvisibleToPublic",
    "HomepageTableRLSDisabled",
    "HomepageFunctionMissing",
    "HomepageDatabaseUnreachable",
    "HomepageExporterDown",
    "HomepageRenderFailing",
    "HomepageCronJobInactive",
    "HighPublishFailureRate",
}


class Webhook:
    """Alertmanager's webhook receiver: records every notification by path."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, path: str, status: str = "firing") -> list[dict[str, Any]]:
        return [
            a
            for p, note in list(self.received)
            if p == path
            for a in note["alerts"]
            if a["status"] == status
        ]

    def names(self) -> set[str]:
        return {a["labels"]["alertname"] for _, n in list(self.received) for a in n["alerts"]}


def fast_queries(tmp: Path) -> Path:
    """The shipped queries, every interval cut to 2 s so the test sees changes quickly."""
    data = yaml.safe_load(SHIPPED_QUERIES.read_text())
    for query in data["queries"]:
        query["interval"] = "2s"
        query["timeout"] = "2s"
        query.pop("stale_after", None)
    path = tmp / "queries.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_config(path)
    return path


def fast_rules(tmp: Path) -> Path:
    """The shipped rules with every `for` removed (a test copy; the expressions are ours)."""
    data = yaml.safe_load((ROOT / "alerts" / "homepage-cms.rules.yml").read_text())
    for group in data["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule.pop("for", None)
    path = tmp / "homepage-cms.rules.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def alertmanager_config(tmp: Path, webhook: Webhook) -> Path:
    """deploy/alertmanager.yml as documented, pointed at the local webhook, with short waits."""
    data = yaml.safe_load((ROOT / "deploy" / "alertmanager.yml").read_text())
    data["route"].update(group_wait="1s", group_interval="1s")
    for receiver in data["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = webhook.url + urllib.parse.urlsplit(hook["url"]).path
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def prometheus_config(tmp: Path, rules: Path, exporter_port: int, am_port: int) -> Path:
    """deploy/prometheus.yml as documented, scraping every second on loopback."""
    data = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    data["global"].update(scrape_interval="1s", evaluation_interval="1s")
    data["rule_files"] = [str(rules)]
    data["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{am_port}"]
    job = data["scrape_configs"][0]
    data["scrape_configs"] = [job]  # not Supabase's Metrics API: no such host here
    job["scrape_timeout"] = "1s"
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{exporter_port}"]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Stack:
    def __init__(
        self, cluster: Cluster, exporter: Exporter, prometheus: str, webhook: Webhook
    ) -> None:
        self.cluster = cluster
        self.exporter = exporter
        self.prometheus = prometheus
        self.webhook = webhook

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, _, body = http_get(url)
        assert status == 200, body
        result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
        return result


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    assert ALERTMANAGER is not None
    assert PROMETHEUS is not None
    tmp = Path(tempfile.mkdtemp(prefix="homepage-paging-"))
    cluster = Cluster(cron_database=DATABASE)
    exporter: Exporter | None = None
    try:
        cluster.init().start()
        create_cms_database(cluster, DATABASE, exporter_password=EXPORTER_PASSWORD)
        cluster.psql(STATE, database=DATABASE)
        exporter = Exporter(
            exporter_env(
                exporter_dsn(cluster, DATABASE),
                fast_queries(tmp),
                locales="en",
                media_storage_quota_bytes=str(10**9),
            )
        ).wait_healthy()
        webhook = Webhook()
        am_port, prom_port = free_port(), free_port()
        with (
            running_ready(
                [
                    ALERTMANAGER,
                    f"--config.file={alertmanager_config(tmp, webhook)}",
                    f"--storage.path={tmp / 'am'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                tmp / "alertmanager.log",
                f"http://127.0.0.1:{am_port}",
            ),
            running_ready(
                [
                    PROMETHEUS,
                    f"--config.file={prometheus_config(tmp, fast_rules(tmp), exporter.port, am_port)}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                tmp / "prometheus.log",
                f"http://127.0.0.1:{prom_port}",
            ),
        ):
            yield Stack(cluster, exporter, f"http://127.0.0.1:{prom_port}", webhook)
    finally:
        if exporter is not None:
            exporter.close()
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def _arrived(
    webhook: Webhook, path: str, name: str, severity: str, status: str = "firing"
) -> dict[str, Any] | None:
    for alert in webhook.alerts(path, status):
        labels = alert["labels"]
        if labels["alertname"] == name and labels["severity"] == severity:
            return alert
    return None


def test_critical_pages_and_warning_tickets_with_full_labels_and_annotations(
    stack: Stack,
) -> None:
    page = wait_for(
        lambda: _arrived(stack.webhook, "/pager", "ScheduledPublishLag", "critical"),
        60,
        "ScheduledPublishLag to page",
    )
    assert isinstance(page, dict)
    assert page["labels"]["job"] == "homepage-cms"
    assert page["labels"]["instance"] == f"127.0.0.1:{stack.exporter.port}"
    assert page["labels"]["environment"] == "production"
    notes = page["annotations"]
    assert notes["summary"] == "Scheduled publishes are delayed."
    assert notes["description"].startswith(
        f"The oldest due schedule on 127.0.0.1:{stack.exporter.port} is 2"
    )
    assert "minutes behind" in notes["description"]
    assert notes["runbook_url"].endswith("docs/runbook.md#scheduledpublishlag")

    ticket = wait_for(
        lambda: _arrived(stack.webhook, "/ticket", "HomepageCronJobFailed", "warning"),
        30,
        "HomepageCronJobFailed to open a ticket",
    )
    assert isinstance(ticket, dict)
    assert ticket["labels"]["jobname"] == JOB
    assert ticket["annotations"]["summary"] == "The last pg_cron run failed."


def test_alerts_that_should_stay_quiet_stay_quiet(stack: Stack) -> None:
    wait_for(
        lambda: _arrived(stack.webhook, "/pager", "ScheduledPublishLag", "critical"),
        60,
        "the stack to evaluate",
    )
    time.sleep(3)
    assert QUIET.isdisjoint(stack.webhook.names()), stack.webhook.names() & QUIET
    # The critical tier inhibits its own warning tier (deploy/alertmanager.yml).
    assert _arrived(stack.webhook, "/ticket", "ScheduledPublishLag", "warning") is None
    # Critical alerts never reach the ticket receiver, warnings never page.
    assert all(a["labels"]["severity"] == "critical" for a in stack.webhook.alerts("/pager"))
    assert all(a["labels"]["severity"] == "warning" for a in stack.webhook.alerts("/ticket"))


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    board = json.loads((ROOT / "grafana" / "dashboards" / "homepage-cms.json").read_text())
    # Range functions need a few scrapes behind them.
    wait_for(
        lambda: stack.query("count_over_time(up{job='homepage-cms'}[1m]) > 5"),
        30,
        "a few scrapes",
    )
    missing = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$job", "homepage-cms").replace("$instance", ".+")
            if not stack.query(expr):
                missing.append((panel["title"], expr))
    assert missing == []


def test_fixing_the_state_sends_resolved_notifications(stack: Stack) -> None:
    wait_for(
        lambda: _arrived(stack.webhook, "/pager", "ScheduledPublishLag", "critical"),
        60,
        "the page to arrive first",
    )
    wait_for(
        lambda: _arrived(stack.webhook, "/ticket", "HomepageCronJobFailed", "warning"),
        30,
        "the ticket to arrive first",
    )
    stack.cluster.psql(FIX, database=DATABASE)
    assert wait_for(
        lambda: _arrived(stack.webhook, "/pager", "ScheduledPublishLag", "critical", "resolved"),
        60,
        "ScheduledPublishLag to resolve",
    )
    assert wait_for(
        lambda: _arrived(stack.webhook, "/ticket", "HomepageCronJobFailed", "warning", "resolved"),
        60,
        "HomepageCronJobFailed to resolve",
    )
