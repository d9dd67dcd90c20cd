"""Every error this project reports: bad input (`ConfigError`, exit 2) and a failed database
round trip (`QueryError`), and the one way a place in a file is written in a message.

Nothing here imports the database driver: the pure layers (mapping, snapshot) use these types.

    QueryError(reason=ErrorReason.X, message="one line")
        TIMEOUT      statement_timeout or lock_timeout fired on the server, or our deadline
        CONNECTION   cannot connect, authentication, server shutting down, connection lost
        PERMISSION   privilege or row-security refusal
        SQL          anything else the server rejected (including a write in a read-only txn)
        INVALID_RESULT  raised by mapping, when rows do not fit the metrics
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


class ConfigError(Exception):
    """Settings or a file rejected; `str()` is the whole message a user sees.

    Always one line: control characters (a newline inside a YAML key, say) are escaped, so a
    hostile file cannot forge extra log or terminal lines.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_CONTROL.sub(lambda m: repr(m.group())[1:-1], message))

    @classmethod
    def at(
        cls, source: object, message: str, *, line: int | None = None, key: str | None = None
    ) -> ConfigError:
        """The one shape of every config error: `source[:line][: key]: message`."""
        where = f"{source}:{line}" if line else str(source)
        return cls(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class ErrorReason(StrEnum):
    """The closed set of reasons in homepage_exporter_query_errors_total."""

    TIMEOUT = "timeout"
    CONNECTION = "connection"
    PERMISSION = "permission"
    SQL = "sql"
    INVALID_RESULT = "invalid_result"


class QueryError(Exception):
    """A classified failure; `message` is one line."""

    def __init__(self, reason: ErrorReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def key_path(loc: Sequence[str | int], data: object = None) -> str:
    """`queries.publish_lag.interval`: list indices become the entry's `name` where it has one."""
    parts: list[str] = []
    node = data
    for part in loc:
        child = None
        if isinstance(part, int):
            if isinstance(node, list) and 0 <= part < len(node):
                child = node[part]
            name = child.get("name") if isinstance(child, dict) else None
            parts.append(name if isinstance(name, str) and name else f"[{part}]")
        else:
            child = node.get(part) if isinstance(node, dict) else None
            parts.append(part if _PLAIN_KEY.fullmatch(part) else repr(part))
        node = child
    return ".".join(parts).replace(".[", "[") or "(top level)"


def describe(error: Mapping[str, Any], *, show_input: bool = False) -> str:
    """One of pydantic's complaints in this project's words: no "Value error, " prefix,
    "unknown key" and "required key is missing"; with `show_input`, the offending value where
    it is short (never for files that may hold secrets)."""
    kind = error["type"]
    given = error.get("input")
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key"
    message = str(error["msg"]).removeprefix("Value error, ")
    if not show_input or isinstance(given, dict | list) or "got" in message:
        return message
    shown = repr(given)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{message}, got {shown}"
