"""Process settings from flags, environment (HOMEPAGE_EXPORTER_*) and .env, validated once."""

from __future__ import annotations

import difflib
import io
import ipaddress
import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, unquote, urlsplit

from dotenv import dotenv_values
from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from exporter.durations import parse_duration
from exporter.errors import ConfigError, describe
from exporter.files import Unreadable, read_text
from exporter.schema import MAX_SERIES_LIMIT, Param

ENV_PREFIX = "HOMEPAGE_EXPORTER_"
# 9100-9999 is fully allocated on the Prometheus wiki; 10187 clashes with no well-known exporter.
DEFAULT_PORT = 10187
SHIPPED_QUERIES = Path(__file__).with_name("queries.yaml")
# A number that travels to PostgreSQL as a bigint parameter: a larger one would pass here and
# fail every run there ("bigint out of range").
BIGINT_MAX = 2**63 - 1
MAX_PASSWORD_FILE_BYTES = 64 * 1024  # a password, perhaps a long one; not a megabyte


class LogFormat(StrEnum):
    LOGFMT = "logfmt"
    JSON = "json"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def _duration(value: object) -> object:
    if isinstance(value, float | int) and not isinstance(value, bool):
        value = f"{value}s"  # a bare number from a flag or a file means seconds, bounded alike
    return parse_duration(value) if isinstance(value, str) else value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _empty_is_unset(value: object) -> object:
    """`NAME=` in the environment or .env means "not set", not the current directory."""
    return None if isinstance(value, str) and not value.strip() else value


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class ListenAddress:
    """`host:port`, `[v6]:port` or `:port` (every interface)."""

    __slots__ = ("host", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
            raise ValueError(
                f'expected "host:port" such as "127.0.0.1:{DEFAULT_PORT}", got {text!r}'
            )
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            ipaddress.IPv6Address(host)
        elif ":" in host:
            raise ValueError(f'an IPv6 host needs brackets, like "[::1]:{DEFAULT_PORT}"')
        return cls(host, int(port_text))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


IDENTIFIER = r"^[a-z_][a-z0-9_]{0,62}$"  # a column name as PostgreSQL folds it


class Settings(BaseSettings):
    """Everything the process needs besides the queries file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        hide_input_in_errors=True,
        allow_inf_nan=False,
    )

    database_url: SecretStr = Field(
        default=SecretStr("postgresql://localhost:5432/postgres"),
        validation_alias=AliasChoices(f"{ENV_PREFIX}DATABASE_URL", "DATABASE_URL", "database_url"),
        description="PostgreSQL URL (prefer the env var: flags show up in `ps`)",
    )
    database_password_file: Annotated[Path | None, BeforeValidator(_empty_is_unset)] = Field(
        default=None, description="file whose content is the database password"
    )
    listen_address: str = Field(
        default=f":{DEFAULT_PORT}",
        description=f"host:port to serve on, or several, comma-separated (default :{DEFAULT_PORT})",
    )
    queries_file: Path = Field(
        default=SHIPPED_QUERIES, description="queries file (default: the shipped queries.yaml)"
    )
    log_level: Annotated[LogLevel, BeforeValidator(_lower)] = Field(
        default=LogLevel.INFO, description="debug, info, warning or error"
    )
    log_format: Annotated[LogFormat, BeforeValidator(_lower)] = Field(
        default=LogFormat.LOGFMT, description="logfmt or json"
    )
    pool_size: int = Field(default=2, ge=1, le=50, description="database connections at most")
    statement_cache_size: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="asyncpg prepared-statement cache; 0 for PgBouncer/Supavisor",
    )
    connect_timeout: Annotated[float, BeforeValidator(_duration)] = Field(
        default=5.0, gt=0, le=300, description="how long a connection attempt may take (5s)"
    )
    ping_interval: Annotated[float, BeforeValidator(_duration)] = Field(
        default=10.0, ge=1, le=86400, description="how often the database is pinged (10s)"
    )
    max_series_per_query: int = Field(
        default=10_000,
        ge=1,
        le=MAX_SERIES_LIMIT,
        description="series a query may export before it fails (10000)",
    )
    web_config_file: Annotated[Path | None, BeforeValidator(_empty_is_unset)] = Field(
        default=None,
        description="TLS and basic auth for /metrics (exporter-toolkit web-config.yml format)",
    )
    targets_file: Annotated[Path | None, BeforeValidator(_empty_is_unset)] = Field(
        default=None, description="several databases, served as /probe?target=NAME"
    )
    locales: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split_list)] = Field(
        default=("en",), description="comma-separated locales to check (default en)"
    )
    media_storage_quota_bytes: int | None = Field(
        default=None,
        gt=0,
        le=BIGINT_MAX,
        description="media storage quota, for homepage_media_storage_percent",
    )
    # The CMS's vocabulary where the runbook is silent; defaults are the reference schema's.
    cms_tables: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split_list)] = Field(
        default=("homepage%", "section%", "media%"),
        description="comma-separated LIKE patterns of the CMS's tables in schema public",
    )
    schedule_pending: str = Field(
        default="pending", min_length=1, description="section_schedules.status of a waiting one"
    )
    schedule_published: str = Field(
        default="completed", min_length=1, description="section_schedules.status once published"
    )
    schedule_failed: str = Field(
        default="failed", min_length=1, description="section_schedules.status of a failed one"
    )
    schedule_cancelled: str = Field(
        default="cancelled",
        min_length=1,
        description="section_schedules.status of one withdrawn before it ran",
    )
    schedule_section_column: str = Field(
        default="section_id",
        pattern=IDENTIFIER,
        description="section_schedules' column naming the section (optional: names rows)",
    )
    schedule_version_column: str = Field(
        default="version_id",
        pattern=IDENTIFIER,
        description="section_schedules' column naming the version to publish (optional)",
    )
    schedule_processed_column: str = Field(
        default="processed_at",
        pattern=IDENTIFIER,
        description="section_schedules' time of the run (optional: else updated_at)",
    )
    schedule_error_column: str = Field(
        default="error_message",
        pattern=IDENTIFIER,
        description="section_schedules' error text of a failed run (optional)",
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        try:  # the environment's bytes are decoded with surrogateescape: invalid UTF-8 survives
            url.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("holds bytes that are not UTF-8; percent-encode them") from None
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError('expected a URL like "postgresql://user@host:5432/dbname"')
        encode = "percent-encode it (@ %40, / %2F, : %3A, # %23) or use DATABASE_PASSWORD_FILE"
        if "@" in parts.netloc.rpartition("@")[0]:
            raise ValueError(f"the password contains '@': {encode}")
        try:
            parts.port  # noqa: B018 - raises for a port that is not a number, or too large
        except ValueError as exc:
            if "out of range" in str(exc):
                raise ValueError("the port is out of range (1 to 65535)") from None
            raise ValueError(
                "the port is not a number; if the password contains / # or ?, " + encode
            ) from None
        return value

    @field_validator("listen_address")
    @classmethod
    def _listen(cls, value: str) -> str:
        parsed = [str(ListenAddress.parse(part.strip())) for part in value.split(",")]
        if len(set(parsed)) != len(parsed):
            raise ValueError(f"an address is listed twice in {value!r}")
        return value

    @field_validator("locales")
    @classmethod
    def _locales(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("expected at least one locale, such as en")
        return value

    @field_validator("cms_tables")
    @classmethod
    def _cms_tables(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("expected at least one LIKE pattern, such as homepage%")
        return value

    @property
    def listen_addresses(self) -> tuple[ListenAddress, ...]:
        """Every address to serve on (exporter-toolkit takes --web.listen-address repeated)."""
        return tuple(ListenAddress.parse(part.strip()) for part in self.listen_address.split(","))

    @property
    def listen(self) -> ListenAddress:
        """The first address: the one the healthcheck and the demo's banner use."""
        return self.listen_addresses[0]

    def query_params(self) -> dict[str, object]:
        """The values a query may declare under `params:`, by name (schema.Param)."""
        return {
            Param.LOCALES: list(self.locales),
            Param.MEDIA_STORAGE_QUOTA_BYTES: self.media_storage_quota_bytes,
            Param.CMS_TABLES: list(self.cms_tables),
            Param.SCHEDULE_PENDING: self.schedule_pending,
            Param.SCHEDULE_PUBLISHED: self.schedule_published,
            Param.SCHEDULE_FAILED: self.schedule_failed,
            Param.SCHEDULE_CANCELLED: self.schedule_cancelled,
            Param.SCHEDULE_SECTION_COLUMN: self.schedule_section_column,
            Param.SCHEDULE_VERSION_COLUMN: self.schedule_version_column,
            Param.SCHEDULE_PROCESSED_COLUMN: self.schedule_processed_column,
            Param.SCHEDULE_ERROR_COLUMN: self.schedule_error_column,
        }

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, so logs and errors can redact them."""
        found: list[str] = []
        parts = urlsplit(self.database_url.get_secret_value())
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        found += parse_qs(parts.query).get("password", [])  # ?password= works in libpq URLs
        if self.database_password_file is not None:
            try:
                file_password = read_password_file(self.database_password_file)
            except ConfigError:
                file_password = None
            if file_password:
                found.append(file_password)
        return tuple(found)


def read_password(path: Path) -> str:
    """A password file's password (trailing newline dropped), or `Unreadable` saying why."""
    return read_text(path, max_bytes=MAX_PASSWORD_FILE_BYTES).rstrip("\r\n")


def read_password_file(path: Path) -> str:
    """`read_password`, or a ConfigError naming the setting."""
    try:
        return read_password(path)
    except Unreadable as exc:
        raise ConfigError.at(
            f"setting {ENV_PREFIX}DATABASE_PASSWORD_FILE", f"cannot read {path}: {exc}"
        ) from None


def _env_file_values(env_file: Path | None) -> dict[str, str | None]:
    """The variables of the .env file (`env_file`, else ./.env when it is a file): read through
    `exporter.files` (capped, UTF-8, a bad byte named by its line) and parsed by python-dotenv,
    as pydantic-settings parses it."""
    path = env_file or Path(".env")
    if env_file is None and not path.is_file():
        return {}
    try:
        text = read_text(path)
    except Unreadable as exc:
        what = f"{exc} (the env file)" if env_file is None else str(exc)
        raise ConfigError.at(path, what, line=exc.line) from None
    return dotenv_values(stream=io.StringIO(text))


def unknown_settings(env_file: Path | None = None) -> list[str]:
    """`HOMEPAGE_EXPORTER_*` names in the environment or the .env file that are no setting
    (pydantic-settings ignores them silently), each with the name probably meant."""
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    given = [k for k in os.environ if k.startswith(ENV_PREFIX)]
    given += [k for k in _env_file_values(env_file) if k.upper().startswith(ENV_PREFIX)]
    found = []
    for name in dict.fromkeys(given):
        if name.upper() in known:
            continue
        close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.8)
        found.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return found


