"""Resource attacks on the exporter's HTTP side, bounded in count and time; each stops by
itself. Shared by tests/test_hostile.py (which asserts on them) and bench/hostile.py (which
reports them). Loopback only."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt

from tests.harness import Exporter, self_signed_cert

Attack = Callable[[int], Coroutine[Any, Any, None]]
NOWHERE = "postgresql://nobody@127.0.0.1:1/none"  # refused at once: no database needed here
USER = "prometheus"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def start(
    tmp: Path,
    *,
    password: str | None = None,
    wrapper: tuple[str, ...] = (),
    tls: bool = False,
    ipv6: bool = False,
    fresh_user: str | None = None,
) -> Exporter:
    """The exporter with no database behind it, with basic auth for USER when `password`,
    serving TLS (a throwaway certificate; `Exporter.context` trusts it) when `tls`. The
    harness's own requests are USER's, so their check is cached; `fresh_user` is a second
    user with the same password whose first request is a real bcrypt check."""
    env = {"HOMEPAGE_EXPORTER_DATABASE_URL": NOWHERE, "HOMEPAGE_EXPORTER_CONNECT_TIMEOUT": "1s"}
    headers = {}
    web = ""
    if password is not None:
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
        web += f"basic_auth_users:\n  {USER}: '{hashed}'\n"
        if fresh_user is not None:
            web += f"  {fresh_user}: '{hashed}'\n"
        headers["Authorization"] = basic(USER, password)
    context = None
    if tls:
        cert, key = self_signed_cert(tmp, "127.0.0.1")
        web += f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        context = ssl.create_default_context(cafile=str(cert))
    if web:
        (tmp / "web.yml").write_text(web)
        env["HOMEPAGE_EXPORTER_WEB_CONFIG_FILE"] = str(tmp / "web.yml")
    scheme = "https" if tls else "http"
    return Exporter(
        env, ("run",), scheme=scheme, context=context, headers=headers, wrapper=wrapper, ipv6=ipv6
    ).wait_healthy()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def connect(
    port: int, tls: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the exporter, over TLS (handshake done) when `tls`."""
    return await asyncio.open_connection("127.0.0.1", port, ssl=tls)


async def scrape_once(port: int, auth: str | None, tls: ssl.SSLContext | None = None) -> float:
    started = time.perf_counter()
    reader, writer = await connect(port, tls)
    extra = f"Authorization: {auth}\r\n" if auth else ""
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    return time.perf_counter() - started


@dataclass(frozen=True)
class Outcome:
    """A well-behaved client's view during an attack, and the exporter's memory."""

    latencies: list[float]
    failures: int
    growth_mb: float  # peak RSS during the attack, over the RSS before it
    after_mb: float  # RSS once the attack ended (up to 5 s later), over the RSS before it
    peak_files: int  # the most files the exporter had open during the attack

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def under_attack(
    pid: int,
    port: int,
    attack: Attack,
    auth: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> Outcome:
    """Scrape every 100 ms (over TLS when `tls`) while `attack` runs against `port`."""
    for _ in range(10):  # warm: the first scrapes and query runs allocate for good
        await scrape_once(port, auth, tls)
    await asyncio.sleep(1)
    before = rss_mb(pid)
    peak = before
    files = open_files(pid)
    latencies: list[float] = []
    failures = 0
    task = asyncio.create_task(attack(port))
    while not task.done():
        try:
            latencies.append(await scrape_once(port, auth, tls))
        except (AssertionError, OSError, TimeoutError):
            failures += 1
        peak = max(peak, rss_mb(pid))
        files = max(files, open_files(pid))
        await asyncio.sleep(0.1)
    await task
    after = rss_mb(pid)
    for _ in range(50):  # the attacker's sockets are gone; give the exporter 5 s to settle
        if after - before < 10:
            break
        await asyncio.sleep(0.1)
        after = rss_mb(pid)
    return Outcome(latencies, failures, peak - before, after - before, files)


async def non_reading_pipeliners(port: int, tls: ssl.SSLContext | None = None) -> None:
    """20 connections pipelining GET /metrics for 6 s, never reading an answer."""
    writers = []
    for _ in range(20):
        _, writer = await connect(port, tls)
        writers.append(writer)
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 200
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        for writer in writers:
            if writer.transport.get_write_buffer_size() < 1 << 20:
                writer.write(request)
        await asyncio.sleep(0.05)
    for writer in writers:
        writer.transport.abort()


def junk_flood(wrong_auth: str, tls: ssl.SSLContext | None = None) -> Attack:
    """30 clients, for 5 s: a wrong password, then endless header bytes and no blank line;
    reconnecting (a new TLS handshake each time, with `tls`) whenever the server hangs up."""

    async def attack(port: int) -> None:
        deadline = time.monotonic() + 5

        async def one() -> None:
            while time.monotonic() < deadline:  # cut off at 16 KiB, it comes straight back
                with contextlib.suppress(OSError, TimeoutError):
                    _, writer = await connect(port, tls)
                    head = f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {wrong_auth}\r\n"
                    writer.write(head.encode())
                    while time.monotonic() < deadline and not writer.is_closing():
                        writer.write(b"X-Junk: " + b"j" * 4000 + b"\r\n")
                        await asyncio.sleep(0.01)
                        if writer.transport.get_write_buffer_size() > 1 << 20:
                            break
                    writer.transport.abort()
                await asyncio.sleep(0.01)

        await asyncio.gather(*(one() for _ in range(30)))

    return attack


def wrong_password(user: str) -> str:
    return basic(user, "wrong")


async def slowloris(port: int, tls: ssl.SSLContext | None = None) -> None:
    """1,000 connections sending a byte of a request head every 5 s, for 15 s."""
    writers: list[asyncio.StreamWriter] = []
    for _ in range(1000):
        with contextlib.suppress(OSError):
            _, writer = await connect(port, tls)
            writer.write(b"G")
            writers.append(writer)
    for _ in range(3):  # a byte every 5 s keeps a naive deadline from ever firing
        await asyncio.sleep(5)
        for writer in writers:
            if not writer.is_closing():
                writer.write(b"E")
    for writer in writers:
        writer.transport.abort()


# Opens and holds the connections of `idle_connections`: a process of its own, so that the
# well-behaved scraper in the test's process never waits for the GIL behind the attacker.
_HOLD = """
import socket, sys, time
port, count, first = int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3])
held = []
for _ in range(count):
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        if first:
            sock.sendall(first)
        held.append(sock)
    except OSError:
        pass
time.sleep(4)
"""


async def idle_connections(port: int, count: int = 2500, first: bytes = b"") -> None:
    """`count` connections that send nothing (or only `first`), held for 4 s. Against a TLS
    port, connections that never start their handshake."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLD, str(port), str(count), first.hex()
    )
    try:
        await asyncio.wait_for(holder.wait(), 120)
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def silent_tls_connections(port: int) -> None:
    """8,000 connections to a TLS port that never start the handshake, held for 4 s."""
    await idle_connections(port, 8000)


# The first bytes of a TLS ClientHello: a handshake record header announcing 512 bytes, and
# one of them. The server has started a TLS session and waits for the rest.
HALF_A_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01"


async def stalled_handshakes(port: int) -> None:
    """2,000 connections that begin a TLS handshake and stop, held for 4 s."""
    await idle_connections(port, 2000, HALF_A_CLIENT_HELLO)
