"""The Helm chart without a cluster: `helm template`, Kubernetes' and the Prometheus Operator's
schemas, and what a kubelet and the operator would make of the rendered objects on this machine
(the container's mounts as files, its probes as requests, a ServiceMonitor/PodMonitor/Probe as the
Prometheus scrape config the operator generates from it)."""

from __future__ import annotations

import base64
import importlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "homepage-cms-exporter"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
TOOLS = ROOT / ".cache" / "k8s-tools"  # helm and kubectl, installed by scripts/test.sh
HELM = TOOLS / "helm"
KUBECTL = TOOLS / "kubectl"
CRDS = ROOT / ".cache" / "k8s-crds"  # @kubernetes-models/prometheus-operator, by scripts/test.sh
CRD_VALIDATOR = Path(__file__).with_name("k8s") / "validate-crds.mjs"
# The release and namespace every test renders with; the release name holds the chart's, so the
# objects are called plainly homepage-cms-exporter (as the TLS example's certificate expects).
RELEASE = "homepage-cms-exporter"
NAMESPACE = "monitoring"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest with schemas.
KUBE_VERSIONS = ("1.29", "1.37")
ENTRYPOINT = ["homepage-cms-exporter"]  # the image's ENTRYPOINT (Dockerfile)

Object = dict[str, Any]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm; its notes about the linked alerts/ and dashboards/ are dropped."""
    proc = subprocess.run([str(HELM), *args], capture_output=True, text=True, check=False)
    stderr = "".join(
        line for line in proc.stderr.splitlines(keepends=True) if "symbolic link" not in line
    )
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, stderr)


def render(values: Path | None = None, *sets: str) -> list[Object]:
    """`helm template` of the chart, as objects."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if values is not None:
        args += ["--values", str(values)]
    for item in sets:
        args += ["--set", item]
    proc = helm(*args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(objects: list[Object], kind: str, name: str | None = None) -> list[Object]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: list[Object], kind: str, name: str | None = None) -> Object:
    found = find(objects, kind, name)
    assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
    return found[0]


def builtin_problems(objects: list[Object], version: str) -> list[str]:
    """Strict validation (unknown fields refused) of every built-in kind against Kubernetes' own
    schemas for `version`, as packaged by kubernetes-validate (from the API's OpenAPI)."""
    # Imported by name: kubernetes-validate ships no type information.
    validator: Any = importlib.import_module("kubernetes_validate")
    problems = []
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        try:
            validator.validate(obj, version, strict=True)
        except Exception as exc:  # every refusal (schema, unknown kind) is a reported problem
            message = getattr(exc, "message", None) or str(exc)
            path = "/".join(str(p) for p in getattr(exc, "absolute_path", []))
            problems.append(f"{obj['kind']}/{obj['metadata']['name']} {path}: {message}")
    return problems


def crd_problems(objects: list[Object]) -> list[str]:
    """Every monitoring.coreos.com object against the operator's schemas (tests/k8s)."""
    mine = [o for o in objects if o["apiVersion"].startswith("monitoring.coreos.com/")]
    proc = subprocess.run(
        ["node", "--input-type=module", "-e", CRD_VALIDATOR.read_text()],
        input=json.dumps(mine),
        capture_output=True,
        text=True,
        cwd=CRDS,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    problems: list[str] = json.loads(proc.stdout)
    return problems


def secret_data(obj: Object) -> dict[str, bytes]:
    data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    data.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
    return data


def config_data(obj: Object) -> dict[str, bytes]:
    return {k: v.encode() for k, v in (obj.get("data") or {}).items()}


def secret(name: str, **data: str | bytes) -> Object:
    """A Secret as one that exists in the cluster before the chart is installed."""
    encoded = {
        k: base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode()
        for k, v in data.items()
    }
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded}


def config_map(name: str, **data: str) -> Object:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


@dataclass(frozen=True)
class Container:
    """The exporter's container as the kubelet would start it, its mounts under `root`."""

    argv: list[str]
    env: dict[str, str]
    root: Path
    ports: dict[str, int]
    liveness: Object
    readiness: Object

    def path(self, mount_path: str) -> Path:
        return self.root / mount_path.lstrip("/")


def _lookup(objects: list[Object], kind: str, name: str) -> dict[str, bytes]:
    found = find(objects, kind, name)
    assert found, f"the pod mounts {kind} {name}, which neither the chart nor the cluster has"
    return secret_data(found[0]) if kind == "Secret" else config_data(found[0])


