"""The HTTP server at the protocol level: keep-alive, pipelining, limits, slow clients."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

import pytest

from exporter import guard
from exporter.config import load_config
from exporter.demo.cluster import free_port
from exporter.http import HttpServer
from exporter.settings import SHIPPED_QUERIES, ListenAddress
from exporter.store import TargetStore


async def serve() -> tuple[HttpServer, int]:
    port = free_port()
    server = HttpServer(
        TargetStore(load_config(SHIPPED_QUERIES)),
        ListenAddress("127.0.0.1", port),
        ready=lambda: True,
    )
    await server.__aenter__()
    return server, port


async def exchange(port: int, data: bytes, *, read_until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        if read_until_close:
            return await asyncio.wait_for(reader.read(), 5)
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


def run(scenario: Callable[[int], Awaitable[None]]) -> None:
    async def main() -> None:
        server, port = await serve()
        try:
            await scenario(port)
        finally:
            await server.__aexit__(None, None, None)

    asyncio.run(main())


def test_pipelined_requests_are_answered_in_order() -> None:
    async def scenario(port: int) -> None:
        data = await exchange(
            port,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        assert re.findall(rb"HTTP/1\.1 (\d{3})", data) == [b"200", b"404", b"200"]
        assert data.endswith(b"ready\n")

    run(scenario)


def test_http_1_0_closes_and_1_1_keeps_alive() -> None:
    async def scenario(port: int) -> None:
        closed = await exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n")  # reads to EOF
        assert closed.startswith(b"HTTP/1.0 200") or closed.startswith(b"HTTP/1.1 200")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):  # the same connection serves request after request
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert await reader.readexactly(3) == b"ok\n"
        writer.close()

    run(scenario)


def test_head_sends_the_headers_of_get_without_the_body() -> None:
    async def scenario(port: int) -> None:
        data = await exchange(
            port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        head, _, body = data.partition(b"\r\n\r\n")
        assert body == b""
        length = int(
            next(
                line.split(b": ")[1]
                for line in head.split(b"\r\n")
                if line.startswith(b"Content-Length")
            )
        )
        assert length > 1000

    run(scenario)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"405"),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", b"413"),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"413"),
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nno-colon-here\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000, b"431"),
    ],
    ids=["post", "body", "chunked", "garbage", "bad-header", "huge-head", "huge-unfinished"],
)
def test_bad_requests_get_a_status_and_a_closed_connection(
    request_bytes: bytes, status: bytes
) -> None:
    async def scenario(port: int) -> None:
        data = await exchange(port, request_bytes)  # read until the server closes
        assert data.split(b" ")[1] == status

    run(scenario)


def test_a_client_that_never_finishes_its_head_is_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(guard, "HEAD_TIMEOUT_SECONDS", 0.3)

    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line, ever
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the server
        writer.close()

    run(scenario)
