"""The one way the exporter reads a file a user names (queries, targets, web config, .env,
password files, TLS material): a regular file, at most `max_bytes`, UTF-8.

`Path.read_text` reads whatever the path opens: `/dev/zero` until memory runs out, a FIFO
with no writer forever. Here the file is opened without blocking, must be a regular file,
and no more than `max_bytes + 1` bytes are ever read. What is wrong comes back as
`Unreadable`, a reason in a few words, for the caller to place (file, line, setting).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Enough for any config file or secret this project reads; a megabyte of YAML is a mistake.
MAX_FILE_BYTES = 1 << 20


class Unreadable(Exception):
    """`str()` is the reason, without the path: the caller says where; `line` when the
    reason is on one line of the file."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.line = line


def read_bytes(path: Path, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The contents of the regular file `path`, or `Unreadable` saying why not."""
    try:
        # O_NONBLOCK: opening a FIFO that has no writer returns at once instead of waiting.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Unreadable("no such file") from None
    except IsADirectoryError:
        raise Unreadable("is a directory, expected a file") from None
    except OSError as exc:
        raise Unreadable(f"cannot read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise Unreadable("is a directory, expected a file")
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable("not a regular file (a device, pipe or socket)")
        if info.st_size > max_bytes:
            raise Unreadable(f"file is {info.st_size} bytes, the limit is {max_bytes}")
        chunks: list[bytes] = []
        left = max_bytes + 1  # one more than allowed: a file that grew since the fstat
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise Unreadable(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise Unreadable(f"file is over {max_bytes} bytes, the limit")
    return data


def read_text(path: Path, *, max_bytes: int = MAX_FILE_BYTES) -> str:
    """`read_bytes` decoded as UTF-8; a bad byte is `Unreadable` naming its line."""
    data = read_bytes(path, max_bytes=max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise Unreadable(f"not UTF-8 text ({exc.reason} at byte {exc.start})", line) from None
