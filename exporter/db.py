"""The read-only database session: a bounded asyncpg pool.

Every asyncpg, socket or timeout failure is translated here, once, into a `QueryError` with
its `ErrorReason` (errors.py says what each means). Messages are one line; secrets are masked
where text leaves the process (logs.Redactor), not here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import asyncpg

from exporter.errors import ErrorReason, QueryError

APPLICATION_NAME = "homepage-cms-exporter"
# Our deadline trails the server's statement_timeout so the server cancels first and says so.
CLIENT_GRACE_SECONDS = 1.0
CLOSE_TIMEOUT_SECONDS = 3.0
EXTENSIONS_TTL_SECONDS = 60.0


def _one_line(text: str) -> str:
    return " ".join(text.split())


def classify(exc: BaseException) -> QueryError:
    """Translate any exception from a database round trip into a `QueryError`."""
    if isinstance(exc, QueryError):
        return exc
    # lock_timeout raises LockNotAvailableError (55P03): a wait that ran out, like the others.
    if isinstance(exc, TimeoutError | asyncpg.QueryCanceledError | asyncpg.LockNotAvailableError):
        detail = str(exc) or "client deadline passed"
        return QueryError(ErrorReason.TIMEOUT, _one_line(detail))
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return QueryError(ErrorReason.PERMISSION, _one_line(str(exc)))
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return QueryError(
            ErrorReason.SQL, _one_line(f"refused by the read-only transaction: {exc}")
        )
    connection_errors = (
        OSError,
        asyncpg.PostgresConnectionError,
        asyncpg.InvalidAuthorizationSpecificationError,
        asyncpg.InvalidPasswordError,
        asyncpg.InvalidCatalogNameError,
        asyncpg.CannotConnectNowError,
        asyncpg.TooManyConnectionsError,
        asyncpg.AdminShutdownError,
        asyncpg.CrashShutdownError,
        asyncpg.InterfaceError,
        asyncpg.ConnectionDoesNotExistError,
    )
    if isinstance(exc, connection_errors):
        text = str(exc) or type(exc).__name__
        if isinstance(exc, ConnectionRefusedError) or text.startswith("Multiple exceptions: "):
            # asyncpg tries every address of the host (::1, then 127.0.0.1) and says so at length
            text = "connection refused: nothing listens there"
        elif isinstance(exc, OSError) and exc.strerror:
            text = exc.strerror
        return QueryError(ErrorReason.CONNECTION, _one_line(text))
    if isinstance(exc, asyncpg.PostgresError):
        return QueryError(ErrorReason.SQL, _one_line(str(exc)))
    return QueryError(ErrorReason.SQL, _one_line(f"{type(exc).__name__}: {exc}"))


@dataclass(frozen=True, slots=True)
class Result:
    """Rows of one run, with their column names in SELECT order."""

    columns: tuple[str, ...]
    rows: tuple[tuple[object, ...], ...]
    duration: float


@dataclass(frozen=True, slots=True)
class ServerInfo:
    major_version: int
    extensions: frozenset[str]


class Database:
    """An asyncpg pool that runs every query inside a read-only transaction (and only the
    constant `SELECT 1` of a ping outside one), opening connections when runs need them and
    closing those unused for `idle_close` seconds.

    After an outage: `connection_lost()` when the server could not be reached, then
    `reconnected()` once it answers again, which expires the connections from before (they may
    point at a dead server process) and runs the `on_reconnect` hooks of whatever cached facts
    about the old server (its version and extensions here, the schema contract's catalog
    answers): the server that came back may be another one.

    `password`, when the URL's own is not the one, is a callable asked on every new connection
    (asyncpg calls it per connect): a rotated password file is read when it is needed, and
    not on every run.
    """

    def __init__(
        self,
        url: str,
        *,
        password: Callable[[], str] | None,
        pool_size: int,
        statement_cache_size: int,
        connect_timeout: float,
        idle_close: float = 300.0,
    ) -> None:
        self._url = url
        self._password = password
        self._pool_size = pool_size
        self._statement_cache_size = statement_cache_size
        self._connect_timeout = connect_timeout
        self._idle_close = idle_close
        self._pool: asyncpg.Pool | None = None
        self._info: ServerInfo | None = None
        self._info_at = 0.0
        self._lost = False
        self._hooks: list[Callable[[], None]] = []
        self.target = describe_target(url)

    def __repr__(self) -> str:
        return f"Database(pool_size={self._pool_size})"

    async def __aenter__(self) -> Self:
        # min_size=0: creating the pool connects nowhere, so we start while the database is down,
        # and a connection is opened only when a run needs one. asyncpg hands out the most
        # recently used live connection first, so runs that do not overlap share one; another
        # is opened only for an overlap and closes after `idle_close` seconds unused.
        self._pool = await asyncpg.create_pool(
            self._url,
            password=self._password,
            min_size=0,
            max_size=self._pool_size,
            statement_cache_size=self._statement_cache_size,
            timeout=self._connect_timeout,
            max_inactive_connection_lifetime=self._idle_close,
            reset=_keep_session,
            server_settings={"application_name": APPLICATION_NAME},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_SECONDS)
        except (TimeoutError, Exception):
            pool.terminate()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("Database used outside its context")
        return self._pool

    @property
    def busy(self) -> bool:
        """Whether every connection the pool may open is in use by a run now."""
        pool = self.pool
        return pool.get_idle_size() == 0 and pool.get_size() >= pool.get_max_size()

    async def fetch(
        self, sql: str, args: Sequence[object], timeout: float, *, max_rows: int | None = None
    ) -> Result:
        """Run one statement read-only with a server and a client deadline; raise `QueryError`.

        The transaction is read-only whatever the role's defaults say: the first statement of
        every run is SET TRANSACTION READ ONLY, so even a role that could write cannot here.
        With `max_rows`, the server returns at most one row more than that (the statement is
        wrapped in a LIMIT) and a longer result is INVALID_RESULT: a runaway query stops on the
        server and cannot fill our memory. (Not a cursor read in batches: a portal left open
        at the ROLLBACK is never recorded by pg_stat_statements, hiding our own cost.)
        """
        started = time.perf_counter()
        millis = max(1, int(timeout * 1000))
        try:
            async with asyncio.timeout(timeout + CLIENT_GRACE_SECONDS):
                async with self.pool.acquire() as conn:
                    try:
                        # One round trip opens the transaction and sets its deadlines.
                        await conn.execute(
                            "BEGIN TRANSACTION READ ONLY;"
                            f" SET LOCAL statement_timeout = {millis};"
                            f" SET LOCAL lock_timeout = {millis};"
                            " SET LOCAL idle_in_transaction_session_timeout = "
                            f"{millis + int(CLIENT_GRACE_SECONDS * 1000) * 2}"
                        )
                        # fetch() uses unnamed statements when the cache is off, which
                        # transaction-mode poolers (PgBouncer, Supavisor) route safely.
                        records = await conn.fetch(
                            sql if max_rows is None else bounded(sql, max_rows), *args
                        )
                        if max_rows is not None and len(records) > max_rows:
                            raise QueryError(
                                ErrorReason.INVALID_RESULT,
                                f"more than {max_rows} rows (raise max_series or narrow the query)",
                            )
                    finally:
                        if not conn.is_closed():
                            await conn.execute("ROLLBACK")
        except Exception as exc:
            raise self._error(exc) from exc
        columns = tuple(records[0].keys()) if records else ()
        rows = tuple(tuple(r.values()) for r in records)
        return Result(columns, rows, time.perf_counter() - started)

    async def ping(self, timeout: float) -> None:
        """`SELECT 1` in one round trip (no data read, so no read-only transaction around it);
        raise `QueryError` if the database does not answer in time."""
        try:
            async with asyncio.timeout(timeout):
                async with self.pool.acquire() as conn:
                    await conn.execute("SELECT 1")
        except Exception as exc:
            raise self._error(exc) from exc

    def _error(self, exc: BaseException) -> QueryError:
        error = classify(exc)
        if error.reason is ErrorReason.CONNECTION:
            error = QueryError(error.reason, f"{error.message} (connecting to {self.target})")
        return error

    async def server_info(self, timeout: float) -> ServerInfo:
        """Major version and installed extensions, cached for a minute."""
        now = time.monotonic()
        if self._info is not None and now - self._info_at < EXTENSIONS_TTL_SECONDS:
            return self._info
        result = await self.fetch(
            "SELECT current_setting('server_version_num')::int / 10000 AS major,"
            " array_agg(extname::text) AS extensions FROM pg_extension",
            (),
            timeout,
        )
        major, extensions = result.rows[0]
        if not isinstance(major, int) or not isinstance(extensions, list | None):
            raise QueryError(ErrorReason.INVALID_RESULT, "unexpected server_info row")
        self._info = ServerInfo(major, frozenset(str(e) for e in extensions or ()))
        self._info_at = now
        return self._info

    def on_reconnect(self, hook: Callable[[], None]) -> None:
        """Call `hook` whenever the server answers again after a lost connection."""
        self._hooks.append(hook)

    def connection_lost(self) -> None:
        """The server could not be reached: what we know of it no longer holds."""
        self._lost = True
        self._info = None

    async def reconnected(self) -> None:
        """The server answers: if it was lost, expire the connections from before the outage
        and run the reconnect hooks (once per outage)."""
        if not self._lost:
            return
        self._lost = False
        await self.pool.expire_connections()
        for hook in self._hooks:
            hook()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection needs between runs: nothing. asyncpg rolls back an open transaction
    on release by itself; its default reset (unlock advisory locks, CLOSE ALL, UNLISTEN,
    RESET ALL) would cost a round trip per run, through a pooler a transaction of its own,
    for state a run never leaves: each is one transaction, SET LOCAL only, always rolled back."""


def bounded(sql: str, max_rows: int) -> str:
    """`sql` returning at most `max_rows` + 1 rows. The closing parenthesis goes on its own
    line, so a trailing `-- comment` in the query cannot swallow it."""
    body = sql.strip().rstrip(";").rstrip()
    return f"SELECT * FROM (\n{body}\n) AS homepage_exporter_bounded LIMIT {max_rows + 1}"


def describe_target(url: str) -> str:
    """`host:port/dbname` of a URL: where we connect, without user or password."""
    parts = urlsplit(url)
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    host = parts.hostname or "localhost"
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}{parts.path or '/'}"
