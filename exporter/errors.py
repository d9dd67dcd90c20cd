"""The user-facing error raised for bad input: one line that names the place, exit code 2."""

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ConfigError(Exception):
    """Settings or queries file rejected; `str()` is the whole message a user sees.

    Always one line: control characters (a newline inside a YAML key, say) are escaped, so a
    hostile file cannot forge extra log or terminal lines.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(_CONTROL.sub(lambda m: repr(m.group())[1:-1], message))
