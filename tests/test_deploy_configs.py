"""Every shipped Prometheus and Alertmanager config, checked by promtool and amtool with the files
laid out exactly where the container finds them (docker-compose.yml's mounts)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
PROMETHEUS_CONFIG = PurePosixPath("/etc/prometheus/prometheus.yml")
ALERTMANAGER_CONFIG = PurePosixPath("/etc/alertmanager/alertmanager.yml")

Mounts = dict[PurePosixPath, Path]


def compose_mounts(service: str) -> Mounts:
    """The service's bind mounts in docker-compose.yml: container path -> host path."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts: Mounts = {}
    for volume in compose["services"][service]["volumes"]:
        host, container, *_mode = volume.split(":")
        mounts[PurePosixPath(container)] = (ROOT / host).resolve()
    return mounts


def lay_out(mounts: Mounts, root: Path) -> None:
    """Copy each mounted host path to where the container sees it, under `root`."""
    for container, host in mounts.items():
        target = root / container.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if host.is_dir():
            shutil.copytree(host, target)
        else:
            shutil.copy(host, target)


def rerooted(config: Path, root: Path) -> Path:
    """The config with each absolute path it names (rule globs, *_file settings) under `root`,
    as the container's filesystem is; placeholder secrets where a *_file names one."""
    data = yaml.safe_load(config.read_text())

    def move(value: str) -> str:
        return str(root / value.lstrip("/")) if value.startswith("/") else value

    def walk(node: object) -> object:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and key.endswith("_file") and isinstance(value, str):
                    secret = Path(move(value))
                    if not secret.exists():  # the operator's file: any content will do here
                        secret.parent.mkdir(parents=True, exist_ok=True)
                        secret.write_text("placeholder\n")
                    node[key] = str(secret)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        return node

    walk(data)
    data["rule_files"] = [move(glob) for glob in data.get("rule_files") or []]
    checked = config.with_name(config.name + ".rerooted.yml")
    checked.write_text(yaml.safe_dump(data))
    return checked


def shipped_rule_counts() -> dict[str, int]:
    """Rules per file in alerts/, as promtool counts them (every rule of every group)."""
    counts = {}
    for path in sorted((ROOT / "alerts").glob("*.rules.yml")):
        groups = yaml.safe_load(path.read_text())["groups"]
        counts[path.name] = sum(len(group["rules"]) for group in groups)
    return counts


def loaded_rule_counts(promtool_stdout: str) -> dict[str, int]:
    """promtool check config prints 'Checking <rule file>' then 'SUCCESS: N rules found'."""
    pairs = re.findall(r"^Checking (\S+)\n\s+SUCCESS: (\d+) rules found", promtool_stdout, re.M)
    return {Path(path).name: int(count) for path, count in pairs}


def promtool_check(mounts: Mounts, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    root = tmp_path / "container"
    lay_out(mounts, root)
    config = rerooted(root / PROMETHEUS_CONFIG.relative_to("/"), root)
    return subprocess.run(
        [PROMTOOL, "check", "config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")


@needs_promtool
def test_the_compose_prometheus_loads_every_shipped_rule_and_no_test_file(tmp_path: Path) -> None:
    mounts = compose_mounts("prometheus")
    assert PROMETHEUS_CONFIG in mounts, "docker-compose.yml no longer mounts a Prometheus config"
    result = promtool_check(mounts, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert loaded_rule_counts(result.stdout) == shipped_rule_counts(), result.stdout


@needs_promtool
@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-multi-target.yml"])
def test_a_deploy_config_loads_every_shipped_rule_and_no_test_file(
    config: str, tmp_path: Path
) -> None:
    """Mounted as its header says: alerts/ where docker-compose.yml puts it, this file in the
    place of the compose config."""
    text = (ROOT / "deploy" / config).read_text()
    assert "Mount alerts/ at /etc/prometheus/rules" in text
    mounts = compose_mounts("prometheus") | {PROMETHEUS_CONFIG: ROOT / "deploy" / config}
    result = promtool_check(mounts, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert loaded_rule_counts(result.stdout) == shipped_rule_counts(), result.stdout


def test_every_shipped_prometheus_config_is_checked_here() -> None:
    """A new config under deploy/ gets a case above, or this fails."""
    shipped = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "deploy").rglob("*.y*ml")
        if any(
            isinstance(document, dict) and "rule_files" in document
            for document in yaml.safe_load_all(path.read_text())
        )
    }
    checked = {"deploy/prometheus.yml", "deploy/prometheus-multi-target.yml"}
    checked.add(compose_mounts("prometheus")[PROMETHEUS_CONFIG].relative_to(ROOT).as_posix())
    assert shipped == checked


@pytest.mark.skipif(AMTOOL is None, reason="amtool is not installed")
def test_the_compose_alertmanager_config_passes_amtool(tmp_path: Path) -> None:
    assert AMTOOL is not None
    mounts = compose_mounts("alertmanager")
    root = tmp_path / "container"
    lay_out(mounts, root)
    config = root / ALERTMANAGER_CONFIG.relative_to("/")
    result = subprocess.run(
        [AMTOOL, "check-config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    receivers = yaml.safe_load(config.read_text())["receivers"]
    assert f"{len(receivers)} receivers" in result.stdout
