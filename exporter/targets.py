"""Several CMS databases in one process: the targets file, validated into per-target settings.

targets:
  - name: eu                      # /probe?target=eu
    database_url: postgresql://homepage_exporter@eu-db:5432/postgres?sslmode=require
    database_password_file: /run/secrets/eu
    locales: [en, de, fr]
    media_storage_quota_bytes: 107374182400
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from exporter.errors import ConfigError, dotted, first_problem
from exporter.settings import Settings


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


def load_targets(path: Path, base: Settings) -> dict[str, Settings]:
    """Per-target settings: the process settings with each target's database and scope."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid YAML: {type(exc).__name__}") from None
    try:
        spec = TargetsFile.model_validate(data)
    except ValidationError as exc:
        loc, message = first_problem(exc)
        if len(loc) >= 2 and loc[0] == "targets" and loc[1].isdigit() and isinstance(data, dict):
            entry = data["targets"][int(loc[1])]
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                loc[1] = entry["name"]
        raise ConfigError(f"{path}: {dotted(loc)}: {message}") from None
    out: dict[str, Settings] = {}
    for target in spec.targets:
        if target.name in out:
            raise ConfigError(f"{path}: targets.{target.name}: name is used twice")
        try:
            settings = Settings.model_validate(
                {
                    **base.model_dump(),
                    "database_url": target.database_url,
                    "database_password_file": target.database_password_file,
                    "locales": target.locales or base.locales,
                    "media_storage_quota_bytes": target.media_storage_quota_bytes,
                }
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{path}: targets.{target.name}.{field}: {first['msg']}") from None
        settings.database_password()  # an unreadable password file fails now, not at 3 a.m.
        out[target.name] = settings
    return out
