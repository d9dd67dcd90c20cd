"""The databases one process watches: always a list of targets. One from DATABASE_URL, or
several from a targets file, each served at /probe?target=NAME:

targets:
  - name: eu                      # /probe?target=eu
    database_url: postgresql://homepage_exporter@eu-db:5432/postgres?sslmode=require
    database_password_file: /run/secrets/eu
    locales: [en, de, fr]
    media_storage_quota_bytes: 107374182400
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, cast
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from exporter.db import Database
from exporter.errors import ErrorReason, QueryError, describe
from exporter.files import Unreadable
from exporter.schema import Param
from exporter.settings import BIGINT_MAX, Settings, read_password, read_password_file
from exporter.yamlfile import read_yaml

SINGLE = "default"  # the name of the one target when there is no targets file


@dataclass(frozen=True, slots=True)
class DatabaseSpec:
    """Where one database is and how to connect to it: all a `Database` is opened from."""

    url: SecretStr
    password_file: Path | None
    pool_size: int
    statement_cache_size: int
    connect_timeout: float
    idle_close: float  # a connection unused this long is closed
    url_is_default: bool  # no DATABASE_URL was given: the default URL, said when it fails
    secrets: tuple[str, ...]  # what logs and errors mask: the URL's and the file's passwords

    @classmethod
    def of(cls, settings: Settings) -> DatabaseSpec:
        return cls(
            url=settings.database_url,
            password_file=settings.database_password_file,
            pool_size=settings.pool_size,
            statement_cache_size=settings.statement_cache_size,
            connect_timeout=settings.connect_timeout,
            # The ping (or a query) uses the most recently used connection at least once a
            # ping interval; one unused for two was opened for an overlap of runs: close it.
            idle_close=2 * settings.ping_interval,
            url_is_default="database_url" not in settings.model_fields_set,
            secrets=settings.secrets(),
        )

    def open(self, *, at_least: int = 1) -> Database:
        """The database, with `at_least` connections allowed whatever the pool size (for
        one-shot runs that start every query at once). The password file, if any, is read
        on each new connection: a rotated password is picked up without a restart."""
        return Database(
            self.url.get_secret_value(),
            password=None if self.password_file is None else _reader(self.password_file),
            pool_size=max(self.pool_size, at_least),
            statement_cache_size=self.statement_cache_size,
            connect_timeout=self.connect_timeout,
            idle_close=self.idle_close,
        )

    def where(self) -> str:
        """user@host:port/db: the database without a secret."""
        parts = urlsplit(self.url.get_secret_value())
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
        user = f"{parts.username}@" if parts.username else ""
        return f"{user}{host}{port}{parts.path or '/'}"


def _reader(path: Path) -> Callable[[], str]:
    """The password file's password, read when asked (on each new connection); a file that
    cannot be read then is a failed connection, said as such."""

    def read() -> str:
        try:
            return read_password(path)
        except Unreadable as exc:
            raise QueryError(
                ErrorReason.CONNECTION, f"cannot read the password file {path}: {exc}"
            ) from None

    return read


@dataclass(frozen=True, slots=True)
class Target:
    """One watched database: how to reach it, the values its queries take as parameters, and
    the per-target settings of its runs."""

    name: str
    database: DatabaseSpec
    params: Mapping[str, object]
    max_series_per_query: int
    ping_interval: float
    in_targets_file: bool  # served at /probe?target=NAME and named in logs, not at /metrics

    @property
    def locales(self) -> list[str]:
        """The locales its queries take (Settings.query_params puts a list of them there)."""
        return cast(list[str], self.params[Param.LOCALES])

    @classmethod
    def of(cls, name: str, settings: Settings, *, in_targets_file: bool) -> Target:
        return cls(
            name,
            DatabaseSpec.of(settings),
            settings.query_params(),
            settings.max_series_per_query,
            settings.ping_interval,
            in_targets_file,
        )


class TargetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    database_url: SecretStr
    database_password_file: Path | None = None
    # Left out, the LOCALES setting's; given, at least one (an empty list used to mean LOCALES).
    locales: Annotated[tuple[str, ...], Field(min_length=1)] | None = None
    media_storage_quota_bytes: int | None = Field(default=None, gt=0, le=BIGINT_MAX)


class TargetsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    targets: Annotated[tuple[TargetSpec, ...], Field(min_length=1)]


def load_targets(settings: Settings) -> list[Target]:
    """The targets of this process: the targets file's, or the one DATABASE_URL names."""
    if settings.targets_file is None:
        if settings.database_password_file is not None:
            # An unreadable password file is a config error now, not a failed connect at 3 a.m.
            read_password_file(settings.database_password_file)
        return [Target.of(SINGLE, settings, in_targets_file=False)]
    path = settings.targets_file
    doc = read_yaml(path)
    spec = doc.validate(TargetsFile)  # no values in messages: the file holds URLs
    out: dict[str, Target] = {}
    for index, target in enumerate(spec.targets):
        if target.name in out:
            raise doc.error(("targets", index, "name"), "name is used twice")
        try:
            per_target = Settings.model_validate(
                {
                    **settings.model_dump(),
                    "database_url": target.database_url,
                    "database_password_file": target.database_password_file,
                    "locales": target.locales or settings.locales,
                    "media_storage_quota_bytes": target.media_storage_quota_bytes,
                    # One connection per database is enough when runs are spread over the
                    # interval; hundreds of targets x the single database's two would be
                    # hundreds of idle connections. POOL_SIZE set explicitly still applies.
                    "pool_size": (
                        settings.pool_size if "pool_size" in settings.model_fields_set else 1
                    ),
                }
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            raise doc.error(("targets", index, *first["loc"]), describe(first)) from None
        if per_target.database_password_file is not None:
            # An unreadable password file fails now, not at 3 a.m.
            try:
                read_password(per_target.database_password_file)
            except Unreadable as exc:
                where = ("targets", index, "database_password_file")
                message = f"cannot read {per_target.database_password_file}: {exc}"
                raise doc.error(where, message) from None
        out[target.name] = Target.of(target.name, per_target, in_targets_file=True)
    return list(out.values())


def secrets_of(targets: list[Target]) -> tuple[str, ...]:
    """Every password any target's URL or password file holds."""
    return tuple(s for t in targets for s in t.database.secrets)
