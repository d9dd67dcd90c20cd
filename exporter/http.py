"""The HTTP side: aiohttp serves the pre-rendered pages; a thin guard adds what aiohttp lacks.

aiohttp (its llhttp parser) reads requests, rejects malformed ones (400: bad request lines,
conflicting Content-Length, NUL or CR in header values...), bounds header lines, fields and
their count (431), keeps idle keep-alive connections 75 s, pauses reading while pipelined
requests queue up, and respects the socket's write flow control. The handlers only hand out
bytes that already exist (`Page.body`).

What aiohttp does not do, `_Guard` (one small protocol wrapped around aiohttp's own, per
connection) and `ConnectionPool` do, each a few lines and tested by tests/test_hostile.py:
- a deadline for each request head (slowloris): from the connection or the first byte of a
  request to the blank line that ends its head, whatever trickles in meanwhile;
- at most `max_connections` open connections, kept below the file limit; when full, the
  oldest connection still waiting for a complete head makes room, so an attacker's idle or
  trickling sockets cannot lock out Prometheus;
- a bound on the bytes a client may send before its head is complete;
- reading paused while the socket's send buffer is full (a client that pipelines and never
  reads stops being read).
`raise_file_limit` raises the soft RLIMIT_NOFILE to the hard one at start, as Go programs do.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import functools
import html
import re
import resource
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Self, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from exporter import __version__
from exporter.errors import ConfigError
from exporter.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE
from exporter.settings import ListenAddress
from exporter.statuspage import StatusPage
from exporter.store import Store
from exporter.webconfig import WebConfig

SHUTDOWN_TIMEOUT_SECONDS = 2.0
MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_SECONDS = 10.0  # a request head must be complete this long after it started
IDLE_TIMEOUT_SECONDS = 75.0  # keep-alive connections idle longer are closed (aiohttp)
FILES_RESERVED = 64  # for the database pool, logs, the config files
MAX_CONNECTIONS = 1024  # Prometheus needs a few; the rest of a flood is evicted, oldest idle first
WRITE_BUFFER_HIGH = 256 * 1024
BCRYPT_CONCURRENCY = 2  # password checks at once; the others wait their turn, unread
SERVER = f"homepage-cms-exporter/{__version__}"
# RFC 9112 request-line: method SP request-target SP HTTP-version, the target in origin form
# (RFC 3986 path and query characters) or "*". aiohttp's parser hangs on some targets ("//[").
REQUEST_LINE = re.compile(
    rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,16} (?:/[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]*|\*) HTTP/1\.[01]"
)
NO_STORE = {"Cache-Control": "no-store"}  # the status page is always the current state
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Basic realm="homepage-cms-exporter"'}


def _qvalues(header: str) -> dict[str, float]:
    """`type;q=0.5, other` as {type: q} (RFC 9110 weights; a bad q counts as 0)."""
    weights: dict[str, float] = {}
    for part in header.split(","):
        name, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name:
            weights[name.lower()] = max(q, weights.get(name.lower(), 0.0))
    return weights


# Prometheus sends the same Accept and Accept-Encoding on every scrape: parse each text once.
@functools.lru_cache(maxsize=64)
def wants_openmetrics(accept: str) -> bool:
    """True when the client lists OpenMetrics at a q-value at least that of any other type."""
    weights = _qvalues(accept)
    om = weights.pop("application/openmetrics-text", 0.0)
    return om > 0 and om >= max(weights.values(), default=0.0)


@functools.lru_cache(maxsize=64)
def accepts_gzip(accept_encoding: str) -> bool:
    return _qvalues(accept_encoding).get("gzip", 0.0) > 0


def _landing(metrics_path: str) -> bytes:
    return (
        "<!doctype html><html><head><title>Homepage CMS exporter</title></head><body>"
        "<h1>Homepage CMS exporter</h1>"
        f"<p>Version {html.escape(__version__)}</p>"
        f'<ul><li><a href="{metrics_path}">Metrics</a></li>'
        '<li><a href="/healthz">Liveness</a></li>'
        '<li><a href="/readyz">Readiness</a></li></ul>'
        "</body></html>"
    ).encode()


def raise_file_limit() -> int:
    """Raise the soft open-file limit to the hard one (as Go's runtime does); the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim(0), where there is one."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return lambda: trim(0)


class ConnectionPool:
    """Open connections, oldest first, and which of them still wait for a complete head."""

    # Thousands of connections that come and go leave their memory freed but held by the
    # allocator (glibc keeps free pages in its arenas): RSS would stay up after an attack.
    # Once a burst has drained, hand the free pages back, once, a second later.
    TRIM_AFTER = 256

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: OrderedDict[_Guard, None] = OrderedDict()
        self._high = 0
        self._trim = _malloc_trim()
        self._trim_pending: asyncio.TimerHandle | None = None

    def admit(self, guard: _Guard) -> None:
        while len(self._open) >= self.limit:
            victim = next((g for g in self._open if g.waiting_for_head), None)
            if victim is None:
                victim = next(iter(self._open))  # all busy: the oldest goes
            self.release(victim)
            victim.abort()
        self._open[guard] = None
        self._high = max(self._high, len(self._open))

    def release(self, guard: _Guard) -> None:
        self._open.pop(guard, None)
        if self._high >= self.TRIM_AFTER and len(self._open) * 8 < self._high:
            self._high = len(self._open)
            if self._trim is not None and self._trim_pending is None:
                self._trim_pending = asyncio.get_running_loop().call_later(1.0, self._trimmed)

    def _trimmed(self) -> None:
        self._trim_pending = None
        if self._trim is not None:
            self._trim()

    def sweep(self) -> None:
        """Close every connection whose request head is overdue (slowloris)."""
        overdue = time.monotonic() - HEAD_TIMEOUT_SECONDS
        for guard in [g for g in self._open if g.head_since is not None and g.head_since < overdue]:
            guard.abort()

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(HEAD_TIMEOUT_SECONDS / 20)
            self.sweep()

    def close_all(self) -> None:
        for guard in list(self._open):
            guard.abort()
        self._open.clear()


class _Guard(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind a head deadline and flow control."""

    __slots__ = ("_head", "_inner", "_pool", "_transport", "head_since")

    def __init__(self, inner: RequestHandler, pool: ConnectionPool) -> None:
        self._inner = inner
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._head = bytearray()  # a request head arriving in pieces, at most MAX_HEAD_BYTES
        # When the head now awaited began (the connection, or its first byte); None between
        # requests. ConnectionPool.sweep closes connections whose head is overdue: one timer
        # for all connections, none per request.
        self.head_since: float | None = None

    @property
    def waiting_for_head(self) -> bool:
        return self.head_since is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self.head_since = time.monotonic()
        self._pool.admit(self)
        self._inner.connection_made(transport)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
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
        rest = data
        while rest:
            if self.head_since is None:  # bytes after a head start the next one (no bodies)
                self.head_since = time.monotonic()
            self._head += rest
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_HEAD_BYTES:
                    return self._refuse(b"431 Request Header Fields Too Large")
                break
            if end > MAX_HEAD_BYTES:
                return self._refuse(b"431 Request Header Fields Too Large")
            if not REQUEST_LINE.fullmatch(self._head, 0, self._head.find(b"\r\n")):
                return self._refuse(b"400 Bad Request")
            rest = bytes(self._head[end + 4 :])
            self._head.clear()
            self.head_since = None
        self._inner.data_received(data)
        return None

    def _refuse(self, status: bytes) -> None:
        """Answer a head aiohttp should never see, and hang up."""
        if self._transport is not None:
            self._transport.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self._transport.close()

    def eof_received(self) -> None:
        self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool.release(self)
        self._transport = None
        self._inner.connection_lost(exc)


class HttpServer:
    """The exporter's HTTP server (aiohttp), bound for the life of the context."""

    def __init__(
        self,
        store: Store,
        listen: ListenAddress,
        *,
        ready: Callable[[], bool],
        web_config: WebConfig | None = None,
        probes: Mapping[str, Store] | None = None,
        status: StatusPage | None = None,
    ) -> None:
        self._store = store
        self._listen = listen
        self._ready = ready
        self._web = web_config or WebConfig()
        self._probes = dict(probes or {})
        self._status = status
        self._server: web.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._servers: list[asyncio.Server] = []
        # The page's response headers, per (OpenMetrics?, gzip?), built once.
        self._page_headers = {
            (om, gz): {
                "Content-Type": OPENMETRICS_CONTENT_TYPE if om else TEXT_CONTENT_TYPE,
                "Vary": "Accept, Accept-Encoding",
                **({"Content-Encoding": "gzip"} if gz else {}),
                "Server": SERVER,
                **self._web.headers,
            }
            for om in (False, True)
            for gz in (False, True)
        }
        self._routes: dict[str, Callable[[web.BaseRequest], web.Response]] = {
            "/metrics": self._metrics,
            "/probe": self._probe,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/": self._landing,
        }
        self._bcrypt = asyncio.Semaphore(BCRYPT_CONCURRENCY)
        files = raise_file_limit()
        self.pool = ConnectionPool(max(16, min(MAX_CONNECTIONS, files - FILES_RESERVED)))
        self.bound: list[str] = []

    # --- handlers -------------------------------------------------------------------------
    # aiohttp's low-level Server with one handler and a dict of routes: no router, middleware
    # or signals run per request (bench/http_servers.py: that Python was half the cost).

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return _closing(405, "only GET and HEAD\n", {"Allow": "GET, HEAD"})
        if request.body_exists or "Transfer-Encoding" in request.headers:
            return _closing(413, "request bodies are not accepted\n")
        path = request.path
        if self._web.users and path not in self._web.open_paths:
            authorization = request.headers.get("Authorization")
            if not self._web.is_cached(authorization):
                async with self._bcrypt:
                    ok = await asyncio.get_running_loop().run_in_executor(
                        None, self._web.check, authorization
                    )
                if not ok:
                    return self._respond(
                        web.Response(
                            status=401, text="unauthorized\n", headers=UNAUTHORIZED_HEADERS
                        )
                    )
        route = self._routes.get(path)
        response = (
            route(request) if route is not None else web.Response(status=404, text="not found\n")
        )
        return self._respond(response)

    def _respond(self, response: web.Response) -> web.Response:
        if "Server" not in response.headers:  # pages carry theirs already (_page_headers)
            response.headers["Server"] = SERVER
            response.headers.update(self._web.headers)
        return response

    def _page(self, request: web.BaseRequest, store: Store) -> web.Response:
        headers = request.headers
        om = wants_openmetrics(headers.get("Accept", ""))
        gz = accepts_gzip(headers.get("Accept-Encoding", ""))
        if gz and om not in store.gzip_wanted:
            store.want_gzip(om)  # later renders compress this format ahead of the scrapes
        body = store.page.body(openmetrics=om, gzipped=gz)
        return web.Response(body=body, headers=self._page_headers[om, gz])

    def _metrics(self, request: web.BaseRequest) -> web.Response:
        return self._page(request, self._store)

    def _probe(self, request: web.BaseRequest) -> web.Response:
        """Prometheus's multi-target pattern: /probe?target=NAME serves that target's page."""
        if not self._probes:
            return web.Response(status=404, text="no targets file: scrape /metrics\n")
        name = request.query.get("target", "")
        if not name:
            return web.Response(status=400, text="missing ?target=NAME\n")
        store = self._probes.get(name)
        if store is None:  # never list the names: they are the deployment's topology
            return web.Response(status=404, text="unknown target\n")
        return self._page(request, store)

    def _healthz(self, request: web.BaseRequest) -> web.Response:
        return web.Response(text="ok\n")

    def _readyz(self, request: web.BaseRequest) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="database unreachable\n")

    def _landing(self, request: web.BaseRequest) -> web.Response:
        body = self._status.body if self._status is not None else _landing("/metrics")
        return web.Response(body=body, content_type="text/html", charset="utf-8", headers=NO_STORE)

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        server = web.Server(
            self._handle,
            access_log=None,
            keepalive_timeout=IDLE_TIMEOUT_SECONDS,
            # Above the guard's MAX_HEAD_BYTES, so a too-large head is the guard's 431.
            max_line_size=2 * MAX_HEAD_BYTES,
            max_field_size=2 * MAX_HEAD_BYTES,
            max_headers=64,
            lingering_time=0,  # no bodies are read: close at once after refusing one
        )
        host = self._listen.host or None
        try:
            listener = await loop.create_server(
                lambda: _Guard(server(), self.pool),
                host,
                self._listen.port,
                reuse_address=True,
                ssl=self._web.ssl_context,
                backlog=1024,
            )
        except OSError as exc:
            raise ConfigError(_bind_error(self._listen, exc)) from None
        self._server = server
        self._servers.append(listener)
        self._sweeper = loop.create_task(self.pool.sweep_forever())
        self.bound = [_format_address(s.getsockname()) for s in listener.sockets]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for listener in self._servers:
            listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown(SHUTDOWN_TIMEOUT_SECONDS)
        self.pool.close_all()
        for listener in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener.wait_closed(), SHUTDOWN_TIMEOUT_SECONDS)
        self._servers.clear()


def _closing(status: int, text: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """An error answer that also ends the connection: what follows it cannot be trusted."""
    response = web.Response(status=status, text=text, headers=headers)
    response.force_close()
    return response


def _bind_error(listen: ListenAddress, exc: OSError) -> str:
    where = f"{listen.host or '*'}:{listen.port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: the address is in use (another exporter running?)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: no such local address"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def _format_address(name: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
