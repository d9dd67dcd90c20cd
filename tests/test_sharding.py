"""Scale-out with Prometheus's own sharding, not ours: two Prometheus servers, each keeping its
`hashmod` share of the targets (as the Prometheus Operator's `shards` does for a Probe), scrape
one exporter's /probe; every target is scraped by exactly one of them."""

from __future__ import annotations

import json
import shutil
import urllib.parse
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.demo.cluster import Cluster, free_port
from tests.conftest import exporter_dsn
from tests.harness import EXPORTER_PASSWORD, Exporter, exporter_env, http_get, running, wait_for

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed"),
]
# Names whose hashes land on both shards; four targets with one connection each stay within the
# exporter role's CONNECTION LIMIT 5 on the one test database they all watch.
TARGETS = ["eu", "de", "us", "uk"]
SHARDS = 2


def sharded_config(shard: int, exporter: str) -> dict[str, Any]:
    """deploy/prometheus-multi-target.yml's job, keeping this shard's hash share of the targets."""
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": "homepage-cms",
                "metrics_path": "/probe",
                "static_configs": [{"targets": TARGETS}],
                "relabel_configs": [
                    {"source_labels": ["__address__"], "target_label": "__param_target"},
                    {"source_labels": ["__param_target"], "target_label": "instance"},
                    # The shard: a hash of the target, not of the exporter's address (the same
                    # for every target), so the targets spread and any replica can answer.
                    {
                        "source_labels": ["__param_target"],
                        "modulus": SHARDS,
                        "target_label": "__tmp_hash",
                        "action": "hashmod",
                    },
                    {"source_labels": ["__tmp_hash"], "regex": str(shard), "action": "keep"},
                    {"target_label": "__address__", "replacement": exporter},
                ],
            }
        ],
    }


def test_two_prometheus_shards_scrape_every_target_exactly_once(
    pg: Cluster, tmp_path: Path
) -> None:
    assert PROMETHEUS is not None
    password = tmp_path / "password"
    password.write_text(EXPORTER_PASSWORD)
    url = exporter_dsn(pg).replace(f":{EXPORTER_PASSWORD}@", "@")
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        yaml.safe_dump(
            {
                "targets": [
                    {"name": n, "database_url": url, "database_password_file": str(password)}
                    for n in TARGETS
                ]
            }
        )
    )
    env = exporter_env(url, targets_file=str(targets), pool_size="1")
    exporter = Exporter(env).wait_healthy()
    try:
        with ExitStack() as stack:
            servers = []
            for shard in range(SHARDS):
                folder = tmp_path / f"shard-{shard}"
                folder.mkdir()
                config = folder / "prometheus.yml"
                config.write_text(
                    yaml.safe_dump(sharded_config(shard, f"127.0.0.1:{exporter.port}"))
                )
                port = free_port()
                stack.enter_context(
                    running(
                        [
                            PROMETHEUS,
                            f"--config.file={config}",
                            f"--storage.tsdb.path={folder / 'tsdb'}",
                            f"--web.listen-address=127.0.0.1:{port}",
                        ],
                        folder / "prometheus.log",
                    )
                )
                servers.append(f"http://127.0.0.1:{port}")
            scraped = [_scraped_targets(server) for server in servers]
    finally:
        exporter.close()
    mine = [set(s) for s in scraped]
    assert all(mine), f"a shard got no target: {scraped}"  # the hash really splits them
    assert mine[0].isdisjoint(mine[1]), f"scraped twice: {mine[0] & mine[1]}"
    assert mine[0] | mine[1] == set(TARGETS)
    # Each kept target was scraped successfully, and is a real database's page.
    assert all(up == 1.0 for s in scraped for up in s.values())


def _scraped_targets(server: str) -> dict[str, float]:
    """{instance: database_up} of every target this server keeps, once all are scraped."""

    def api(path: str, **params: str) -> Any:
        status, _, body = http_get(f"{server}/api/v1/{path}?" + urllib.parse.urlencode(params))
        assert status == 200, body
        return json.loads(body)["data"]

    def settled() -> dict[str, float] | None:
        if http_get(f"{server}/-/ready")[0] != 200:
            return None
        data = api("targets", state="any")
        active, dropped = data["activeTargets"], data["droppedTargets"]
        # Every target is seen by every shard: kept (active) here or dropped by the hashmod.
        if len(active) + len(dropped) != len(TARGETS):
            return None
        if not all(t["health"] == "up" for t in active):
            return None
        result = api("query", query='homepage_exporter_database_up{job="homepage-cms"}')["result"]
        found = {r["metric"]["instance"]: float(r["value"][1]) for r in result}
        kept = {t["labels"]["instance"] for t in active}
        return found if set(found) == kept and all(v == 1.0 for v in found.values()) else None

    result = wait_for(settled, 60, f"{server} to scrape its share")
    assert isinstance(result, dict)
    return result
