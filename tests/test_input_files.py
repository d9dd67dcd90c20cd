"""Every file a user names, pointed at what is not a config file: a device that never ends, a
FIFO nobody writes, a directory, too many bytes, a byte that is not UTF-8. Each is refused at
load with one line naming the file (and the line or key where there is one), never read
whole, never waited on; `check` exits 2 without a traceback. And the values a file may hold
that the loader used to pass and the database or TLS then refused on every run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest

from exporter.config import load_config
from exporter.durations import parse_duration
from exporter.errors import ConfigError
from exporter.files import MAX_FILE_BYTES
from exporter.settings import BIGINT_MAX, MAX_PASSWORD_FILE_BYTES, load_settings
from exporter.targets import load_targets
from exporter.webconfig import BCRYPT_HASH, load_web_config
from tests.harness import self_signed_cert, write_queries

URL = "postgresql://exporter@127.0.0.1:1/cms"


def fifo(folder: Path) -> Path:
    path = folder / "fifo"
    os.mkfifo(path)
    return path


def huge(folder: Path, size: int) -> Path:
    path = folder / "huge"
    with path.open("wb") as file:
        file.truncate(size)  # sparse: the size is what the loader sees first
    return path


def not_utf8(folder: Path) -> Path:
    path = folder / "latin1"
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    return path


def one_query(folder: Path, extra: str) -> Path:
    """A queries file of one good query with `extra` lines (indented as its keys) inserted
    after its timeout, on line 8."""
    return write_queries(
        folder / "q.yaml",
        "  - name: one\n    help: One.\n    sql: SELECT 1 AS v\n    interval: 30s\n"
        f"    timeout: 5s\n{extra}    metrics:\n      - {{name: test_one, help: One., value: v}}\n",
    )


# What each hostile path is, and what the one-line error must say about it.
HOSTILE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "device": (lambda _: Path("/dev/zero"), "not a regular file"),
    "fifo": (fifo, "not a regular file"),
    "directory": (lambda folder: folder, "is a directory"),
    "over the cap": (lambda folder: huge(folder, MAX_FILE_BYTES + 1), "the limit is"),
    "not UTF-8": (not_utf8, "not UTF-8 text"),
}


def set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name in [n for n in os.environ if n.startswith("HOMEPAGE_EXPORTER_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for name, value in values.items():
        monkeypatch.setenv(f"HOMEPAGE_EXPORTER_{name}", value)


@pytest.mark.timeout(20)  # a reader that waits on the FIFO fails here, not at the suite's 180 s
@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("where", ["queries", "targets", "web config", "env file"])
def test_a_file_that_is_not_a_config_file_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, kind: str
) -> None:
    make, says = HOSTILE[kind]
    path = make(tmp_path)
    monkeypatch.chdir(tmp_path)
    set_env(monkeypatch, DATABASE_URL=URL)
    if where == "targets":
        set_env(monkeypatch, TARGETS_FILE=str(path))
    load: dict[str, Callable[[], object]] = {
        "queries": lambda: load_config(path),
        "targets": lambda: load_targets(load_settings()),
        "web config": lambda: load_web_config(path),
        "env file": lambda: load_settings(env_file=path),
    }
    with pytest.raises(ConfigError) as caught:
        load[where]()
    message = str(caught.value)
    assert message.startswith(str(path)), message
    assert says in message
    if kind == "not UTF-8":
        assert message.startswith(f"{path}:2:"), message  # the line of the bad byte


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", HOSTILE)
def test_a_password_file_that_is_not_a_password_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    make, says = HOSTILE[kind]
    path = make(tmp_path)
    if kind == "over the cap":
        path = huge(tmp_path, MAX_PASSWORD_FILE_BYTES + 1)
    set_env(monkeypatch, DATABASE_URL=URL, DATABASE_PASSWORD_FILE=str(path))
    with pytest.raises(ConfigError) as caught:
        load_targets(load_settings())
    message = str(caught.value)
    assert message.startswith("setting HOMEPAGE_EXPORTER_DATABASE_PASSWORD_FILE: cannot read")
    assert says in message


def test_a_targets_password_file_is_named_by_its_target_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It used to be blamed on HOMEPAGE_EXPORTER_DATABASE_PASSWORD_FILE, which is not set."""
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        "targets:\n"
        f"  - name: eu\n    database_url: {URL}\n"
        f"  - name: us\n    database_url: {URL}\n    database_password_file: /nonexistent\n"
    )
    set_env(monkeypatch, TARGETS_FILE=str(targets))
    with pytest.raises(ConfigError) as caught:
        load_targets(load_settings())
    assert str(caught.value) == (
        f"{targets}:6: targets.us.database_password_file: cannot read /nonexistent: no such file"
    )


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["device", "fifo", "directory"])
@pytest.mark.parametrize("key", ["cert_file", "key_file", "client_ca_file"])
def test_tls_material_that_is_not_a_file_names_the_key(tmp_path: Path, kind: str, key: str) -> None:
    cert, private = self_signed_cert(tmp_path, "127.0.0.1")
    files = {"cert_file": cert, "key_file": private, "client_ca_file": cert}
    files[key] = HOSTILE[kind][0](tmp_path)
    web = tmp_path / "web.yml"
    web.write_text(
        "tls_server_config:\n"
        + "".join(f"  {k}: {v}\n" for k, v in files.items())
        + "  client_auth_type: RequireAndVerifyClientCert\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_web_config(web)
    message = str(caught.value)
    assert message.startswith(f"{web}: tls_server_config.{key}: {files[key]}: "), message
    assert HOSTILE[kind][1] in message


def test_an_encrypted_key_is_refused_not_prompted_for(tmp_path: Path) -> None:
    """OpenSSL, given no password callback, asks for the passphrase on the terminal."""
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "1", "-subj", "/CN=x",
         "-keyout", str(key), "-out", str(cert), "-passout", "pass:secret"],
        check=True, capture_output=True,
    )  # fmt: skip
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    with pytest.raises(ConfigError, match=r"tls_server_config\.key_file: .* is encrypted"):
        load_web_config(web)