def _volume_files(volume: Object, objects: list[Object]) -> tuple[dict[str, bytes], int]:
    """The files one volume holds, by relative path, and their mode."""
    known = {"name", "secret", "configMap", "projected", "emptyDir"}
    assert set(volume) <= known, f"volume {volume['name']}: cannot emulate {set(volume) - known}"

    def source(kind: str, ref: Object, name_key: str) -> dict[str, bytes]:
        data = _lookup(objects, kind, ref[name_key])
        if "items" not in ref:
            return data
        return {item["path"]: data[item["key"]] for item in ref["items"]}

    if "secret" in volume:
        return source("Secret", volume["secret"], "secretName"), volume["secret"]["defaultMode"]
    if "configMap" in volume:
        return source("ConfigMap", volume["configMap"], "name"), volume["configMap"]["defaultMode"]
    if "projected" in volume:
        files: dict[str, bytes] = {}
        for src in volume["projected"]["sources"]:
            if "secret" in src:
                files.update(source("Secret", src["secret"], "name"))
            else:
                files.update(source("ConfigMap", src["configMap"], "name"))
        return files, volume["projected"]["defaultMode"]
    return {}, 0o1777  # emptyDir


def materialize(
    objects: list[Object], folder: Path, *, gid: int, rewrite: dict[str, str] | None = None
) -> Container:
    """Write the container's mounted files under `folder` as the kubelet would: owned by root,
    group `gid` (the pod's fsGroup), each volume's mode, read-only folders. Mount paths in env
    values and in the mounted files are moved under `folder`; `rewrite` replaces other strings
    (the database's address) in both."""
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = sorted(container["volumeMounts"], key=lambda m: -len(m["mountPath"]))
    moves = {m["mountPath"]: str(folder / m["mountPath"].lstrip("/")) for m in mounts}

    # One pass, longest mount first: a mount path never matches inside a moved one.
    pattern = re.compile(
        r"(?<![\w/.-])(" + "|".join(re.escape(m) for m in moves) + r")(?=/|$|[\"'\s])"
    )

    def translate(text: str) -> str:
        text = pattern.sub(lambda match: moves[match.group(1)], text)
        for old, new in (rewrite or {}).items():
            text = text.replace(old, new)
        return text

    for mount in mounts:
        files, mode = _volume_files(volumes[mount["name"]], objects)
        target = folder / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        for relative, content in files.items():
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                text = translate(content.decode())
            except UnicodeDecodeError:
                path.write_bytes(content)
            else:
                path.write_text(text)
            if os.geteuid() == 0:
                os.chown(path, 0, gid)
            path.chmod(mode)
        if "emptyDir" in volumes[mount["name"]]:
            target.chmod(0o1777)
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_dir() and path.stat().st_mode & 0o7777 != 0o1777:
            path.chmod(0o555)
    env = {}
    for item in container["env"]:
        assert "valueFrom" not in item, f"env {item['name']}: from another object, not a value"
        env[item["name"]] = translate(str(item["value"]))
    return Container(
        argv=[*(container.get("command") or ENTRYPOINT), *container.get("args", [])],
        env=env,
        root=folder,
        ports={p["name"]: p["containerPort"] for p in container["ports"]},
        liveness=container["livenessProbe"],
        readiness=container["readinessProbe"],
    )


def _relabel(config: Object) -> Object:
    """A monitoring.coreos.com RelabelConfig as Prometheus's relabel_config."""
    names = {
        "sourceLabels": "source_labels",
        "targetLabel": "target_label",
        "replacement": "replacement",
        "action": "action",
        "regex": "regex",
        "separator": "separator",
        "modulus": "modulus",
    }
    assert set(config) <= set(names), f"relabeling: cannot emulate {set(config) - set(names)}"
    out = {names[k]: v for k, v in config.items()}
    if "action" in out:
        out["action"] = out["action"].lower()
    return out


