"""Wiring the daemon: signals, lifecycle order, reload; and the one-shot `once` and `check`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import TextIO

from exporter.config import Config, load_config
from exporter.db import Database
from exporter.errors import ConfigError
from exporter.exposition import EMPTY
from exporter.http import HttpServer
from exporter.logs import Logger, get_logger
from exporter.scheduler import Outcome, Scheduler, run_query
from exporter.settings import Settings
from exporter.snapshot import Snapshot, Store
from exporter.targets import load_targets
from exporter.webconfig import WebConfig

PROCESS_METRICS_REFRESH_SECONDS = 5.0


def open_database(settings: Settings) -> Database:
    return Database(
        settings.database_url.get_secret_value(),
        password=settings.database_password(),
        pool_size=settings.pool_size,
        statement_cache_size=settings.statement_cache_size,
        connect_timeout=settings.connect_timeout,
    )


class Target:
    """One watched database: its settings, its store of snapshots, its scheduler."""

    def __init__(self, name: str, settings: Settings, config: Config, *, alone: bool) -> None:
        self.name = name
        self.settings = settings
        # Alone, the target's page is /metrics and carries the process metrics too.
        self.store = Store(config, process_metrics=alone)
        self.log = get_logger() if alone else get_logger(target=name)
        self.scheduler: Scheduler | None = None


class Daemon:
    """The long-running exporter: owns the targets, the HTTP server and the stop/reload events.

    With one database (DATABASE_URL) its page is /metrics. With a targets file, each target's
    page is /probe?target=NAME (Prometheus's multi-target pattern) and /metrics carries only the
    exporter's own process metrics.
    """

    def __init__(self, settings: Settings, config: Config, web: WebConfig | None = None) -> None:
        self.settings = settings
        self.web = web
        self.stop = asyncio.Event()
        self.log = get_logger()
        if settings.targets_file is None:
            self.targets = {"": Target("", settings, config, alone=True)}
            self.exporter_store = self.targets[""].store
        else:
            per_target = load_targets(settings.targets_file, settings)
            self.targets = {n: Target(n, s, config, alone=False) for n, s in per_target.items()}
            self.exporter_store = Store(config.without_queries(), database_metrics=False)

    def reload(self) -> None:
        """SIGHUP: adopt a new queries file, or keep the old one and say why."""
        stores = [self.exporter_store, *(t.store for t in self.targets.values())]
        try:
            config = load_config(self.settings.queries_file)
        except ConfigError as exc:
            for store in {id(s): s for s in stores}.values():
                store.reload_successful = False
                store.render()
            self.log.error("config_reload_failed", error=str(exc))
            return
        if self.settings.targets_file is not None:
            self.exporter_store.replace_config(config.without_queries())
        for target in self.targets.values():
            target.store.replace_config(config)
            if target.scheduler is not None:
                target.scheduler.apply(config)
        self.log.info("config_reloaded", queries=len(config.enabled))

    def ready(self) -> bool:
        return all(t.store.database_up for t in self.targets.values())

    async def _refresh_process_metrics(self) -> None:
        while True:
            await asyncio.sleep(PROCESS_METRICS_REFRESH_SECONDS)
            self.exporter_store.render()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        probes = {n: t.store for n, t in self.targets.items() if n}
        async with contextlib.AsyncExitStack() as stack:
            databases = {
                name: await stack.enter_async_context(open_database(t.settings))
                for name, t in self.targets.items()
            }
            http = HttpServer(
                self.exporter_store,
                self.settings.listen,
                ready=self.ready,
                web_config=self.web,
                probes=probes,
            )
            async with http:
                self.log.info(
                    "listening",
                    address=",".join(http.bound),
                    targets=",".join(probes) or "-",
                    queries=len(self.exporter_store.config.enabled),
                    queries_file=str(self.settings.queries_file),
                )
                async with asyncio.TaskGroup() as group:
                    refresher = group.create_task(self._refresh_process_metrics())
                    for name, target in self.targets.items():
                        target.scheduler = Scheduler(
                            databases[name], target.store, target.settings, target.log
                        )
                        group.create_task(target.scheduler.run(self.stop))
                    await self.stop.wait()
                    refresher.cancel()
                self.log.info("stopping", step="http")
            self.log.info("stopping", step="database_pool")
        self.log.info("stopped")

    def _on_stop(self, sig: signal.Signals) -> None:
        self.log.info("shutdown_requested", signal=sig.name)
        self.stop.set()


async def run_all(settings: Settings, config: Config) -> list[Outcome]:
    """Every enabled query once, concurrently within the pool."""
    async with open_database(settings) as db:
        return list(await asyncio.gather(*(run_query(db, q, settings) for q in config.enabled)))


def once(settings: Settings, config: Config, out: TextIO = sys.stdout) -> int:
    """Print one exposition built from a single run of every query; 1 if any failed."""
    outcomes = asyncio.run(run_all(settings, config))
    store = Store(config)
    log = get_logger()
    failed = [_record_once(outcome, store, log) for outcome in outcomes]
    out.write(store.page.text.decode())
    return 1 if any(failed) else 0


def _record_once(outcome: Outcome, store: Store, log: Logger) -> bool:
    """Publish one outcome into a throwaway store; True if the query failed."""
    query = outcome.query
    if outcome.skipped is not None:
        store.publish(Snapshot(query, skipped=outcome.skipped))
        log.info("query_skipped", query=query.name, requirement=outcome.skipped)
        return False
    store.count_run(query.name)
    if outcome.error is not None:
        store.count_error(query.name, outcome.error.reason)
        store.publish(Snapshot(query, up=False, duration=outcome.duration))
        log.warning(
            "query_failed",
            query=query.name,
            reason=outcome.error.reason.value,
            error=outcome.error.message,
        )
        return True
    store.set_database_up(True)
    store.publish(
        Snapshot(
            query,
            fragment=outcome.fragment or EMPTY,
            series=outcome.series,
            up=True,
            duration=outcome.duration,
        )
    )
    return False


def check(
    settings: Settings,
    config: Config,
    *,
    connect: bool,
    title: str = "",
    out: TextIO = sys.stdout,
) -> int:
    """Report the validated config; with `connect`, run each query once and report each."""
    enabled = config.enabled
    out.write(
        f"{config.path}: ok, {len(enabled)} queries enabled"
        f" ({len(config.queries) - len(enabled)} disabled)"
        + (f", target {title}\n" if title else "\n")
    )
    if not connect:
        return 0
    outcomes = asyncio.run(run_all(settings, config))
    width = max((len(o.query.name) for o in outcomes), default=0)
    failed = 0
    for o in outcomes:
        name = o.query.name.ljust(width)
        if o.skipped is not None:
            out.write(f"skip  {name}  requires {o.skipped}\n")
        elif o.error is not None:
            failed += 1
            out.write(f"FAIL  {name}  {o.duration:.3f}s  {o.error.reason}: {o.error.message}\n")
        else:
            out.write(f"ok    {name}  {o.duration:.3f}s  rows={o.rows} series={o.series}\n")
    out.write(f"{len(outcomes) - failed} ok, {failed} failed\n")
    return 1 if failed else 0