def test_tls_versions_that_leave_no_handshake_are_refused(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path, "127.0.0.1")
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        "  min_version: TLS13\n  max_version: TLS12\n"
    )
    with pytest.raises(
        ConfigError, match=r"web\.yml:2: tls_server_config: min_version TLS13 is above"
    ):
        load_web_config(web)


def a_hash(cost: int = 4) -> str:
    return bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=cost)).decode()


@pytest.mark.parametrize(
    "hashed",
    [
        "$2y$99$" + a_hash()[7:],  # no such cost
        "$2y$03$" + a_hash()[7:],
        "$2y$10$" + "!" * 53,  # not bcrypt's alphabet
        a_hash()[:28] + "z" + a_hash()[29:],  # a salt whose last character carries 6 bits
    ],
    ids=["cost-99", "cost-3", "alphabet", "salt-tail"],
)
def test_a_hash_bcrypt_would_refuse_at_every_request_is_refused_at_load(
    tmp_path: Path, hashed: str
) -> None:
    """Each was accepted, then every request for that user was a 500 ("Invalid salt")."""
    with pytest.raises(ValueError, match="Invalid salt"):
        bcrypt.checkpw(b"secret", hashed.encode())
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    with pytest.raises(
        ConfigError, match=r"web\.yml:2: basic_auth_users: user 'prometheus': expected a bcrypt"
    ):
        load_web_config(web)


def test_every_hash_bcrypt_makes_is_accepted() -> None:
    """The pattern is bcrypt's own: 200 salts (every value of the salt's last character), and
    the prefixes htpasswd and other tools write."""
    for _ in range(200):
        hashed = a_hash()
        for prefix in ("$2a$", "$2b$", "$2y$"):
            assert BCRYPT_HASH.fullmatch(prefix + hashed[4:]), hashed


def test_a_user_name_with_a_colon_is_refused(tmp_path: Path) -> None:
    """Basic credentials split at the first colon: "a:b" could never log in."""
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  'a:b': '{a_hash()}'\n")
    with pytest.raises(ConfigError, match="cannot contain ':'"):
        load_web_config(web)


@pytest.mark.parametrize(
    ("env", "where"),
    [
        ({"MEDIA_STORAGE_QUOTA_BYTES": str(BIGINT_MAX + 1)}, "MEDIA_STORAGE_QUOTA_BYTES"),
        ({"MAX_SERIES_PER_QUERY": str(BIGINT_MAX + 1)}, "MAX_SERIES_PER_QUERY"),
    ],
    ids=["quota", "series"],
)
def test_a_number_past_postgresql_bigint_is_refused_at_load(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], where: str
) -> None:
    """It passed `check` and failed every run in the database ("bigint out of range")."""
    set_env(monkeypatch, DATABASE_URL=URL, **env)
    with pytest.raises(ConfigError, match=f"setting HOMEPAGE_EXPORTER_{where}: "):
        load_settings()