class Scrape:
    """What the operator turns monitoring.coreos.com objects into, pointed at one address
    (the Service's, or the pod's): Prometheus scrape configs. Secret references become files."""

    def __init__(self, objects: list[Object], address: str, folder: Path) -> None:
        self.objects = objects
        self.address = address
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _secret_file(self, ref: Object) -> str:
        content = _lookup(self.objects, "Secret", ref["name"])[ref["key"]]
        path = self.folder / f"{ref['name']}-{ref['key']}"
        path.write_bytes(content)
        return str(path)

    def _auth(self, spec: Object, job: Object) -> None:
        if "tlsConfig" in spec:
            tls = spec["tlsConfig"]
            known = {"ca", "serverName", "insecureSkipVerify"}
            assert set(tls) <= known, f"tlsConfig: cannot emulate {set(tls) - known}"
            out: Object = {}
            if "ca" in tls:
                out["ca_file"] = self._secret_file(tls["ca"]["secret"])
            if "serverName" in tls:
                out["server_name"] = tls["serverName"]
            if "insecureSkipVerify" in tls:
                out["insecure_skip_verify"] = tls["insecureSkipVerify"]
            job["tls_config"] = out
        if "basicAuth" in spec:
            auth = spec["basicAuth"]
            username = Path(self._secret_file(auth["username"])).read_text()
            job["basic_auth"] = {
                "username": username,
                "password_file": self._secret_file(auth["password"]),
            }

    def _endpoints(self, kind: str, monitor: Object, key: str, default_job: str) -> list[Object]:
        jobs = []
        known = {"port", "path", "scheme", "interval", "scrapeTimeout", "params", "relabelings",
                 "metricRelabelings", "tlsConfig", "basicAuth"}  # fmt: skip
        meta = monitor["metadata"]
        for index, ep in enumerate(monitor["spec"][key]):
            assert set(ep) <= known, f"{kind} endpoint: cannot emulate {set(ep) - known}"
            job: Object = {
                "job_name": f"{kind.lower()}/{meta['namespace']}/{meta['name']}/{index}",
                "metrics_path": ep.get("path", "/metrics"),
                "scheme": ep.get("scheme", "http"),
                "scrape_interval": ep["interval"],
                "scrape_timeout": ep["scrapeTimeout"],
                "static_configs": [{"targets": [self.address]}],
                # The operator's own first: job is the Service's name (the PodMonitor's).
                "relabel_configs": [
                    {"target_label": "job", "replacement": default_job},
                    *(_relabel(r) for r in ep.get("relabelings", [])),
                ],
            }
            if "params" in ep:
                job["params"] = ep["params"]
            if "metricRelabelings" in ep:
                job["metric_relabel_configs"] = [_relabel(r) for r in ep["metricRelabelings"]]
            self._auth(ep, job)
            jobs.append(job)
        return jobs

    def configs(self) -> list[Object]:
        jobs: list[Object] = []
        service = one(self.objects, "Service")
        pod = one(self.objects, "Deployment")["spec"]["template"]
        for monitor in find(self.objects, "ServiceMonitor"):
            selector = monitor["spec"]["selector"]["matchLabels"]
            labels = service["metadata"]["labels"]
            assert selector.items() <= labels.items(), "the ServiceMonitor selects no Service"
            ports = {p["name"] for p in service["spec"]["ports"]}
            assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
            name = service["metadata"]["name"]
            jobs += self._endpoints("ServiceMonitor", monitor, "endpoints", name)
        for monitor in find(self.objects, "PodMonitor"):
            selector = monitor["spec"]["selector"]["matchLabels"]
            assert selector.items() <= pod["metadata"]["labels"].items(), "selects no pod"
            meta = monitor["metadata"]
            default = f"{meta['namespace']}/{meta['name']}"
            jobs += self._endpoints("PodMonitor", monitor, "podMetricsEndpoints", default)
        for probe in find(self.objects, "Probe"):
            spec = probe["spec"]
            port = service["spec"]["ports"][0]["port"]
            svc = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port}"
            assert spec["prober"]["url"] == svc, "the Probe's prober is not the chart's Service"
            job = {
                "job_name": spec["jobName"],
                "metrics_path": spec["prober"]["path"],
                "scheme": spec["prober"]["scheme"],
                "scrape_interval": spec["interval"],
                "scrape_timeout": spec["scrapeTimeout"],
                "static_configs": [{"targets": spec["targets"]["staticConfig"]["static"]}],
                # The operator's relabeling for a static Probe: the target is a parameter and
                # the instance, the prober (the Service) is the address.
                "relabel_configs": [
                    {"source_labels": ["__address__"], "target_label": "__param_target"},
                    {"source_labels": ["__param_target"], "target_label": "instance"},
                    {"target_label": "__address__", "replacement": self.address},
                ],
            }
            if "metricRelabelings" in spec:
                job["metric_relabel_configs"] = [_relabel(r) for r in spec["metricRelabelings"]]
            self._auth(spec, job)
            jobs.append(job)
        return jobs


def unprivileged_python(user_ids: tuple[int, int] | None) -> tuple[list[str], dict[str, str]]:
    """A wrapper for tests.harness.Exporter that runs the exporter as `user_ids` (uid, gid),
    and the environment it needs: this venv's packages on a Python that user can execute (a
    venv under /root is not), since the exporter runs from this working tree."""
    if user_ids is None:
        return [], {}
    uid, gid = user_ids
    drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    site = next(p for p in sys.path if p.endswith("site-packages") and "venv" in p)
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{site}"}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (os.path.realpath(sys.executable), f"/usr/bin/{version}"):
        wrapper = [*drop, "sh", "-c", f'shift; exec {python} "$@"', "sh"]
        check = subprocess.run(
            [*wrapper, sys.executable, "-c", "import exporter.cli, asyncpg, aiohttp, uvloop"],
            env={**os.environ, **env},
            capture_output=True,
            check=False,
        )
        if check.returncode == 0:
            # The harness starts [sys.executable, -m, exporter, ...]: swap the interpreter.
            return wrapper, env
    raise AssertionError(f"uid {uid} can run no Python with this venv's packages ({site})")


def kubectl_kustomize(folder: Path) -> list[Object]:
    proc = subprocess.run(
        [str(KUBECTL), "kustomize", str(folder)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
