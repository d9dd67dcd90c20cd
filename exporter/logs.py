"""Structured logs: an event name plus key=value fields, as logfmt or JSON, secrets redacted."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

from exporter.settings import LogFormat, LogLevel

_ROOT = "homepage_exporter"


class Redactor:
    """Replaces every secret it was given (each target's passwords) wherever text leaves
    the process: log lines, `check` output, error messages."""

    MASK = "[REDACTED]"

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so that a secret containing another is masked whole.
        self._secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, self.MASK)
        return text


# A database's error text can be as long as the data it quotes ("invalid input syntax for type
# json: <the whole document>"). Log shippers cut long lines into several records (Docker's
# json-file at 16 KiB, journald at LineMax, 48 KiB by default), and a record that begins with
# text the database chose is a forged line. 1,024 characters keep every line well under both,
# and still hold any error a person reads.
MAX_VALUE_CHARS = 1024


def _shortened(text: str) -> str:
    if len(text) <= MAX_VALUE_CHARS:
        return text
    return f"{text[:MAX_VALUE_CHARS]}... ({len(text) - MAX_VALUE_CHARS} more characters)"


def _printable(encoded: str) -> str:
    """`encoded` (JSON text) with every character that is not printable as a JSON escape.

    json.dumps escapes only C0 controls; with ensure_ascii=False it leaves DEL, C1 controls,
    line and paragraph separators, bidirectional overrides and lone surrogates raw, and a
    terminal or log viewer acts on them. str.isprintable is False for exactly those (Unicode
    categories Cc, Cf, Cs, Co, Cn, Zl, Zp, Z* but the space), and json.dumps of one character
    with its default ensure_ascii=True writes its standard escape (a surrogate pair above
    U+FFFF). Printable non-ASCII text stays readable.
    """
    if encoded.isprintable():
        return encoded
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in encoded)


def _logfmt_value(value: object) -> str:
    """A logfmt value: bare when it cannot be misread, else a quoted JSON string.

    logfmt has no standard for escapes; a JSON string literal is what go-logfmt writes and
    reads (its decoder unquotes with encoding/json's rules), so the stdlib's encoder does it.
    """
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' ="\\'):
        return text
    return _printable(json.dumps(text, ensure_ascii=False))


class LineFormatter(logging.Formatter):
    """One log record as one line: logfmt or JSON, secrets masked, every value escaped."""

    def __init__(self, fmt: LogFormat, redact: Redactor) -> None:
        super().__init__()
        self._json = fmt is LogFormat.JSON
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        fields.update(getattr(record, "fields", {}))
        if record.exc_info and record.levelno >= logging.ERROR:
            fields["error"] = self.formatException(record.exc_info)
        # Redacted before shortened: a secret cut in two would no longer be found.
        clean = {
            k: _shortened(self._redact(str(v))) if not isinstance(v, int | float | bool) else v
            for k, v in fields.items()
        }
        if self._json:
            return _printable(json.dumps(clean, ensure_ascii=False))
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in clean.items())


class Logger:
    """A logger bound to fixed fields (query, target); events are names, details are fields."""

    __slots__ = ("_bound", "_logger")

    def __init__(self, logger: logging.Logger, bound: dict[str, object]) -> None:
        self._logger = logger
        self._bound = bound

    def bind(self, **fields: object) -> Logger:
        return Logger(self._logger, {**self._bound, **fields})

    def _log(self, level: int, event: str, fields: dict[str, object]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": {**self._bound, **fields}})

    def debug(self, event: str, **fields: object) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: object) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: object) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: object) -> None:
        self._log(logging.ERROR, event, fields)


class _ClientErrors(logging.Filter):
    """aiohttp's "Error handling request" records (a traceback each) as one line, at most
    `per_second` a second: a hostile client must not be able to fill the disk with them."""

    def __init__(self, per_second: int = 10) -> None:
        super().__init__()
        self._per_second = per_second
        self._window = 0
        self._count = 0
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = int(time.monotonic())
        if now != self._window:
            self._window, self._count = now, 0
        self._count += 1
        if self._count > self._per_second:
            self._suppressed += 1
            return False
        exc = record.exc_info[1] if record.exc_info else None
        detail = " ".join(str(exc or record.getMessage()).split())[:200]
        fields: dict[str, object] = {"error": detail or type(exc).__name__}
        if record.args and isinstance(record.args, tuple):
            fields["remote"] = record.args[0]
        if self._suppressed:
            fields["suppressed_since_last"] = self._suppressed
            self._suppressed = 0
        record.msg, record.args, record.exc_info, record.exc_text = (
            "http_request_rejected",
            (),
            None,
            None,
        )
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.fields = fields
        return True


def get_logger(**fields: object) -> Logger:
    return Logger(logging.getLogger(_ROOT), dict(fields))


def configure(level: LogLevel, fmt: LogFormat, redact: Redactor | None = None) -> None:
    """Send structured lines to stderr, secrets masked; quiet the libraries we use."""
    redact = redact or Redactor()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(fmt, redact))
    root = logging.getLogger(_ROOT)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    for noisy in ("asyncio", "asyncpg"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # aiohttp reports each malformed or hostile request with a traceback: one line instead.
    client_errors = logging.StreamHandler(sys.stderr)
    client_errors.setFormatter(LineFormatter(fmt, redact))
    client_errors.addFilter(_ClientErrors())
    server = logging.getLogger("aiohttp.server")
    server.handlers[:] = [client_errors]
    server.setLevel(logging.INFO if level.upper() in ("DEBUG", "INFO") else logging.ERROR)
    server.propagate = False
    logging.getLogger("aiohttp.access").disabled = True
