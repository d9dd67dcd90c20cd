"""The guard in front of the HTTP server: what a hostile client may hold, and for how long.

aiohttp (its llhttp parser) reads requests, rejects malformed ones, bounds header lines and
their count, keeps idle keep-alive connections 75 s and respects the socket's write flow
control. What it does not do, this module does, for plain HTTP and TLS alike (tested by
tests/test_guard.py and tests/test_hostile.py):

- at most `limit` open connections, counted from the TCP accept, before any TLS handshake,
  kept below the file limit; when full, the oldest connection still waiting (for its
  handshake or its request head) makes room, so an attacker's idle, silent or trickling
  sockets cannot lock out Prometheus;
- TLS is started only once the client has sent something: a connection that never begins
  its handshake costs what an idle plain connection costs, not a TLS session's buffers
  (asyncio's own TLS server makes one per accepted socket, before any byte, uncounted);
- a handshake deadline (`HANDSHAKE_TIMEOUT_SECONDS` from the accept) and a head deadline
  (`HEAD_TIMEOUT_SECONDS` from the accept, or from the first byte of a later request, to the
  blank line that ends its head, whatever trickles in meanwhile: slowloris); one sweep for
  all connections, no timer per connection;
- a bound on the bytes a client may send before its head is complete, and a request line
  of the RFC's shape (aiohttp's parser hangs on some targets, "//[");
- reading paused while the socket's send buffer is full (a client that pipelines and never
  reads stops being read).
- an accept queue as long as the kernel allows (`listen_backlog`), so a burst of connections
  waits in the kernel instead of having its SYNs, and Prometheus's, dropped.

`raise_file_limit` raises the soft RLIMIT_NOFILE to the hard one at start, as Go programs do.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
import resource
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import cast

from exporter.allocator import malloc_trim

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_SECONDS = 10.0  # a request head must be complete this long after it started
# A handshake is a round trip or two and one signature: seconds even over a lossy WAN link.
# Shorter than the head deadline, because a handshake in progress holds a TLS session's
# buffers (tens of KB) where a waiting plain connection holds a few hundred bytes.
HANDSHAKE_TIMEOUT_SECONDS = 5.0
# After the exporter closes a TLS connection it waits this long for the client's close_notify
# (asyncio's default is 30 s, during which the connection still holds its file and buffers).
TLS_SHUTDOWN_TIMEOUT_SECONDS = 2.0
FILES_RESERVED = 64  # for the database pool, logs, the config files
SOMAXCONN_FILE = "/proc/sys/net/core/somaxconn"
MAX_CONNECTIONS = 1024  # Prometheus needs a few; the rest of a flood is evicted, oldest idle first
# The loop's TLS protocol keeps a read buffer of its own per connection (256 KiB allocated, up
# to ~100 KiB of it resident once the allocator recycles memory), and OpenSSL its records:
# at most this many TLS sessions (handshaking or open) at once, the oldest waiting one
# evicted, bound an attack that starts handshakes or trickles heads over TLS to ~25 MB.
MAX_TLS_SESSIONS = 256
WRITE_BUFFER_HIGH = 256 * 1024
# RFC 9112 request-line: method SP request-target SP HTTP-version, the target in origin form
# (RFC 3986 path and query characters) or "*". aiohttp's parser hangs on some targets ("//[").
REQUEST_LINE = re.compile(
    rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,16} (?:/[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]*|\*) HTTP/1\.[01]"
)


def raise_file_limit() -> int:
    """Raise the soft open-file limit to the hard one (as Go's runtime does); the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def listen_backlog() -> int:
    """The accept queue's length: the kernel's maximum (net.core.somaxconn), as Go's net
    package asks for. A flood of connections arrives faster than the loop accepts them (a
    Python client opens one every ~30 µs on loopback); once the queue is full the kernel
    drops every SYN, Prometheus's too, and its connect waits out a retransmission (1 s, then
    3 s, 7 s). A queue as long as the kernel allows holds the burst until the guard evicts."""
    try:
        return max(socket.SOMAXCONN, int(Path(SOMAXCONN_FILE).read_text()))
    except (OSError, ValueError):  # not Linux, or no /proc: the C library's constant
        return socket.SOMAXCONN


def connection_limit() -> int:
    """How many connections the guard admits: MAX_CONNECTIONS, below the file limit."""
    return max(16, min(MAX_CONNECTIONS, raise_file_limit() - FILES_RESERVED))


class Connections:
    """Open connections and those holding a TLS session, oldest first, each group capped.

    When a group is full, the oldest connection still waiting (for its handshake or its
    request head) makes room; when none waits, the oldest of all.
    """

    # Connections that come and go leave their memory freed but held by the allocator (glibc
    # keeps free pages in its arenas): RSS would stay up after an attack. Once a burst has
    # drained, hand the free pages back, once, a second later. Sixteen: twenty TLS clients
    # that pipeline and never read leave ~20 MB behind (buffers of the TLS layer and aiohttp);
    # Prometheus itself holds one or two connections, so this costs it nothing.
    TRIM_AFTER = 16

    def __init__(self, limit: int, tls_limit: int = MAX_TLS_SESSIONS) -> None:
        self.limit = limit
        self.tls_limit = tls_limit
        self._open: OrderedDict[Guard, None] = OrderedDict()
        self._tls: OrderedDict[Guard, None] = OrderedDict()
        self._high = 0
        self._trim = malloc_trim()
        self._trim_pending: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._open)

    @property
    def tls_sessions(self) -> int:
        """Connections holding a TLS session (handshaking or open)."""
        return len(self._tls)

    def admit(self, guard: Guard) -> None:
        """Count a connection from its accept."""
        self._make_room(self._open, self.limit)
        self._open[guard] = None
        self._high = max(self._high, len(self._open))

    def admit_tls(self, guard: Guard) -> None:
        """Count a connection's TLS session from the start of its handshake."""
        self._make_room(self._tls, self.tls_limit)
        self._tls[guard] = None

    def _make_room(self, group: OrderedDict[Guard, None], limit: int) -> None:
        while len(group) >= limit:
            victim = next((g for g in group if g.waiting), None)
            if victim is None:
                victim = next(iter(group))  # all busy: the oldest goes
            self.release(victim)
            victim.abort()

    def release(self, guard: Guard) -> None:
        self._open.pop(guard, None)
        self._tls.pop(guard, None)
        if self._high >= self.TRIM_AFTER and len(self._open) * 8 < self._high:
            self._high = len(self._open)
            if self._trim is not None and self._trim_pending is None:
                self._trim_pending = asyncio.get_running_loop().call_later(1.0, self._trimmed)

    def _trimmed(self) -> None:
        self._trim_pending = None
        if self._trim is not None:
            self._trim()

    def sweep(self) -> None:
        """Close every connection whose handshake or request head is overdue."""
        now = time.monotonic()
        for guard in [g for g in self._open if g.overdue(now)]:
            guard.abort()

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(HEAD_TIMEOUT_SECONDS, HANDSHAKE_TIMEOUT_SECONDS) / 20)
            self.sweep()

    def close_all(self) -> None:
        for guard in list(self._open):
            guard.abort()
        self._open.clear()


