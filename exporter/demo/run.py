"""`homepage-cms-exporter demo`: a local PostgreSQL with a living homepage, and the exporter."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path

import uvloop

from exporter.app import Daemon
from exporter.config import load_config
from exporter.demo.cluster import Cluster, ClusterError, free_port
from exporter.demo.database import EXPORTER_ROLE, create_cms_database, sql_file
from exporter.demo.simulator import Simulator
from exporter.errors import ConfigError
from exporter.logs import get_logger
from exporter.settings import DEFAULT_PORT, Settings, load_settings
from exporter.targets import load_targets

DATABASE = "homepage"
LOCALES = "en,de,fr"
# 5 GB: the seed's media sit around 1 %, so storage alerts stay quiet unless you lower it.
DEMO_QUOTA_BYTES = 5 * 1024**3
# What stays empty on a server without an extension (the pgserver wheel has neither).
EMPTY_WITHOUT = {
    "pg_cron": "the cron job metrics, their five alerts and the dashboard's cron panels",
    "pg_stat_statements": "the statement metrics and the dashboard's statement panels",
}


def _listen_address(requested: str | None) -> str:
    """The requested address, else the default port on loopback, else any free port."""
    if requested:
        return requested
    port = DEFAULT_PORT if _port_free(DEFAULT_PORT) else free_port()
    return f"127.0.0.1:{port}"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the server binds: connections of a previous run in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def prepare(cluster: Cluster, password: str) -> None:
    """Schema, pg_cron job (when the server has pg_cron), exporter role, seed data."""
    create_cms_database(cluster, DATABASE, exporter_password=password)
    cluster.psql_file(sql_file("seed.sql"), database=DATABASE)


async def _serve(settings: Settings, cluster: Cluster) -> None:
    daemon = Daemon(settings, load_config(settings.queries_file), load_targets(settings))
    simulator = Simulator(
        cluster.url(database=DATABASE), daemon.log, has_cron="pg_cron" in cluster.preload
    )
    async with asyncio.TaskGroup() as group:
        sim = group.create_task(simulator.run())
        await daemon.run()
        sim.cancel()


def demo(listen_address: str | None, queries_file: Path | None) -> int:
    """Run everything in the foreground until Ctrl-C; leave nothing behind."""
    log = get_logger(component="demo")
    flags: dict[str, object] = {"listen_address": _listen_address(listen_address)}
    if queries_file is not None:
        flags["queries_file"] = queries_file
    try:  # the flags first: a mistake is said before a database is made for nothing
        load_config(load_settings(flags).queries_file)
    except ConfigError as exc:
        print(f"homepage-cms-exporter demo: {exc}", file=sys.stderr)
        return 2
    try:
        cluster = Cluster(cron_database=DATABASE)
    except ClusterError as exc:
        print(f"homepage-cms-exporter demo: {exc}", file=sys.stderr)
        return 2
    password = secrets.token_urlsafe(18)
    try:
        cluster.init().start()
        log.info(
            "demo_database_started",
            port=cluster.port,
            version=cluster.major_version,
            extensions=",".join(cluster.preload) or "none",
            datadir=str(cluster.base),
        )
        prepare(cluster, password)
        missing = [e for e in ("pg_cron", "pg_stat_statements") if e not in cluster.preload]
        if missing:
            log.info(
                "demo_without_extensions",
                missing=",".join(missing),
                empty=", ".join(EMPTY_WITHOUT[e] for e in missing),
            )
        overrides: dict[str, object] = {
            **flags,
            "database_url": cluster.url(EXPORTER_ROLE, password, DATABASE),
            "locales": LOCALES,
            "media_storage_quota_bytes": DEMO_QUOTA_BYTES,
        }
        settings = load_settings(overrides)
        url = f"http://{settings.listen}/metrics"
        print(
            f"\nHomepage CMS exporter demo: {url}\nStatus page: http://{settings.listen}/"
            f"\nDatabase: {cluster.url(database=DATABASE)}  (psql it; a throwaway cluster)"
            "\n(Ctrl-C stops the exporter, the simulator and the database.)\n",
            file=sys.stderr,
            flush=True,
        )
        _run_loop(_serve(settings, cluster))
        return 0
    except ClusterError as exc:
        print(f"homepage-cms-exporter demo: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"homepage-cms-exporter demo: {exc}", file=sys.stderr)
        return 2
    finally:
        with contextlib.suppress(ClusterError):
            cluster.destroy()
        log.info("demo_stopped")


def _run_loop(main: Coroutine[object, object, None]) -> None:
    uvloop.run(main)
