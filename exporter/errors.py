"""The user-facing error raised for bad input: one line that names the place, exit code 2."""


class ConfigError(Exception):
    """Settings or queries file rejected; `str()` is the whole message a user sees."""

    exit_code = 2
