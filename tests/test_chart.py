"""The Helm chart, with no cluster: lint, every ci/ values file rendered and validated strictly
(built-in kinds against Kubernetes' schemas, monitoring.coreos.com kinds against the operator's),
the schema refusing bad values, the rules and dashboards it carries, the plain-manifest example,
and the rendered container run as rendered against PostgreSQL and scraped by Prometheus."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.demo.cluster import Cluster, free_port, unprivileged_user
from exporter.demo.database import EXPORTER_ROLE
from exporter.settings import SHIPPED_QUERIES
from tests.conftest import CMS
from tests.harness import EXPORTER_PASSWORD, Exporter, http_get, running, self_signed_cert, wait_for
from tests.kube import (
    CHART,
    CI_VALUES,
    CRDS,
    HELM,
    KUBE_VERSIONS,
    KUBECTL,
    ROOT,
    Container,
    Object,
    Scrape,
    builtin_problems,
    config_map,
    crd_problems,
    find,
    helm,
    kubectl_kustomize,
    materialize,
    one,
    render,
    secret,
    secret_data,
    unprivileged_python,
)

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
pytestmark = [
    pytest.mark.skipif(
        not HELM.is_file(), reason="helm is installed into .cache/k8s-tools by scripts/test.sh"
    ),
    pytest.mark.slow,  # helm and kubectl as processes: the whole suite, not the daily loop
]
needs_crds = pytest.mark.skipif(
    not (CRDS / "node_modules").is_dir() or shutil.which("node") is None,
    reason="the operator's schemas are installed into .cache/k8s-crds by scripts/test.sh",
)
ids = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]
SCRAPE_PASSWORD = "scrape-s3cret-pw"  # its bcrypt hash is in ci/tls-basic-auth-values.yaml
SCRAPE_HASH = "$2b$10$YWAeySm/gSUKNwG2i0SXKucFhO7zLuqCppupv6PK.jvAS8h4swqKa"
SERVICE_DNS = "homepage-cms-exporter.monitoring.svc"
SINGLE = CHART / "ci" / "single-database-values.yaml"


def values_of(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def test_the_ci_values_files_cover_each_supported_shape() -> None:
    assert set(ids) == {
        "single-database",
        "several-databases",
        "tls-basic-auth",
        "existing-secrets",
    }


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=["defaults", *ids])
def test_helm_lint_strict_passes(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)]
    proc = helm(*args, *(["--values", str(values)] if values else []))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_every_rendered_builtin_object_passes_kubernetes_schemas_strictly(values: Path) -> None:
    objects = render(values)
    for version in KUBE_VERSIONS:
        assert builtin_problems(objects, version) == [], version


def test_the_kubernetes_schemas_refuse_an_unknown_field() -> None:
    """The validation above can fail: a misspelt field is refused."""
    objects = render(SINGLE)
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    container["readOnlyRootFileSystem"] = True
    (problem,) = builtin_problems(objects, KUBE_VERSIONS[-1])
    assert "'readOnlyRootFileSystem' was unexpected" in problem


@needs_crds
@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_every_monitoring_object_passes_the_operators_schemas(values: Path) -> None:
    objects = render(values)
    assert find(objects, "ServiceMonitor") + find(objects, "PodMonitor")
    assert crd_problems(objects) == []


@needs_crds
def test_the_operators_schemas_refuse_a_wrong_type() -> None:
    objects = render(SINGLE)
    one(objects, "ServiceMonitor")["spec"]["endpoints"][0]["interval"] = 30
    (problem,) = crd_problems(objects)
    assert "interval must be string" in problem


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("replicaCount=two", "at '/replicaCount': got string, want integer"),
        ("serviceMonitor.enabled=yes", "at '/serviceMonitor/enabled': got string, want boolean"),
        ("serviceMonitor.intervall=30s", "additional properties 'intervall' not allowed"),
        ("serviceMonitor.interval=soon", "at '/serviceMonitor/interval'"),
        ("config.databaseUrl=postgresql://u:pw@db/postgres", "at '/config/databaseUrl'"),
        ("web.basicAuthUsers.prometheus=plaintext", "at '/web/basicAuthUsers/prometheus'"),
        ("targets[0].name=Bad Name", "at '/targets/0/name'"),
    ],
)
def test_a_wrong_value_is_refused_with_the_schemas_message(setting: str, message: str) -> None:
    proc = helm("template", "x", str(CHART), "--set", setting)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("web.tls.enabled=true", "web.tls.secretName: required when web.tls.enabled is true"),
        ("config.queries=x,config.queriesConfigMap=y", "set one of them, not both"),
    ],
)
def test_inconsistent_values_are_refused_naming_the_key(setting: str, message: str) -> None:
    proc = helm("template", "x", str(CHART), "--set", setting)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif value is not None:
        yield str(value)


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_passwords_are_only_in_secrets_and_reach_the_container_as_files(values: Path) -> None:
    objects = render(values)
    rendered = json.dumps(objects)
    outside = [o for o in objects if o["kind"] != "Secret"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for password in {EXPORTER_PASSWORD, SCRAPE_PASSWORD}:
        assert not any(password in s for o in outside for s in _strings(o)), password
        assert base64.b64encode(password.encode()).decode() not in json.dumps(outside)
    assert EXPORTER_PASSWORD not in rendered or any(
        EXPORTER_PASSWORD.encode() in secret_data(s).values() for s in find(objects, "Secret")
    )
    # Not in an env value, not on the command line: a *_FILE setting names a mounted Secret.
    assert all("PASSWORD" not in e["name"] or e["name"].endswith("_FILE") for e in container["env"])
    assert container["args"] == ["run"]
    assert "command" not in container
    mounted = {m["name"] for m in container["volumeMounts"]}
    passwords = next((v for v in pod["volumes"] if v["name"] == "passwords"), None)
    if passwords is not None:
        assert "passwords" in mounted
        assert all(set(s) == {"secret"} for s in passwords["projected"]["sources"])


def test_the_pod_is_hardened_by_default() -> None:
    objects = render(None, "config.password=x")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False
    assert one(objects, "ServiceAccount")["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    # From docs/benchmarks.md: 71 MiB after the soak fits twice in the limit.
    assert container["resources"]["requests"]["memory"] == "96Mi"
    assert container["resources"]["limits"]["memory"] == "192Mi"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def _checksums(*sets: str) -> dict[str, str]:
    annotations = one(render(None, *sets), "Deployment")["spec"]["template"]["metadata"]
    return {k: v for k, v in annotations["annotations"].items() if k.startswith("checksum/")}


def test_a_changed_password_targets_file_or_web_config_rolls_the_pods() -> None:
    base = _checksums("config.password=a")
    assert _checksums("config.password=b")["checksum/secret"] != base["checksum/secret"]
    many = "targets[0].name=eu,targets[0].databaseUrl=postgresql://u@eu/db"
    assert _checksums(many)["checksum/config"] != _checksums(many + "x")["checksum/config"]
    users = f"web.basicAuthUsers.prometheus={SCRAPE_HASH}"
    assert _checksums("config.password=a", users)["checksum/secret"] != base["checksum/secret"]


def _shipped_rule_files() -> list[Path]:
    return sorted((ROOT / "alerts").glob("*.rules.yml"))


def test_the_prometheus_rules_are_the_shipped_files_and_cannot_drift() -> None:
    link = CHART / "files" / "alerts"
    assert link.is_symlink()
    assert link.resolve() == (ROOT / "alerts").resolve()
    assert (CHART / "files" / "dashboards").resolve() == (ROOT / "grafana" / "dashboards").resolve()
    rules = find(render(None, "prometheusRule.enabled=true"), "PrometheusRule")
    by_name = {r["metadata"]["name"].removeprefix("homepage-cms-exporter-"): r for r in rules}
    shipped = _shipped_rule_files()
    assert len(shipped) == 2
    assert set(by_name) == {p.name.removesuffix(".rules.yml") for p in shipped}
    for path in shipped:
        assert by_name[path.name.removesuffix(".rules.yml")]["spec"] == yaml.safe_load(
            path.read_text()
        )
    alerts = {r["alert"] for rule in rules for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}  # fmt: skip
    shipped_alerts = {
        r["alert"]
        for p in shipped
        for g in yaml.safe_load(p.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    assert alerts == shipped_alerts
    assert len(alerts) > 50


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_the_rendered_prometheus_rules_pass_promtool(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    rules = find(render(SINGLE), "PrometheusRule")
    assert rules
    files = []
    for rule in rules:
        path = tmp_path / f"{rule['metadata']['name']}.yml"
        path.write_text(yaml.safe_dump(rule["spec"]))
        files.append(str(path))
    proc = subprocess.run(
        [PROMTOOL, "check", "rules", *files], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_dashboards_are_config_maps_for_the_grafana_sidecar() -> None:
    maps = find(render(None, "dashboards.enabled=true"), "ConfigMap")
    shipped = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
    assert len(maps) == len(shipped) == 2
    for path in shipped:
        (found,) = [m for m in maps if path.name in m["data"]]
        assert found["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(found["data"][path.name]) == json.loads(path.read_text())


def test_the_probe_scrapes_every_target_once_through_the_service() -> None:
    values = values_of(CHART / "ci" / "several-databases-values.yaml")
    objects = render(CHART / "ci" / "several-databases-values.yaml")
    probe = one(objects, "Probe")["spec"]
    assert probe["targets"]["staticConfig"]["static"] == [t["name"] for t in values["targets"]]
    assert probe["prober"] == {"url": f"{SERVICE_DNS}:10187", "scheme": "http", "path": "/probe"}
    assert probe["jobName"] == "homepage-cms"
    # The ServiceMonitor then scrapes only each pod's own process metrics, not the targets again.
    (endpoint,) = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert one(objects, "Service")["spec"]["publishNotReadyAddresses"] is True


def test_the_plain_manifests_are_the_chart_rendered_again(tmp_path: Path) -> None:
    folder = ROOT / "deploy" / "kubernetes"
    out = tmp_path / "rendered.yaml"
    proc = subprocess.run(
        [str(folder / "render.sh"), str(out)],
        env={"HELM": str(HELM), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    committed = folder / "homepage-cms-exporter.yaml"
    assert out.read_text() == committed.read_text(), "stale: run deploy/kubernetes/render.sh"
    if KUBECTL.is_file():  # what `kubectl apply -k deploy/kubernetes` would send
        applied = kubectl_kustomize(folder)
        assert len(applied) == len([d for d in yaml.safe_load_all(out.read_text()) if d])
        assert builtin_problems(applied, KUBE_VERSIONS[-1]) == []


# --- the rendered container, run as rendered --------------------------------------------------


def _existing_objects(name: str, folder: Path) -> list[Object]:
    """What each ci/ shape expects to exist in the cluster before the chart is installed."""
    scrape = secret("homepage-cms-exporter-scrape", username="prometheus", password=SCRAPE_PASSWORD)
    if name == "tls-basic-auth":
        cert, key = self_signed_cert(folder, SERVICE_DNS)  # what cert-manager would issue
        tls = secret(
            "homepage-cms-exporter-tls",
            **{
                "tls.crt": cert.read_bytes(),
                "tls.key": key.read_bytes(),
                "ca.crt": cert.read_bytes(),
            },
        )
        return [tls, scrape]
    if name == "existing-secrets":
        web = {"basic_auth_users": {"prometheus": SCRAPE_HASH},
               "unauthenticated_paths": ["/healthz", "/readyz"]}  # fmt: skip
        return [
            secret("cms-shop-db", **{"exporter-password": EXPORTER_PASSWORD}),
            secret("cms-outlet-db", password=EXPORTER_PASSWORD),
            secret("homepage-cms-exporter-web", **{"web-config.yml": yaml.safe_dump(web)}),
            config_map("homepage-cms-queries", **{"queries.yaml": SHIPPED_QUERIES.read_text()}),
            scrape,
        ]
    return []


def _kubelet_probe(container: Container, probe: Object, port: int) -> int:
    """GET the probe as the kubelet does: HTTPS without verifying, no credentials."""
    get = probe["httpGet"]
    assert container.ports[get["port"]] == 10187
    context = None
    if get["scheme"] == "HTTPS":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    url = f"{get['scheme'].lower()}://127.0.0.1:{port}{get['path']}"
    return http_get(url, context=context, timeout=probe["timeoutSeconds"])[0]


def _restore_permissions(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)


@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed")
@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_the_rendered_container_runs_as_rendered_and_is_scraped(
    values: Path, pg: Cluster, tmp_path: Path
) -> None:
    assert PROMETHEUS is not None
    name = values.name.removesuffix("-values.yaml")
    objects = render(values) + _existing_objects(name, tmp_path)
    # The one thing a cluster would differ in: where the database is. Same role, same password.
    local = f"postgresql://{EXPORTER_ROLE}@127.0.0.1:{pg.port}/{CMS}"
    spec = values_of(values)
    urls = [t["databaseUrl"] for t in spec.get("targets", [])] or [spec["config"]["databaseUrl"]]
    user = unprivileged_user()
    ids_ = (user.pw_uid, user.pw_gid) if user else None
    # Not under tmp_path: pytest keeps that private to root, and the user must reach the files.
    pod = Path(tempfile.mkdtemp(prefix="homepage-pod-"))
    pod.chmod(0o755)
    try:
        container = materialize(
            objects, pod, gid=user.pw_gid if user else 0, rewrite=dict.fromkeys(urls, local)
        )
        _run_and_scrape(objects, container, ids_, tmp_path, expected_databases=len(urls))
    finally:
        _restore_permissions(pod)
        shutil.rmtree(pod)


def _run_and_scrape(
    objects: list[Object],
    container: Container,
    user: tuple[int, int] | None,
    tmp: Path,
    expected_databases: int,
) -> None:
    env = dict(container.env)
    assert env.pop("HOMEPAGE_EXPORTER_LISTEN_ADDRESS") == ":10187"  # the harness's loopback port
    assert container.argv == ["homepage-cms-exporter", "run"]
    wrapper, python_env = unprivileged_python(user)
    tls = env.get("HOMEPAGE_EXPORTER_WEB_CONFIG_FILE") and container.liveness["httpGet"]["scheme"]
    scheme = "https" if tls == "HTTPS" else "http"
    context = None
    if scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    # The image's user has no home: HOME is / in the container (here: the read-only pod root).
    env["HOME"] = str(container.root)
    exporter = Exporter(
        {**env, **python_env},
        tuple(container.argv[1:]),
        scheme=scheme,
        context=context,
        wrapper=tuple(wrapper),
    )
    try:
        exporter.wait_healthy(30)
        assert _kubelet_probe(container, container.liveness, exporter.port) == 200
        wait_for(
            lambda: _kubelet_probe(container, container.readiness, exporter.port) == 200,
            30,
            "the readiness probe (every database reachable)",
        )
        if user is not None:  # really not root
            status = Path(f"/proc/{exporter.proc.pid}/status").read_text()
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert uid_line.split()[1:] == [str(user[0])] * 4, uid_line
        _scrape_with_prometheus(objects, exporter, tmp, expected_databases)
    except BaseException:
        print(exporter.logs)
        raise
    finally:
        exporter.close()


def _scrape_with_prometheus(
    objects: list[Object], exporter: Exporter, tmp: Path, expected_databases: int
) -> None:
    assert PROMETHEUS is not None
    jobs = Scrape(objects, f"127.0.0.1:{exporter.port}", tmp / "prometheus-secrets").configs()
    for job in jobs:  # the same config, scraping every second so the test need not wait
        job.update(scrape_interval="1s", scrape_timeout="1s")
    targets = sum(len(j["static_configs"][0]["targets"]) for j in jobs)
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": jobs}))
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def api(path: str, **params: str) -> Any:
        status, _, body = http_get(f"{base}/api/v1/{path}?" + urllib.parse.urlencode(params))
        assert status == 200, body
        return json.loads(body)["data"]

    def healthy() -> list[Object] | None:
        if http_get(f"{base}/-/ready")[0] != 200:  # 503 while it starts
            return None
        active = api("targets", state="active")["activeTargets"]
        ok = len(active) == targets and all(t["health"] == "up" for t in active)
        return active if ok else None

    with running(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp / "prometheus.log",
    ):
        try:
            wait_for(healthy, 30, f"{targets} scrape targets up")
        except AssertionError:
            raise AssertionError(
                json.dumps(api("targets", state="active")["activeTargets"], indent=1)
            ) from None
        found = wait_for(
            lambda: api("query", query='homepage_exporter_database_up{job="homepage-cms"} == 1')[
                "result"
            ],
            30,
            "database_up from every database",
        )
        assert isinstance(found, list)
        wait_for(
            lambda: (
                len(
                    api("query", query='homepage_exporter_database_up{job="homepage-cms"} == 1')[
                        "result"
                    ]
                )
                == expected_databases
            ),
            30,
            f"database_up == 1 for {expected_databases} databases",
        )