def _env_name(field: str, env_file: Path | None) -> str:
    """The variable the user set for `field`: pydantic reports a field with aliases under its
    first alias (HOMEPAGE_EXPORTER_DATABASE_URL) even when the value came from DATABASE_URL."""
    prefixed = f"{ENV_PREFIX}{field.upper()}"
    aliases = (
        Settings.model_fields[field].validation_alias if field in Settings.model_fields else None
    )
    names = [prefixed]
    if isinstance(aliases, AliasChoices):
        names += [str(a) for a in aliases.choices if str(a).isupper() and str(a) != prefixed]
    dotenv = _env_file_values(env_file)
    for name in names:
        if name in os.environ or name in dotenv:
            return name
    return prefixed


def _flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def load_settings(
    overrides: Mapping[str, Any] | None = None, env_file: Path | None = None
) -> Settings:
    """Settings from env and `.env`, with flag `overrides` on top; `ConfigError` names the key."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    _env_file_values(env_file)  # pydantic-settings would read a device or a bad byte raw
    try:
        if env_file is not None:
            return Settings(_env_file=env_file, **given)  # type: ignore[call-arg]
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        # A field with aliases is reported under the alias it came from (the env name).
        field = str(first["loc"][0]).removeprefix(ENV_PREFIX).lower() if first["loc"] else "?"
        source = f"flag {_flag_name(field)}" if field in given else _env_name(field, env_file)
        raise ConfigError.at(f"setting {source}", describe(first)) from None
    except SettingsError as exc:
        # pydantic-settings words these as: error parsing value for field "X" from source "Y"
        text = str(exc)
        field = text.split('field "', 1)[-1].split('"', 1)[0] if 'field "' in text else "?"
        raise ConfigError.at(
            f"setting {ENV_PREFIX}{field.upper()}", "cannot parse the value"
        ) from None