class Stage(enum.Enum):
    """Where a connection is; the deadlines that apply follow from it."""

    SILENT = "silent"  # TLS, nothing received yet: no TLS session made
    HANDSHAKE = "handshake"  # TLS handshake in progress
    OPEN = "open"  # plain, or TLS after the handshake: HTTP requests


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Hand `data` to `protocol` as a transport would (asyncio's TLS protocols are buffered)."""
    if isinstance(protocol, asyncio.Protocol):
        protocol.data_received(data)
        return
    view = memoryview(data)
    while view:
        buffer = memoryview(protocol.get_buffer(len(view)))  # type: ignore[attr-defined]
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        protocol.buffer_updated(n)  # type: ignore[attr-defined]
        view = view[n:]


class Guard(asyncio.Protocol):
    """One connection: admitted into `Connections` at the accept, its TLS handshake and each
    request head on a deadline, then handed to the inner (aiohttp's) protocol."""

    __slots__ = (
        "_accepted",
        "_connections",
        "_early",
        "_handshake",
        "_head",
        "_inner",
        "_make_inner",
        "_raw",
        "_tls",
        "_transport",
        "head_since",
        "stage",
    )

    def __init__(
        self,
        make_inner: Callable[[], asyncio.Protocol],
        connections: Connections,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._make_inner = make_inner
        self._inner: asyncio.Protocol | None = None  # made once the connection is OPEN
        self._connections = connections
        self._tls = tls
        self._raw: asyncio.Transport | None = None  # the TCP transport, for abort
        self._transport: asyncio.Transport | None = None  # what HTTP reads and writes
        self._handshake: asyncio.Task[None] | None = None
        self._early = b""  # request bytes decrypted before the handshake task resumed
        self._accepted = 0.0
        self._head = bytearray()  # a request head arriving in pieces, at most MAX_HEAD_BYTES
        # When the head now awaited began (the accept, or its first byte); None between
        # requests. The first head's clock starts at the accept: a TLS handshake counts.
        self.head_since: float | None = None
        self.stage = Stage.OPEN if tls is None else Stage.SILENT

    @property
    def waiting(self) -> bool:
        """Not yet doing anything for anyone: first to go when the connections are at their cap."""
        return self.stage is not Stage.OPEN or self.head_since is not None

    def overdue(self, now: float) -> bool:
        if self.stage is not Stage.OPEN and now - self._accepted > HANDSHAKE_TIMEOUT_SECONDS:
            return True
        return self.head_since is not None and now - self.head_since > HEAD_TIMEOUT_SECONDS

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._raw = cast(asyncio.Transport, transport)
        self._accepted = self.head_since = time.monotonic()
        self._connections.admit(self)
        if self._tls is None:
            self._open(self._raw)
        # With TLS the connection stays SILENT until its first bytes (data_received): reading
        # an idle socket costs nothing, a TLS session tens of KB.

    def _start_handshake(self, first: bytes) -> None:
        raw, tls = self._raw, self._tls
        if raw is None or tls is None:
            return
        raw.pause_reading()  # what follows is TLS's to read
        self.stage = Stage.HANDSHAKE
        self._connections.admit_tls(self)
        loop = asyncio.get_running_loop()
        self._handshake = loop.create_task(self._handshake_tls(raw, tls))
        # start_tls (the task's first step, on the next turn) installs the TLS protocol on the
        # transport, then schedules its connection_made and resume_reading. The bytes already
        # read must reach it after those two and before anything read later: a callback
        # scheduled two turns from now runs right after them (the loop runs callbacks in the
        # order they were scheduled, and reads only between turns).
        loop.call_soon(loop.call_soon, self._hand_over, raw, first)

    def _hand_over(self, raw: asyncio.Transport, first: bytes) -> None:
        protocol = raw.get_protocol()
        if raw.is_closing() or protocol is self:
            return
        _feed(protocol, first)

    async def _handshake_tls(self, raw: asyncio.Transport, tls: ssl.SSLContext) -> None:
        transport: asyncio.Transport | None = None
        # A failed or refused handshake: nothing to say to that client, and nothing to log
        # (a scanner would fill the log).
        with contextlib.suppress(Exception):
            if not raw.is_closing():  # not evicted before this first step
                transport = await asyncio.get_running_loop().start_tls(
                    raw,
                    self,
                    tls,
                    server_side=True,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT_SECONDS,
                    ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT_SECONDS,
                )
        # A connection aborted during its handshake (evicted, overdue, gone) ends start_tls
        # without an error, and the TLS protocol tells its app protocol nothing of it.
        if transport is None or transport.is_closing() or raw.is_closing():
            self._connections.release(self)
            raw.abort()
            return
        self.stage = Stage.OPEN
        self._open(transport)

    def _open(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self._inner = self._make_inner()
        self._inner.connection_made(transport)
        early, self._early = self._early, b""
        if early:
            self.data_received(early)

    def abort(self) -> None:
        if self._raw is not None:
            self._raw.abort()

    def data_received(self, data: bytes) -> None:
        if self.stage is Stage.SILENT:
            return self._start_handshake(data)
        if self._inner is None:
            # The TLS layer may pass on the first request before start_tls has returned.
            self._early += data
            if len(self._early) > MAX_HEAD_BYTES:
                self.abort()
            return None
        if self.head_since is None:
            self.head_since = time.monotonic()
        if not self._head:
            # The usual case: one whole request in one read, checked without copying.
            end = data.find(b"\r\n\r\n")
            if end == len(data) - 4:
                if end > MAX_HEAD_BYTES:
                    return self._refuse(b"431 Request Header Fields Too Large")
                if not REQUEST_LINE.fullmatch(data, 0, data.find(b"\r\n")):
                    return self._refuse(b"400 Bad Request")
                self.head_since = None
                self._inner.data_received(data)
                return None
        # Heads in pieces, or pipelined: each found from an offset, so a read of thousands of
        # pipelined requests costs one pass over it, not a copy of the rest per request.
        buffer = self._head + data if self._head else data
        start = 0
        while start < len(buffer):
            if self.head_since is None:  # bytes after a head start the next one (no bodies)
                self.head_since = time.monotonic()
            end = buffer.find(b"\r\n\r\n", start)
            if end < 0:
                if len(buffer) - start > MAX_HEAD_BYTES:
                    return self._refuse(b"431 Request Header Fields Too Large")
                break
            if end - start > MAX_HEAD_BYTES:
                return self._refuse(b"431 Request Header Fields Too Large")
            if not REQUEST_LINE.fullmatch(buffer, start, buffer.find(b"\r\n", start)):
                return self._refuse(b"400 Bad Request")
            start = end + 4
            self.head_since = None
        self._head = bytearray(buffer[start:])  # the head still arriving, if any
        self._inner.data_received(data)
        return None

    def _refuse(self, status: bytes) -> None:
        """Answer a head aiohttp should never see, and hang up."""
        if self._transport is not None:
            self._transport.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self._transport.close()

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        return None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.release(self)
        self._raw = self._transport = None
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connection_lost(exc)
