"""A stand-in for the CMS's users: edits, publishes, schedules, uploads, now and then a failure."""

from __future__ import annotations

import asyncio
import random

import asyncpg

from exporter.logs import Logger

# Without pg_cron, the simulator plays the cron job too, on the runbook's 5-minute schedule.
CRON_PERIOD_SECONDS = 300.0


class Simulator:
    """Writes to the demo database as the CMS application would (never as the exporter)."""

    def __init__(
        self,
        url: str,
        log: Logger,
        *,
        has_cron: bool,
        tick: float = 3.0,
        rng: random.Random | None = None,
    ) -> None:
        self._url = url
        self._log = log.bind(component="simulator")
        self._has_cron = has_cron
        self._tick = tick
        self._rng = rng or random.Random()  # noqa: S311 - simulation, not security

    async def run(self) -> None:
        """Simulate until cancelled; a lost connection is logged and retried, never raised."""
        while True:
            try:
                await self._session()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self._log.warning("simulator_disconnected", error=str(exc))
                await asyncio.sleep(self._tick)

    async def _session(self) -> None:
        conn = await asyncpg.connect(self._url)
        try:
            steps = 0
            while True:
                await self._step(conn, steps)
                steps += 1
                await asyncio.sleep(self._tick)
        finally:
            await conn.close()

    async def _step(self, conn: asyncpg.Connection, step: int) -> None:
        roll = self._rng.random()
        try:
            if roll < 0.45:
                await self._edit_and_publish(conn)
            elif roll < 0.75:
                await self._schedule(conn, failing=self._rng.random() < 0.15)
            elif roll < 0.9:
                await self._upload(conn)
            else:
                await conn.execute("SELECT count(*) FROM get_homepage_content('en')")
            if not self._has_cron and step % max(1, int(CRON_PERIOD_SECONDS / self._tick)) == 0:
                await conn.execute("SELECT process_scheduled_publishes()")
        except asyncpg.PostgresError as exc:
            self._log.warning("simulator_step_failed", error=str(exc))

    async def _random_section(self, conn: asyncpg.Connection) -> asyncpg.Record:
        row = await conn.fetchrow(
            "SELECT id, section_key, locale FROM homepage_sections ORDER BY random() LIMIT 1"
        )
        if row is None:  # the seed makes sections; someone emptied the demo's table
            raise asyncpg.NoDataFoundError("the demo database has no homepage sections")
        return row

    async def _edit_and_publish(self, conn: asyncpg.Connection) -> None:
        section = await self._random_section(conn)
        async with conn.transaction():
            version = await conn.fetchval(
                """
                INSERT INTO section_versions (section_id, version_number, content, change_summary)
                SELECT $1, COALESCE(max(version_number), 0) + 1,
                       jsonb_build_object(
                         'title', $2 || ' edit ' || (COALESCE(max(version_number), 0) + 1),
                         'image', 'homepage/' || $2 || '/1.webp'),
                       'Simulated edit'
                FROM section_versions WHERE section_id = $1
                RETURNING id
                """,
                section["id"],
                section["section_key"],
            )
            if self._rng.random() < 0.6:
                await conn.execute("SELECT publish_section_version($1, $2)", section["id"], version)

    async def _schedule(self, conn: asyncpg.Connection, *, failing: bool) -> None:
        section = await self._random_section(conn)
        if failing:
            # A version of some other section: process_scheduled_publishes will mark it failed.
            version = await conn.fetchval(
                "SELECT id FROM section_versions WHERE section_id <> $1 LIMIT 1", section["id"]
            )
        else:
            version = await conn.fetchval(
                "SELECT id FROM section_versions WHERE section_id = $1"
                " ORDER BY version_number DESC LIMIT 1",
                section["id"],
            )
        due_in = self._rng.uniform(-60, 240)
        await conn.execute(
            "INSERT INTO section_schedules (section_id, version_id, publish_at)"
            " VALUES ($1, $2, now() + make_interval(secs => $3))",
            section["id"],
            version,
            due_in,
        )

    async def _upload(self, conn: asyncpg.Connection) -> None:
        n = self._rng.randrange(1_000_000)
        await conn.execute(
            "INSERT INTO media_assets (file_path, file_size, mime_type)"
            " VALUES ($1, $2, 'image/webp') ON CONFLICT (file_path) DO NOTHING",
            f"uploads/demo/{n}.webp",
            self._rng.randrange(50_000, 2_000_000),
        )
