"""/metrics behind TLS and basic auth from a web-config.yml, checked with real TLS clients."""

from __future__ import annotations

import base64
import http.client
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from exporter.demo.cluster import Cluster
from exporter.errors import ConfigError
from exporter.webconfig import _DUMMY_HASH, load_web_config
from tests.conftest import exporter_dsn
from tests.harness import Exporter, exporter_env, http_get, self_signed_cert, write_queries

pytestmark = pytest.mark.slow
PASSWORD = "Sc4rape-Me"
# The password behind the hash an unknown user is checked against (so that timing does not
# tell which users exist): it is in the public source, so it is what an attacker tries first.
DUMMY_PASSWORD = "homepage-cms-exporter"
ONE = """\
  - name: one
    help: One.
    sql: SELECT 1 AS v
    interval: 1s
    timeout: 1s
    metrics:
      - {name: test_one, help: One., value: v}
"""


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"), "127.0.0.1")


def web_config(folder: Path, tls: tuple[Path, Path], *, open_health: bool) -> Path:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    hashed = hashed.replace("$2b$", "$2y$", 1)  # as htpasswd writes it
    path = folder / "web-config.yml"
    path.write_text(
        "tls_server_config:\n"
        f"  cert_file: {tls[0]}\n  key_file: {tls[1]}\n  min_version: TLS12\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
        "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
        + ("unauthenticated_paths: [/healthz]\n" if open_health else "")
    )
    return path


def client_context(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


@pytest.fixture
def secured(pg: Cluster, tmp_path: Path, tls_files: tuple[Path, Path]) -> Iterator[Exporter]:
    queries = write_queries(tmp_path / "queries.yaml", ONE)
    env = exporter_env(
        exporter_dsn(pg),
        queries,
        web_config_file=str(web_config(tmp_path, tls_files, open_health=True)),
    )
    exporter = Exporter(
        env,
        scheme="https",
        context=client_context(tls_files[0]),
        headers=basic("prometheus", PASSWORD),
    )
    try:
        yield exporter.wait_healthy()
    finally:
        exporter.close()


def test_metrics_over_tls_with_the_right_password(secured: Exporter) -> None:
    scrape = secured.wait_metric("test_one", lambda v: v == 1, 5)
    assert scrape.get("homepage_exporter_query_up", query="one") == 1
    status, headers, _ = secured.get("/metrics")
    assert status == 200
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("prometheus", "wrong"),
        basic("nobody", PASSWORD),
        basic("nobody", DUMMY_PASSWORD),
        basic("", DUMMY_PASSWORD),
        {"Authorization": "Basic !!"},
        {"Authorization": "Bearer x"},
    ],
    ids=[
        "missing",
        "wrong-password",
        "unknown-user",
        "unknown-user-dummy-password",
        "empty-user-dummy-password",
        "garbage",
        "other-scheme",
    ],
)
def test_bad_or_missing_credentials_get_401(secured: Exporter, headers: dict[str, str]) -> None:
    status, response_headers, _ = http_get(
        secured.url + "/metrics", headers, context=secured.context
    )
    assert status == 401
    assert response_headers["WWW-Authenticate"].startswith("Basic")


def test_the_dummy_password_is_the_one_behind_the_dummy_hash() -> None:
    """Else the unknown-user-dummy-password case above would try a password nothing accepts."""
    assert bcrypt.checkpw(DUMMY_PASSWORD.encode(), _DUMMY_HASH)


def test_healthz_is_open_only_when_the_file_says_so(
    pg: Cluster, tmp_path: Path, tls_files: tuple[Path, Path], secured: Exporter
) -> None:
    assert http_get(secured.url + "/healthz", context=secured.context)[0] == 200
    assert http_get(secured.url + "/readyz", context=secured.context)[0] == 401
    queries = write_queries(tmp_path / "q2.yaml", ONE)
    closed = Exporter(
        exporter_env(
            exporter_dsn(pg),
            queries,
            web_config_file=str(web_config(tmp_path, tls_files, open_health=False)),
        ),
        scheme="https",
        context=client_context(tls_files[0]),
        headers=basic("prometheus", PASSWORD),
    )
    try:
        closed.wait_healthy()  # with credentials
        assert http_get(closed.url + "/healthz", context=closed.context)[0] == 401
    finally:
        closed.close()


def test_plain_http_and_untrusted_clients_are_refused(secured: Exporter) -> None:
    def plain_http() -> int:
        connection = http.client.HTTPConnection("127.0.0.1", secured.port, timeout=3)
        connection.request("GET", "/metrics")
        return connection.getresponse().status

    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        plain_http()
    strict = ssl.create_default_context()  # does not trust our self-signed certificate
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        http_get(secured.url + "/metrics", basic("prometheus", PASSWORD), context=strict)


def test_a_cached_login_does_not_let_another_password_in(secured: Exporter) -> None:
    """The cache of good logins is keyed by the password too: once the right one got in, a
    wrong one for the same user is still checked, and refused."""
    assert secured.get("/metrics")[0] == 200  # the right password, now cached
    for password in ("wrong", DUMMY_PASSWORD, ""):
        status, _, _ = http_get(
            secured.url + "/metrics", basic("prometheus", password), context=secured.context
        )
        assert status == 401, password


def test_a_good_password_is_checked_once_then_cached(secured: Exporter) -> None:
    secured.scrape()
    t0 = time.perf_counter()
    for _ in range(20):
        secured.scrape()
    per_scrape = (time.perf_counter() - t0) / 20
    # bcrypt at cost 10 takes ~50 ms or more; a cached check is far below that.
    assert per_scrape < 0.05


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "tls_server_config:\n  cert_file: /nope.pem\n  key_file: /nope.key\n",
            "tls_server_config.cert_file: /nope.pem: no such file",
        ),
        (
            "basic_auth_users:\n  alice: plaintext\n",
            "basic_auth_users: user 'alice': expected a bcrypt hash",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [X]\n",
            "tls_server_config.cipher_suites: unknown key",
        ),
        (
            "unauthenticated_paths: [/metrics]\n",
            "web.yml:1: unauthenticated_paths[0]: Input should be",
        ),
        ("- a list\n", "expected a mapping"),
        (
            "basic_auth_users:\n  alice: $2b$04$x\n  alice: $2b$04$y\n",
            "web.yml:3: basic_auth_users.alice: duplicate key (first at line 2)",
        ),
    ],
    ids=[
        "missing-cert",
        "plain-password",
        "unsupported-key",
        "open-metrics",
        "not-mapping",
        "duplicate-user",
    ],
)
def test_bad_web_config_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert expected in str(caught.value)
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check"],
        env={"HOMEPAGE_EXPORTER_WEB_CONFIG_FILE": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
