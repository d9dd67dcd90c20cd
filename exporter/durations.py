"""Duration strings ("30s", "5m", "1h30m", "250ms") to seconds and back."""

import math
import re

# PostgreSQL's statement_timeout and lock_timeout are int milliseconds: 2^31 - 1 ms, 24.8 days.
MAX_SECONDS = (2**31 - 1) / 1000

# ASCII digits only: \d also matches full-width and other scripts' digits, which float() reads.
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration string; raises ValueError with the expected form."""
    stripped = text.strip()
    pos, total = 0, 0.0
    for match in _PART.finditer(stripped):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _SCALE[match.group(2)]
        pos = match.end()
    if not stripped or pos != len(stripped):
        raise ValueError(f'expected a duration like "30s", "5m" or "1h", got {text!r}')
    if total <= 0:
        raise ValueError(f"expected a duration above zero, got {text!r}")
    if not math.isfinite(total) or total > MAX_SECONDS:
        raise ValueError(f"expected a duration of at most 24d (PostgreSQL's limit), got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """The shortest exact duration string for a number of seconds."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"
