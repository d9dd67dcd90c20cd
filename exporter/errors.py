"""The user-facing error raised for bad input: one line that names the place, exit code 2."""

import re
from collections.abc import Sequence

from pydantic import ValidationError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ConfigError(Exception):
    """Settings or queries file rejected; `str()` is the whole message a user sees.

    Always one line: control characters (a newline inside a YAML key, say) are escaped, so a
    hostile file cannot forge extra log or terminal lines.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_CONTROL.sub(lambda m: repr(m.group())[1:-1], message))


def first_problem(exc: ValidationError) -> tuple[list[str], str]:
    """The key path and message of pydantic's first complaint, in this project's words:
    "unknown key" for a key the schema forbids, no "Value error, " prefix."""
    first = exc.errors()[0]
    loc = [str(part) for part in first["loc"]]
    if first["type"] == "extra_forbidden":
        return loc, "unknown key"
    return loc, str(first["msg"]).removeprefix("Value error, ")


def dotted(loc: Sequence[str]) -> str:
    return ".".join(loc) or "(top level)"
