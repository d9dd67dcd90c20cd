"""The HTTP side: /metrics from pre-rendered bytes, a landing page, liveness and readiness."""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Self

from aiohttp import web
from aiohttp.typedefs import Handler

from exporter import __version__
from exporter.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE
from exporter.settings import ListenAddress
from exporter.snapshot import Store
from exporter.webconfig import WebConfig

SHUTDOWN_TIMEOUT_SECONDS = 2.0


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


class HttpServer:
    """An aiohttp server bound for the life of the context."""

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
        self._probes = dict(probes or {})
        self._listen = listen
        self._ready = ready
        self._web = web_config or WebConfig()
        self._runner: web.AppRunner | None = None
        self.bound: list[str] = []

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Basic auth (bcrypt, off the event loop) unless the path is configured open."""
        if self._web.users and request.path not in self._web.open_paths:
            header = request.headers.get("Authorization")
            if not await asyncio.to_thread(self._web.check, header):
                return web.Response(
                    status=401,
                    text="unauthorized\n",
                    headers={
                        "WWW-Authenticate": 'Basic realm="homepage-cms-exporter"',
                        **self._web.headers,
                    },
                )
        response = await handler(request)
        response.headers.update(self._web.headers)
        return response

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/probe", self._probe)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        return self._page(request, self._store)

    async def _probe(self, request: web.Request) -> web.Response:
        """Prometheus's multi-target pattern: /probe?target=NAME serves that target's page."""
        if not self._probes:
            return web.Response(status=404, text="no targets file: scrape /metrics\n")
        name = request.query.get("target")
        if not name:
            return web.Response(status=400, text="missing ?target=NAME\n")
        store = self._probes.get(name)
        if store is None:
            known = ", ".join(sorted(self._probes))
            return web.Response(status=404, text=f"unknown target; known: {known}\n")
        return self._page(request, store)

    def _page(self, request: web.Request, store: Store) -> web.Response:
        page = store.page
        om = wants_openmetrics(request.headers.get("Accept", ""))
        gz = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        headers = {
            "Content-Type": OPENMETRICS_CONTENT_TYPE if om else TEXT_CONTENT_TYPE,
            "Vary": "Accept, Accept-Encoding",
        }
        if gz:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=page.body(openmetrics=om, gzipped=gz), headers=headers)

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=_landing("/metrics"), content_type="text/html")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(text="database unreachable\n", status=503)

    async def __aenter__(self) -> Self:
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
        )
        await runner.setup()
        try:
            host = self._listen.host or None
            site = web.TCPSite(
                runner,
                host,
                self._listen.port,
                reuse_address=True,
                ssl_context=self._web.ssl_context,
            )
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        # asyncio's and uvloop's servers both expose .sockets; neither is public via aiohttp.
        sockets = getattr(site._server, "sockets", None) or ()
        self.bound = [_format_address(s.getsockname()) for s in sockets]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def _format_address(name: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
