"""The HTTP side: aiohttp serves the pre-rendered pages, behind the guard, on a route table.

aiohttp (its llhttp parser) reads requests and rejects malformed ones; `exporter.guard` sits
in front of it for plain HTTP and TLS alike (connection cap, handshake and head deadlines,
head size, write flow control); `exporter.exposition` picks the format and encoding a client
asked for. The handlers hand out bytes that already exist (`Page.body`) and write nothing
anywhere; only `/` may render, the status page for people, at most once in its freshness
window and in a worker thread (`StatusPage.current`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import html
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Self

from aiohttp import web

from exporter import __version__
from exporter.errors import ConfigError
from exporter.exposition import Encoding, Format, negotiate, negotiate_encoding
from exporter.guard import MAX_HEAD_BYTES, Connections, Guard, connection_limit, listen_backlog
from exporter.settings import ListenAddress
from exporter.statuspage import StatusPage
from exporter.store import Store
from exporter.webconfig import WebConfig

SHUTDOWN_TIMEOUT_SECONDS = 2.0
IDLE_TIMEOUT_SECONDS = 75.0  # keep-alive connections idle longer are closed (aiohttp)
BCRYPT_CONCURRENCY = 2  # password checks at once; the others wait their turn, unread
# Password checks one client address may have waiting or running; beyond, 429 at once. One
# address flooding wrong passwords otherwise queues every check behind its own (300 of them
# held a legitimate first scrape 33 s): now Prometheus, from its own address, waits behind a
# few checks per flooding address. (A successful check is cached: only a first scrape, after
# a start or reload, needs bcrypt at all.)
PASSWORD_CHECKS_PER_CLIENT = 4
SERVER = f"homepage-cms-exporter/{__version__}"
NO_STORE = {"Cache-Control": "no-store"}  # the status page is always the current state
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Basic realm="homepage-cms-exporter"'}


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


class HttpServer:
    """The exporter's HTTP server (aiohttp), bound for the life of the context."""

    def __init__(
        self,
        store: Store,
        listen: ListenAddress | Sequence[ListenAddress],
        *,
        ready: Callable[[], bool],
        web_config: WebConfig | None = None,
        probes: Mapping[str, Store] | None = None,
        status: StatusPage | None = None,
    ) -> None:
        self._store = store
        self._listen = (listen,) if isinstance(listen, ListenAddress) else tuple(listen)
        self._ready = ready
        self._web = web_config or WebConfig()
        self._probes = dict(probes or {})
        self._status = status
        self._server: web.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._servers: list[asyncio.Server] = []
        # The page's response headers, per format and encoding, built once.
        self._page_headers = {
            (fmt, encoding): {
                "Content-Type": fmt.content_type,
                "Vary": "Accept, Accept-Encoding",
                **({"Content-Encoding": "gzip"} if encoding is Encoding.GZIP else {}),
                "Server": SERVER,
                **self._web.headers,
            }
            for fmt in Format
            for encoding in Encoding
        }
        self._routes: dict[str, Callable[[web.BaseRequest], Awaitable[web.Response]]] = {
            "/metrics": self._metrics,
            "/probe": self._probe,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/": self._landing,
        }
        self._bcrypt = asyncio.Semaphore(BCRYPT_CONCURRENCY)
        self._checking: collections.Counter[str] = collections.Counter()  # by address
        self._checks: dict[bytes, asyncio.Future[bool]] = {}  # in flight, by credentials
        self.connections = Connections(connection_limit())
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
                ok = await self._password_check(request, authorization)
                if ok is None:
                    return self._respond(
                        _closing(
                            429,
                            "too many password checks from this address at once\n",
                            {"Retry-After": "1"},
                        )
                    )
                if not ok:
                    return self._respond(
                        web.Response(
                            status=401, text="unauthorized\n", headers=UNAUTHORIZED_HEADERS
                        )
                    )
        route = self._routes.get(path)
        if route is None:
            return self._respond(web.Response(status=404, text="not found\n"))
        return self._respond(await route(request))

    async def _password_check(
        self, request: web.BaseRequest, authorization: str | None
    ) -> bool | None:
        """The bcrypt check of `authorization`, or None when its address has its share
        waiting. Requests carrying the same credentials share one check: Prometheus, just
        started, asks for many /probe targets at once with one password, and each would
        otherwise count against its address and wait for a bcrypt of its own."""
        digest = self._web.digest(authorization)
        shared = self._checks.get(digest) if digest is not None else None
        if shared is not None:
            try:
                return await asyncio.shield(shared)
            except asyncio.CancelledError:
                if not shared.cancelled():
                    raise  # this request was cancelled, not the check it waited on
        client = request.remote or ""
        if self._checking[client] >= PASSWORD_CHECKS_PER_CLIENT:
            return None
        self._checking[client] += 1
        loop = asyncio.get_running_loop()
        result: asyncio.Future[bool] = loop.create_future()
        if digest is not None:
            self._checks[digest] = result
        try:
            async with self._bcrypt:
                ok = await loop.run_in_executor(None, self._web.check, authorization)
            result.set_result(ok)
            return ok
        finally:
            if not result.done():  # cancelled: those waiting on it check for themselves
                result.cancel()
            if digest is not None:
                self._checks.pop(digest, None)
            self._checking[client] -= 1
            if not self._checking[client]:
                del self._checking[client]

    def _respond(self, response: web.Response) -> web.Response:
        if "Server" not in response.headers:  # pages carry theirs already (_page_headers)
            response.headers["Server"] = SERVER
            response.headers.update(self._web.headers)
        return response

    def _page(self, request: web.BaseRequest, store: Store) -> web.Response:
        headers = request.headers
        fmt = negotiate(headers.get("Accept", ""))
        encoding = negotiate_encoding(headers.get("Accept-Encoding", ""))
        body = store.page.body(fmt, encoding)
        return web.Response(body=body, headers=self._page_headers[fmt, encoding])

    async def _metrics(self, request: web.BaseRequest) -> web.Response:
        return self._page(request, self._store)

    async def _probe(self, request: web.BaseRequest) -> web.Response:
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

    async def _healthz(self, request: web.BaseRequest) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.BaseRequest) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="database unreachable\n")

    async def _landing(self, request: web.BaseRequest) -> web.Response:
        """The status page (rendered in a worker thread when stale); without one (the server
        tested alone), links to the other paths."""
        body = await self._status.current() if self._status is not None else _landing("/metrics")
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
        # TLS is the guard's to start (after the connection is counted, on a deadline), not
        # the loop's: the loop would hold a TLS session for every silent socket.
        tls = self._web.ssl_context
        for listen in self._listen:
            try:
                listener = await loop.create_server(
                    lambda: Guard(server, self.connections, tls),
                    listen.host or None,
                    listen.port,
                    reuse_address=True,
                    backlog=listen_backlog(),
                )
            except OSError as exc:
                for bound in self._servers:  # the ones already bound are let go
                    bound.close()
                    await bound.wait_closed()
                self._servers.clear()
                self.bound.clear()
                self.connections.close_all()
                raise ConfigError(_bind_error(listen, exc)) from None
            self._servers.append(listener)
            self.bound += [_format_address(s.getsockname()) for s in listener.sockets]
        self._server = server
        self._sweeper = loop.create_task(self.connections.sweep_forever())
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
        self.connections.close_all()
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
