"""The web configuration file: TLS and basic auth for the HTTP side, in the format of the
Prometheus exporter-toolkit's web-config.yml (plus `unauthenticated_paths`, ours)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import ssl
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Literal, Self

import bcrypt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from exporter.errors import ConfigError
from exporter.files import Unreadable, read_bytes
from exporter.yamlfile import read_yaml

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
ClientAuth = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]
# What bcrypt accepts: a cost of 4 to 31, a 22-character salt whose last character carries
# only two bits (so one of .Oeu) and the 31-character digest. Anything else is refused by
# bcrypt.checkpw at every request ("Invalid salt"): a 500 for each scrape, not a load error.
BCRYPT_HASH = re.compile(
    r"\$2[aby]\$(?:0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{21}[.Oeu][./A-Za-z0-9]{31}"
)
# A bcrypt hash to check against when the user is unknown, so timing does not reveal users.
_DUMMY_HASH = bcrypt.hashpw(b"homepage-cms-exporter", bcrypt.gensalt(rounds=10))
_CACHE_SIZE = 256


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSServerConfig(_Strict):
    cert_file: Path
    key_file: Path
    client_auth_type: ClientAuth = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS12"
    max_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS13"

    @model_validator(mode="after")
    def _versions_overlap(self) -> Self:
        if self.min_version > self.max_version:  # TLS10 < TLS11 < TLS12 < TLS13, as strings
            raise ValueError(
                f"min_version {self.min_version} is above max_version {self.max_version}:"
                " no handshake could ever complete"
            )
        return self


# The response headers exporter-toolkit lets a web config set, and the values it accepts.
SECURITY_HEADERS: dict[str, frozenset[str] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": frozenset({"deny", "sameorigin"}),
    "X-Content-Type-Options": frozenset({"nosniff"}),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}


class HTTPServerConfig(_Strict):
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _security_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        known = {name.lower(): name for name in SECURITY_HEADERS}
        clean: dict[str, str] = {}
        for name, value in headers.items():
            canonical = known.get(name.lower())
            if canonical is None:
                raise ValueError(
                    f"header {name!r} cannot be set; allowed: {', '.join(SECURITY_HEADERS)}"
                )
            if not value.isascii() or not value.isprintable():
                raise ValueError(
                    f"header {canonical}: the value must be printable ASCII on one line"
                )
            allowed = SECURITY_HEADERS[canonical]
            if allowed is not None and value.lower() not in allowed:
                expected = ", ".join(sorted(allowed))
                raise ValueError(f"header {canonical}: expected one of {expected}, got {value!r}")
            if value:  # blank means unset, as in exporter-toolkit
                clean[canonical] = value
        return clean


class WebConfigFile(_Strict):
    tls_server_config: TLSServerConfig | None = None
    basic_auth_users: dict[str, str] = Field(default_factory=dict)
    http_server_config: HTTPServerConfig = Field(default_factory=HTTPServerConfig)
    unauthenticated_paths: tuple[Literal["/healthz", "/readyz"], ...] = ()

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, users: dict[str, str]) -> dict[str, str]:
        for user, hashed in users.items():
            if ":" in user:  # Basic credentials are split at the first colon (RFC 7617)
                raise ValueError(f"user {user!r}: a user name cannot contain ':'")
            if not BCRYPT_HASH.fullmatch(hashed):
                raise ValueError(
                    f"user {user!r}: expected a bcrypt hash ($2y$10$ and 53 characters of"
                    " ./A-Za-z0-9), got something else (hash it with:"
                    " htpasswd -nBC 10 '' | tr -d ':\\n')"
                )
        return users


class WebConfig:
    """A validated web config: the TLS context to serve with and the auth check."""

    __slots__ = ("_lock", "_verified", "headers", "open_paths", "ssl_context", "users")

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        users: dict[str, bytes] | None = None,
        headers: dict[str, str] | None = None,
        open_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.ssl_context = ssl_context
        self.users = users or {}
        self.headers = headers or {}
        self.open_paths = open_paths
        # Written by the bcrypt worker thread, read on the event loop.
        self._verified: OrderedDict[bytes, bool] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"WebConfig(tls={self.ssl_context is not None}, users={len(self.users)},"
            f" open_paths={sorted(self.open_paths)})"
        )

    def _key(self, authorization: str | None) -> tuple[str, str, bytes, bytes] | None:
        """(user, password, hash, cache key) from a Basic Authorization header, or None."""
        # The scheme is case-insensitive (RFC 9110 11.1), as in Go's net/http.
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "basic" or not credentials or len(credentials) > 1024:
            return None
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        if not sep:
            return None
        hashed = self.users.get(user, _DUMMY_HASH)
        key = hashlib.sha256(user.encode() + b"\0" + password.encode() + b"\0" + hashed).digest()
        return user, password, hashed, key

    def digest(self, authorization: str | None) -> bytes | None:
        """What identifies these credentials (user, password and its hash), never the password
        itself; None for a header that is no Basic credential."""
        parsed = self._key(authorization)
        return None if parsed is None else parsed[3]

    def is_cached(self, authorization: str | None) -> bool:
        """True if this header was verified before (no bcrypt needed); cheap, on the loop."""
        parsed = self._key(authorization)
        if parsed is None:
            return False
        with self._lock:
            if parsed[3] not in self._verified:
                return False
            self._verified.move_to_end(parsed[3])
        return True

    def check(self, authorization: str | None) -> bool:
        """True if the Authorization header carries a valid user and password."""
        if not self.users:
            return True
        parsed = self._key(authorization)
        if parsed is None:
            return False
        user, password, hashed, key = parsed
        # bcrypt costs ~0.1 s by design; remember successes (by digest, never the password).
        with self._lock:
            if key in self._verified:
                return True
        secret = password.encode()
        # bcrypt reads at most 72 bytes and bcrypt>=5 refuses more: no such password can match.
        ok = len(secret) <= 72 and bcrypt.checkpw(secret, hashed) and user in self.users
        if ok:
            with self._lock:
                self._verified[key] = True
                if len(self._verified) > _CACHE_SIZE:
                    self._verified.popitem(last=False)
        return ok


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> bytes:
    raise _EncryptedKey


def _ssl_context(path: Path, tls: TLSServerConfig) -> ssl.SSLContext:
    def resolve(file: Path) -> Path:
        return file if file.is_absolute() else path.parent / file

    for key in ("cert_file", "key_file", "client_ca_file"):
        file = getattr(tls, key)
        if file is not None:
            try:  # OpenSSL would read a device or a FIFO without end
                read_bytes(resolve(file))
            except Unreadable as exc:
                raise ConfigError.at(
                    path, f"{resolve(file)}: {exc}", key=f"tls_server_config.{key}"
                ) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    context.maximum_version = TLS_VERSIONS[tls.max_version]
    try:
        # Without a password callback OpenSSL asks for an encrypted key's passphrase on the
        # terminal (a daemon would hang at start); exporter-toolkit has no passphrase either.
        context.load_cert_chain(
            resolve(tls.cert_file), resolve(tls.key_file), password=_no_passphrase
        )
    except _EncryptedKey:
        raise ConfigError.at(
            path,
            f"{resolve(tls.key_file)} is encrypted; give the key without a passphrase"
            " (openssl pkey -in KEY -out KEY.plain)",
            key="tls_server_config.key_file",
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError.at(
            path, f"cannot load: {exc}", key="tls_server_config.cert_file/key_file"
        ) from None
    if tls.client_auth_type != "NoClientCert":
        if tls.client_ca_file is None and "Verify" in tls.client_auth_type:
            raise ConfigError.at(
                path,
                f"required by client_auth_type {tls.client_auth_type}",
                key="tls_server_config.client_ca_file",
            )
        if tls.client_ca_file is not None:
            try:
                context.load_verify_locations(resolve(tls.client_ca_file))
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError.at(
                    path, f"cannot load: {exc}", key="tls_server_config.client_ca_file"
                ) from None
        context.verify_mode = (
            ssl.CERT_REQUIRED if tls.client_auth_type.startswith("Require") else ssl.CERT_OPTIONAL
        )
    return context


def load_web_config(path: Path) -> WebConfig:
    """Read and validate a web config file, or raise `ConfigError` naming the key."""
    doc = read_yaml(path)
    if doc.data is None:  # an empty file: no TLS, no auth
        doc = replace(doc, data={})
    if not isinstance(doc.data, dict):
        raise ConfigError.at(path, "expected a mapping (tls_server_config, basic_auth_users)")
    spec = doc.validate(WebConfigFile)  # no values in messages: the file holds password hashes
    context = _ssl_context(path, spec.tls_server_config) if spec.tls_server_config else None
    return WebConfig(
        ssl_context=context,
        users={u: h.replace("$2y$", "$2b$", 1).encode() for u, h in spec.basic_auth_users.items()},
        headers=dict(spec.http_server_config.headers),
        open_paths=frozenset(spec.unauthenticated_paths),
    )