def test_a_targets_quota_past_bigint_names_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        f"targets:\n  - name: eu\n    database_url: {URL}\n"
        f"    media_storage_quota_bytes: {BIGINT_MAX + 1}\n"
    )
    set_env(monkeypatch, TARGETS_FILE=str(targets))
    with pytest.raises(ConfigError, match=r"targets\.yaml:4: targets\.eu\.media_storage_quota"):
        load_targets(load_settings())


def test_max_series_past_bigint_is_refused_in_queries_yaml(tmp_path: Path) -> None:
    queries = one_query(tmp_path, f"    max_series: {BIGINT_MAX + 1}\n")
    with pytest.raises(ConfigError, match=r"q\.yaml:8: queries\.one\.max_series"):
        load_config(queries)


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["QUERIES_FILE", "WEB_CONFIG_FILE", "TARGETS_FILE"])
def test_check_on_dev_zero_exits_2_at_once(setting: str) -> None:
    """The command a user runs: it read /dev/zero until MemoryError, with a traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEPAGE_EXPORTER_")}
    env.update({"HOMEPAGE_EXPORTER_DATABASE_URL": URL, f"HOMEPAGE_EXPORTER_{setting}": "/dev/zero"})
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "/dev/zero: not a regular file" in result.stderr, result.stderr


# --- values: each was accepted and then meant something else, or failed later --------------


@pytest.mark.parametrize("text", ["\uff13\uff10s", "1\u0665m"], ids=["full-width", "arabic-indic"])
def test_a_duration_in_other_digits_is_refused(text: str) -> None:
    """float() reads full-width and Arabic-Indic digits; a config file's reader should not."""
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LISTEN_ADDRESS": "127.0.0.1:\uff11\uff10\uff11\uff18\uff17"}, 'expected "host:port"'),
        ({"DATABASE_URL": "postgresql://u@127.0.0.1:99999/cms"}, "the port is out of range"),
        # How Python hands over an environment variable holding the byte 0xff.
        ({"DATABASE_URL": "postgresql://u@127.0.0.1/caf\udcff"}, "bytes that are not UTF-8"),
    ],
    ids=["full-width-port", "port-out-of-range", "url-not-utf8"],
)
def test_a_setting_that_would_fail_later_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    set_env(monkeypatch)
    for name, value in env.items():
        monkeypatch.setattr(os, "environ", {**os.environ, f"HOMEPAGE_EXPORTER_{name}": value})
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(f"setting HOMEPAGE_EXPORTER_{next(iter(env))}: ")
    assert expected in str(caught.value)


@pytest.mark.parametrize("version", ["true", "1.0", "'1'"])
def test_a_version_that_only_equals_1_is_refused(tmp_path: Path, version: str) -> None:
    queries = tmp_path / "q.yaml"
    queries.write_text(f"version: {version}\nqueries: []\n")
    with pytest.raises(ConfigError, match=r"q\.yaml:1: version: .*expected (the integer )?1"):
        load_config(queries)


def test_each_names_the_parameter_as_written(tmp_path: Path) -> None:
    queries = one_query(tmp_path, "    each: locales\n")
    with pytest.raises(ConfigError) as caught:
        load_config(queries)
    assert "queries.one.each: 'locales' is not one of the query's params" in str(caught.value)


def test_a_target_with_no_locales_is_refused_not_given_the_global_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    targets = tmp_path / "targets.yaml"
    targets.write_text(f"targets:\n  - name: eu\n    database_url: {URL}\n    locales: []\n")
    set_env(monkeypatch, TARGETS_FILE=str(targets), LOCALES="en,de")
    with pytest.raises(ConfigError, match=r"targets\.yaml:4: targets\.eu\.locales"):
        load_targets(load_settings())


@pytest.mark.parametrize("key", ["1", "~", "true", "2.5"])
def test_a_key_that_is_not_text_is_named_at_its_own_line(tmp_path: Path, key: str) -> None:
    """It was reported at the query's line as `queries.q1.None`."""
    queries = one_query(tmp_path, f"    {key}: x\n")
    with pytest.raises(ConfigError) as caught:
        load_config(queries)
    assert str(caught.value) == (
        f"{queries}:8: queries[0]: a key must be text, got {key!r} (quote it if it is a name)"
    )
