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

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from exporter.db import Database
from exporter.errors import describe
from exporter.settings import Settings
from exporter.yamlfile import read_yaml

SINGLE = "default"  # the name of the one target when there is no targets file


@dataclass(frozen=True, slots=True)
class Target:
    """One watched database: where it is, and the values its queries take as parameters."""

    name: str
    settings: Settings  # the process settings with this target's database and scope
    probed: bool  # from a targets file: served at /probe?target=NAME, named in logs

    @property
    def params(self) -> Mapping[str, object]:
        return self.settings.query_params()

    def open_database(self, *, at_least: int = 1) -> Database:
        """This target's database, with `at_least` connections allowed whatever the pool
        size (for one-shot runs that start every query at once)."""
        s = self.settings
        return Database(
            s.database_url.get_secret_value(),
            password=s.database_password(),
            pool_size=max(s.pool_size, at_least),
            statement_cache_size=s.statement_cache_size,
            connect_timeout=s.connect_timeout,
            # The ping (or a query) uses the most recently used connection at least once a
            # ping interval; one unused for two was opened for an overlap of runs: close it.
            idle_close=2 * s.ping_interval,
        )

    def secrets(self) -> tuple[str, ...]:
        return self.settings.secrets()


class TargetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    database_url: SecretStr
    database_password_file: Path | None = None
    locales: tuple[str, ...] | None = None
    media_storage_quota_bytes: int | None = Field(default=None, gt=0)


class TargetsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    targets: Annotated[tuple[TargetSpec, ...], Field(min_length=1)]


def load_targets(settings: Settings) -> list[Target]:
    """The targets of this process: the targets file's, or the one DATABASE_URL names."""
    if settings.targets_file is None:
        return [Target(SINGLE, settings, probed=False)]
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
        per_target.database_password()  # an unreadable password file fails now, not at 3 a.m.
        out[target.name] = Target(target.name, per_target, probed=True)
    return list(out.values())


def secrets_of(targets: list[Target]) -> tuple[str, ...]:
    """Every password any target's URL or password file holds."""
    return tuple(s for t in targets for s in t.secrets())
