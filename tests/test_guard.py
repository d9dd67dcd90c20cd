"""The guard alone, in process, on both event loops: what a connection may hold before and
during its TLS handshake, and for how long; a trivial protocol stands in for aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, cast

import pytest
import uvloop

from exporter import guard
from exporter.guard import Connections, Guard
from tests.attacks import HALF_A_CLIENT_HELLO
from tests.harness import self_signed_cert

RUNNERS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


class Answer(asyncio.Protocol):
    """Answers every read with one HTTP response and hangs up."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        self.transport.close()


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) TLS contexts for a throwaway certificate."""
    cert, key = self_signed_cert(tmp_path_factory.mktemp("tls"), "127.0.0.1")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


@contextlib.asynccontextmanager
async def serving(connections: Connections, tls: ssl.SSLContext) -> AsyncIterator[int]:
    """A guarded TLS server on a loopback port, swept as the exporter sweeps."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Guard(Answer, connections, tls), "127.0.0.1", 0)
    sweeper = loop.create_task(connections.sweep_forever())
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        sweeper.cancel()
        connections.close_all()
        server.close()


async def fetch(port: int, client: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def closed_by_server(sock: socket.socket, within: float = 5.0) -> bool:
    """True once the server hangs up on `sock` (a non-blocking socket)."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while True:
                try:
                    if await loop.sock_recv(sock, 4096) == b"":
                        return True
                except ConnectionError:
                    return True
    return False


async def open_sockets(port: int, count: int, first: bytes = b"") -> list[socket.socket]:
    loop = asyncio.get_running_loop()
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        if first:
            await loop.sock_sendall(sock, first)
        sockets.append(sock)
    return sockets


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Poll the connections' state (the server runs on this loop) for up to 5 s."""
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def run(runner: str, scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario()

    RUNNERS[runner](main())


loops = pytest.mark.parametrize("runner", list(RUNNERS))


@loops
def test_tls_is_served_whatever_the_loop_read_before_the_handshake(
    runner: str, contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    # uvloop reads a new connection before the guard can pause it: the ClientHello's first
    # bytes arrive in the guard, which must hand them to TLS in order.
    async def scenario() -> None:
        async with serving(Connections(64), contexts[0]) as port:
            for _ in range(20):
                assert (await fetch(port, contexts[1])).endswith(b"\r\n\r\nok\n")

    run(runner, scenario)


@loops
def test_silent_connections_are_counted_and_hold_no_tls_session(
    runner: str, contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    async def scenario() -> None:
        connections = Connections(64)
        async with serving(connections, contexts[0]) as port:
            silent = await open_sockets(port, 40)
            await until(lambda: len(connections) == 40, "40 connections counted")
            assert connections.tls_sessions == 0
            talking = await open_sockets(port, 10, HALF_A_CLIENT_HELLO)
            await until(lambda: connections.tls_sessions == 10, "10 TLS sessions")
            for sock in silent + talking:
                sock.close()

    run(runner, scenario)


@loops
def test_a_full_pool_evicts_the_oldest_silent_connection_not_a_scrape(
    runner: str, contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    async def scenario() -> None:
        connections = Connections(16, tls_limit=4)
        async with serving(connections, contexts[0]) as port:
            flood = await open_sockets(port, 40)
            flood += await open_sockets(port, 20, HALF_A_CLIENT_HELLO)
            assert len(connections) <= 16
            assert connections.tls_sessions <= 4
            assert (await fetch(port, contexts[1])).endswith(b"ok\n")
            assert await closed_by_server(flood[0])  # the oldest made room
            for sock in flood:
                sock.close()

    run(runner, scenario)


@pytest.mark.parametrize(
    ("first", "handshake", "head"),
    [
        (b"", 0.3, 60.0),
        (HALF_A_CLIENT_HELLO, 0.3, 60.0),
        (b"", 60.0, 0.3),
        (HALF_A_CLIENT_HELLO, 60.0, 0.3),
    ],
    ids=[
        "silent, handshake deadline",
        "stalled handshake, handshake deadline",
        "silent, head deadline",
        "stalled handshake, head deadline",
    ],
)
@loops
def test_a_connection_that_never_completes_its_handshake_is_cut_off(
    runner: str,
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    monkeypatch: pytest.MonkeyPatch,
    first: bytes,
    handshake: float,
    head: float,
) -> None:
    monkeypatch.setattr(guard, "HANDSHAKE_TIMEOUT_SECONDS", handshake)
    monkeypatch.setattr(guard, "HEAD_TIMEOUT_SECONDS", head)

    async def scenario() -> None:
        connections = Connections(64)
        async with serving(connections, contexts[0]) as port:
            (sock,) = await open_sockets(port, 1, first)
            assert await closed_by_server(sock)
            sock.close()
            await until(lambda: len(connections) == 0, "the connection released")
            assert connections.tls_sessions == 0

    run(runner, scenario)


@loops
def test_plain_http_on_the_tls_port_is_dropped_and_released(
    runner: str, contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    async def scenario() -> None:
        connections = Connections(64)
        async with serving(connections, contexts[0]) as port:
            (sock,) = await open_sockets(port, 1, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await closed_by_server(sock)
            sock.close()
            await until(
                lambda: len(connections) == 0 and connections.tls_sessions == 0, "it released"
            )

    run(runner, scenario)
