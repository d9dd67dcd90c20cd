"""Test harness: the real exporter as a subprocess, scraped over real HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from exporter.demo.cluster import Cluster, free_port

EXPORTER_PASSWORD = "exporter-s3cret-pw"


@dataclass(frozen=True)
class Scrape:
    """One parsed /metrics page."""

    text: str

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        for family in text_string_to_metric_families(self.text):
            for sample in family.samples:
                yield sample.name, dict(sample.labels), sample.value

    def get(self, name: str, **labels: str) -> float | None:
        """The value of the one sample with this name and (at least) these labels."""
        found = [
            v
            for n, ls, v in self.samples()
            if n == name and all(ls.get(k) == want for k, want in labels.items())
        ]
        assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
        return found[0] if found else None

    def all(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {tuple(sorted(ls.items())): v for n, ls, v in self.samples() if n == name}


def http_get(
    url: str,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
    timeout: float = 5.0,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    # S310: tests only ever build http://127.0.0.1 URLs.
    request = urllib.request.Request(url, headers=dict(headers or {}), method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310 - loopback http
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, step: float = 0.1
) -> object:
    """Poll until `predicate()` is truthy; fail the test with `what` otherwise."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            last = predicate()
            if last:
                return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Exporter:
    """`homepage-cms-exporter` started as its own process on a free loopback port."""

    def __init__(
        self,
        env: Mapping[str, str],
        args: tuple[str, ...] = ("run",),
        *,
        scheme: str = "http",
        context: ssl.SSLContext | None = None,
        headers: Mapping[str, str] | None = None,
        wrapper: tuple[str, ...] = (),
        ipv6: bool = False,
    ) -> None:
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.context = context
        self.headers = dict(headers or {})
        self._log = tempfile.NamedTemporaryFile(prefix="exporter-", suffix=".log", delete=False)  # noqa: SIM115
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("HOMEPAGE_EXPORTER_") and k != "DATABASE_URL"
        }
        # With `ipv6`, on ::1 as well (the same port): two client addresses on loopback.
        listen = f"127.0.0.1:{self.port}" + (f",[::1]:{self.port}" if ipv6 else "")
        full_env.update({"HOMEPAGE_EXPORTER_LISTEN_ADDRESS": listen, **env})
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "exporter", *args],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            cwd=tempfile.gettempdir(),
        )

    @property
    def logs(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def wait_healthy(self, timeout: float = 15.0) -> Exporter:
        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited {self.proc.returncode}:\n{self.logs}")
            return self.get("/healthz", timeout=1.0)[0] == 200

        wait_for(healthy, timeout, "exporter /healthz")
        return self

    def get(
        self, path: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, dict[str, str], bytes]:
        """GET with this exporter's TLS context and default headers (credentials)."""
        return http_get(
            self.url + path,
            {**self.headers, **(headers or {})},
            timeout=timeout,
            context=self.context,
        )

    def scrape(self, headers: Mapping[str, str] | None = None) -> Scrape:
        status, _, body = self.get("/metrics", headers)
        assert status == 200, body
        return Scrape(body.decode())

    def wait_metric(
        self, name: str, want: Callable[[float | None], bool], timeout: float, **labels: str
    ) -> Scrape:
        def check() -> Scrape | None:
            scrape = self.scrape()
            return scrape if want(scrape.get(name, **labels)) else None

        result = wait_for(check, timeout, f"{name}{labels}")
        assert isinstance(result, Scrape)
        return result

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"exporter ignored {sig.name} for {timeout}s") from None
        return self.proc.returncode

    def close(self) -> None:
        with contextlib.suppress(AssertionError):
            self.stop()
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)


TICK = """\
  - name: tick
    help: A value that changes every run.
    sql: SELECT extract(epoch FROM clock_timestamp()) AS now
    interval: 1s
    timeout: 1s
    metrics:
      - name: test_tick_seconds
        help: Server clock at the last run.
        value: now
"""


def self_signed_cert(folder: Path, common_name: str = "localhost") -> tuple[Path, Path]:
    """A throwaway certificate and key (openssl), valid for `common_name` as name and IP."""
    san = f"IP:{common_name}" if common_name[0].isdigit() else f"DNS:{common_name}"
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={common_name}", "-addext", f"subjectAltName={san}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def serve_tls(cluster: Cluster) -> None:
    """Give an initdb'd (not yet started) cluster a self-signed certificate and `ssl = on`."""
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = self_signed_cert(Path(tmp))
        cert, key = cert_file.read_bytes(), key_file.read_bytes()
    cert_path = cluster.write_private("server.crt", cert)
    key_path = cluster.write_private("server.key", key)
    with (cluster.datadir / "postgresql.conf").open("a") as conf:
        conf.write(f"ssl = on\nssl_cert_file = '{cert_path}'\nssl_key_file = '{key_path}'\n")


@contextlib.contextmanager
def running(
    argv: list[str], log: Path, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A program running for the block, its output in `log`; terminated (then killed) after."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_ready(argv: list[str], log: Path, url: str) -> Iterator[subprocess.Popen[bytes]]:
    """Prometheus or Alertmanager (`argv`) running for the block, entered once `url`/-/ready
    answers 200: both listen, and answer 503, before they are ready (loaded rules, storage)."""
    with running(argv, log) as proc:

        def ready() -> bool:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"{argv[0]} exited {proc.returncode}:\n{tail}")
            return http_get(f"{url}/-/ready", timeout=1.0)[0] == 200

        wait_for(ready, 60, f"{argv[0]} {url}/-/ready")
        yield proc


def write_queries(path: Path, body: str) -> Path:
    path.write_text("version: 1\nqueries:\n" + body)
    return path


def exporter_env(database_url: str, queries: Path | None = None, **extra: str) -> dict[str, str]:
    env = {
        "HOMEPAGE_EXPORTER_DATABASE_URL": database_url,
        "HOMEPAGE_EXPORTER_PING_INTERVAL": "1s",
        "HOMEPAGE_EXPORTER_CONNECT_TIMEOUT": "2s",
    }
    if queries is not None:
        env["HOMEPAGE_EXPORTER_QUERIES_FILE"] = str(queries)
    env.update({f"HOMEPAGE_EXPORTER_{k.upper()}": v for k, v in extra.items()})
    return env
