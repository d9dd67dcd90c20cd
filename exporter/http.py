"""The HTTP side: a small HTTP/1.1 server that hands out pre-rendered /metrics bytes.

The exporter answers GET and HEAD on five paths and never reads a request body, so instead of a
general web framework it runs one asyncio.Protocol per connection: parse the request head,
pick the bytes, write them. A scrape costs one parse and one write of bytes that already exist
(bench/: aiohttp's generic response path spent half its time copying the page per request).
Keep-alive and pipelining work; oversized heads, bodies and slow clients are cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import html
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import parse_qs, urlsplit

from exporter import __version__
from exporter.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE
from exporter.settings import ListenAddress
from exporter.snapshot import Store
from exporter.webconfig import WebConfig

SHUTDOWN_TIMEOUT_SECONDS = 2.0
MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_SECONDS = 10.0  # a client must send its request head within this (slowloris)
IDLE_TIMEOUT_SECONDS = 75.0  # keep-alive connections idle longer are closed
SERVER = f"homepage-cms-exporter/{__version__}".encode()
REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def wants_openmetrics(accept: str) -> bool:
    """True when the client lists OpenMetrics at a q-value at least that of any other type."""
    best_other, best_om = 0.0, -1.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media == "application/openmetrics-text":
            best_om = max(best_om, q)
        elif media:
            best_other = max(best_other, q)
    return best_om > 0 and best_om >= best_other


def accepts_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        coding, _, q = part.strip().partition(";")
        if coding.strip() == "gzip":
            return q.strip().replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


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


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value
    keep_alive: bool


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_head(head: bytes) -> Request:
    """A request from its head (request line and headers, without the blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest(400, "undecodable request") from None
    line, *lines = text.split("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for header in lines:
        name, sep, value = header.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header")
        headers[name.lower()] = value.strip()
    if headers.get("transfer-encoding") or headers.get("content-length", "0") not in ("", "0"):
        raise BadRequest(413, "request bodies are not accepted")
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    url = urlsplit(target)
    return Request(method, url.path or "/", parse_qs(url.query), headers, keep_alive)


_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def render_head(
    response: Response, *, length: int, keep_alive: bool, extra: Mapping[str, str]
) -> bytes:
    lines = [
        b"HTTP/1.1 %d %s" % (response.status, REASONS.get(response.status, b"Unknown")),
        b"Server: " + SERVER,
        b"Date: " + _http_date(),
        b"Content-Type: " + response.content_type.encode(),
        b"Content-Length: %d" % length,
    ]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in (*response.headers, *extra.items())]
    if not keep_alive:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _Connection(asyncio.Protocol):
    """One client connection: requests are answered in order, one at a time."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._busy = False  # an answer is being computed off the event loop (bcrypt)
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)
        self._arm(HEAD_TIMEOUT_SECONDS)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None

    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, self.close)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._process()

    def _process(self) -> None:
        while self._transport is not None and not self._busy:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._fail(431, "request head too large")
                elif self._buffer:
                    self._arm(HEAD_TIMEOUT_SECONDS)
                return
            if end > MAX_HEAD_BYTES:
                self._fail(431, "request head too large")
                return
            head = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
            try:
                request = parse_head(head)
            except BadRequest as exc:
                self._fail(exc.status, str(exc))
                return
            answer = self._server.answer(request)
            if isinstance(answer, Response):
                self._send(request, answer)
            else:
                # Only an uncached password check gets here: answer it off the event loop and
                # hold later pipelined requests until it is sent.
                self._busy = True
                self._server.spawn(self._finish(request, answer))
        if self._transport is not None and not self._buffer:
            self._arm(IDLE_TIMEOUT_SECONDS)

    async def _finish(self, request: Request, pending: asyncio.Future[Response]) -> None:
        try:
            response = await pending
        finally:
            self._busy = False
        self._send(request, response)
        if self._transport is not None:
            self._process()

    def _send(self, request: Request, response: Response) -> None:
        transport = self._transport
        if transport is None:
            return
        keep_alive = request.keep_alive and not self._server.closing
        head = render_head(
            response,
            length=len(response.body),
            keep_alive=keep_alive,
            extra=self._server.extra_headers,
        )
        if request.method == "HEAD":
            transport.write(head)
        else:
            # Two buffers, no join: the page bytes go out without a copy in Python.
            transport.writelines((head, response.body))
        if not keep_alive:
            transport.close()

    def _fail(self, status: int, message: str) -> None:
        request = Request("GET", "/", {}, {}, keep_alive=False)
        self._send(request, Response(status, message.encode() + b"\n"))


class HttpServer:
    """The exporter's HTTP server, bound for the life of the context."""

    def __init__(
        self,
        store: Store,
        listen: ListenAddress,
        *,
        ready: Callable[[], bool],
        web_config: WebConfig | None = None,
        probes: Mapping[str, Store] | None = None,
    ) -> None:
        self._store = store
        self._listen = listen
        self._ready = ready
        self._web = web_config or WebConfig()
        self._probes = dict(probes or {})
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections: set[_Connection] = set()
        self.closing = False
        self.extra_headers: Mapping[str, str] = self._web.headers
        self.bound: list[str] = []

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a connection's pending answer; the server owns the task until it ends."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def answer(self, request: Request) -> Response | asyncio.Future[Response]:
        """The response, or a future of it when a password must be checked with bcrypt."""
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"only GET and HEAD\n", headers=(("Allow", "GET, HEAD"),))
        if self._web.users and request.path not in self._web.open_paths:
            authorization = request.headers.get("authorization")
            if not self._web.is_cached(authorization):
                loop = asyncio.get_running_loop()
                checked = loop.run_in_executor(None, self._web.check, authorization)
                return asyncio.ensure_future(self._after_check(checked, request))
        return self._route(request)

    async def _after_check(self, checked: asyncio.Future[bool], request: Request) -> Response:
        if not await checked:
            return Response(
                401,
                b"unauthorized\n",
                headers=(("WWW-Authenticate", 'Basic realm="homepage-cms-exporter"'),),
            )
        return self._route(request)

    def _route(self, request: Request) -> Response:
        path = request.path
        if path == "/metrics":
            return self._page(request, self._store)
        if path == "/probe":
            return self._probe(request)
        if path == "/healthz":
            return Response(200, b"ok\n")
        if path == "/readyz":
            if self._ready():
                return Response(200, b"ready\n")
            return Response(503, b"database unreachable\n")
        if path == "/":
            return Response(200, _landing("/metrics"), "text/html; charset=utf-8")
        return Response(404, b"not found\n")

    def _probe(self, request: Request) -> Response:
        """Prometheus's multi-target pattern: /probe?target=NAME serves that target's page."""
        if not self._probes:
            return Response(404, b"no targets file: scrape /metrics\n")
        name = request.query.get("target", [""])[-1]
        if not name:
            return Response(400, b"missing ?target=NAME\n")
        store = self._probes.get(name)
        if store is None:
            known = ", ".join(sorted(self._probes))
            return Response(404, f"unknown target; known: {known}\n".encode())
        return self._page(request, store)

    def _page(self, request: Request, store: Store) -> Response:
        om = wants_openmetrics(request.headers.get("accept", ""))
        gz = accepts_gzip(request.headers.get("accept-encoding", ""))
        headers: tuple[tuple[str, str], ...] = (("Vary", "Accept, Accept-Encoding"),)
        if gz:
            headers += (("Content-Encoding", "gzip"),)
        return Response(
            200,
            store.page.body(openmetrics=om, gzipped=gz),
            OPENMETRICS_CONTENT_TYPE if om else TEXT_CONTENT_TYPE,
            headers,
        )

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        host = self._listen.host or None
        self._server = await loop.create_server(
            lambda: _Connection(self),
            host,
            self._listen.port,
            reuse_address=True,
            ssl=self._web.ssl_context,
            backlog=256,
        )
        self.bound = [_format_address(s.getsockname()) for s in self._server.sockets]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self.closing = True
        server.close()
        for connection in list(self.connections):
            connection.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), SHUTDOWN_TIMEOUT_SECONDS)


def _format_address(name: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
