"""The Dockerfile, without a Docker engine: parsed, its install steps replayed into a fresh
virtual environment, the installed entry point started and the HEALTHCHECK run against it."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from exporter.demo.cluster import Cluster, free_port
from exporter.settings import DEFAULT_PORT
from tests.conftest import exporter_dsn
from tests.harness import http_get, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stage:
    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.steps if ins == instruction]


def parse_dockerfile(path: Path) -> list[Stage]:
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            parts = args.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) > 2 else None))
        else:
            stages[-1].steps.append((instruction, args.strip()))
    return stages


def env_of(stage: Stage, path: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value.replace("$PATH", path)
    return env


def test_dockerfile_shape() -> None:
    stages = parse_dockerfile(ROOT / "Dockerfile")
    assert len(stages) >= 2, "multi-stage"
    final = stages[-1]
    assert all(s.base.endswith("-slim") for s in stages)
    user = final.all("USER")[-1].split(":")[0]
    assert user not in ("0", "root")
    assert final.all("EXPOSE") == [str(DEFAULT_PORT)]
    assert json.loads(final.all("ENTRYPOINT")[-1]) == ["homepage-cms-exporter"]
    healthcheck = final.all("HEALTHCHECK")[-1]
    assert json.loads(healthcheck.split("CMD", 1)[1]) == ["homepage-cms-exporter", "healthcheck"]
    assert any("--from=build" in c for c in final.all("COPY"))


def test_replayed_image_installs_runs_and_passes_its_healthcheck(
    pg: Cluster, tmp_path: Path
) -> None:
    stages = parse_dockerfile(ROOT / "Dockerfile")
    build, final = stages[0], stages[-1]
    image = tmp_path / "image"
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "python").symlink_to(sys.executable)

    def inside(path: str) -> Path:
        return image / path.lstrip("/")

    workdir = inside("/")
    for instruction, args in build.steps:
        if instruction == "WORKDIR":
            workdir = inside(args)
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY":
            *sources, dest = shlex.split(args)
            target = inside(dest) if dest.startswith("/") else workdir / dest
            for source in sources:
                src = ROOT / source
                if src.is_dir():
                    shutil.copytree(
                        src,
                        target,
                        symlinks=True,
                        dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"),
                    )
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target / src.name)
        elif instruction == "RUN":
            # Absolute paths of the image live under `image` in the replay.
            command = re.sub(r"(?<![\w.])/(opt|src)/", lambda m: f"{image}/{m.group(1)}/", args)
            result = subprocess.run(
                ["bash", "-c", command],
                cwd=workdir,
                capture_output=True,
                text=True,
                env={**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"},
                timeout=600,
                check=False,
            )
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    venv_bin = inside("/opt/venv/bin")
    assert (venv_bin / "homepage-cms-exporter").exists()
    # The runtime stage copies that venv as is; run it with the image's environment.
    env = env_of(final, os.environ["PATH"])
    env["PATH"] = env["PATH"].replace("/opt/venv/bin", str(venv_bin))
    port = free_port()
    env.update(
        {
            "HOMEPAGE_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}",  # loopback in tests
            "DATABASE_URL": exporter_dsn(pg),
            "HOMEPAGE_EXPORTER_LOCALES": "en",
        }
    )
    entrypoint = json.loads(final.all("ENTRYPOINT")[-1]) + json.loads(final.all("CMD")[-1])
    log = tmp_path / "exporter.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            entrypoint, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path
        )
    try:
        healthcheck = json.loads(final.all("HEALTHCHECK")[-1].split("CMD", 1)[1])

        def healthy() -> bool:
            assert proc.poll() is None, log.read_text()
            return (
                subprocess.run(healthcheck, env=env, capture_output=True, check=False).returncode
                == 0
            )

        wait_for(healthy, 20, "the image's HEALTHCHECK to pass")
        status, _, body = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert b"homepage_exporter_build_info" in body
        first = log.read_text().splitlines()[0]
        assert json.loads(first)["event"] in ("listening", "query_skipped")  # JSON logs
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_healthcheck_fails_when_nothing_listens() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "healthcheck"],
        env={
            "HOMEPAGE_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{free_port()}",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr


def test_compose_example_references_what_exists() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "exporter", "prometheus", "alertmanager", "grafana"} <= services.keys()
    assert services["exporter"]["build"]["context"] == "."
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    assert str(DEFAULT_PORT) in " ".join(services["exporter"].get("ports", []))
