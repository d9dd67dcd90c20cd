"""Handing freed memory back to the system.

glibc keeps the pages a process freed in its arenas for reuse: after a burst (an attack's
connections, hundreds of targets replacing their pages) RSS would stay at its peak.
`malloc_trim(0)` returns them; elsewhere (musl, macOS) there is nothing to call.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Callable


def malloc_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim(0) as a function of no arguments, or None where there is none."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
        return lambda: trim(0)
    return None
