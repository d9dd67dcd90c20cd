"""Wiring the daemon: targets, stores, routes, signals, reload; and the one-shot `once`/`check`.

    settings + queries file -> targets -> per target: Scheduler -> transition -> TargetStore
                                                                                  |
    ExporterStore (process metrics, reload state) ------------------------> pages -> HTTP

One database is one target whose page is /metrics, joined with the process's own page; with
a targets file each target's page is /probe?target=NAME and /metrics is the process's page.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TextIO

from exporter.allocator import malloc_trim
from exporter.config import Config, load_config
from exporter.errors import ConfigError, QueryError
from exporter.http import HttpServer
from exporter.logs import Redactor, get_logger
from exporter.runner import ping, reachable, run_query
from exporter.scheduler import Budgeted, LogBudget, Pinger, Scheduler, Slot, log_events
from exporter.settings import Settings
from exporter.snapshot import Outcome, Skipped, SystemClock, Values
from exporter.statuspage import StatusPage
from exporter.store import ExporterStore, Joined, Store, TargetStore
from exporter.targets import Target
from exporter.webconfig import WebConfig

PROCESS_METRICS_REFRESH_SECONDS = 5.0
FULL_COLLECTION_AFTER = 100  # collections of generation 1 (CPython's default: 10)
NO_SECRETS = Redactor()


class Daemon:
    """The long-running exporter: owns the stores, the schedulers and the HTTP server."""

    def __init__(
        self,
        settings: Settings,
        config: Config,
        targets: Sequence[Target],
        web: WebConfig | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.targets = list(targets)
        self.web = web
        self.stop = asyncio.Event()
        self.log = get_logger()
        # One budget of log lines for all targets: a fleet going down at once stays readable.
        self.log_budget = LogBudget(self.log)
        self.exporter_store = ExporterStore()
        self.stores = {t.name: TargetStore(config) for t in self.targets}
        self.schedulers: dict[str, Scheduler] = {}
        links = [("Metrics", "/metrics")]
        links += [
            (f"Target {t.name}", f"/probe?target={t.name}")
            for t in self.targets
            if t.in_targets_file
        ]
        links += [("Liveness", "/healthz"), ("Readiness", "/readyz")]
        self.status = StatusPage(
            [(t.name if t.in_targets_file else "", self.stores[t.name]) for t in self.targets],
            links,
            clock=time.time,
        )

    def routes(self) -> tuple[Store, dict[str, Store]]:
        """The page at /metrics, and the pages at /probe?target=NAME."""
        probes: dict[str, Store] = {
            t.name: self.stores[t.name] for t in self.targets if t.in_targets_file
        }
        if probes:
            return self.exporter_store, probes
        return Joined([*self.stores.values(), self.exporter_store]), {}

    def reload(self) -> None:
        """SIGHUP: adopt a new queries file, or keep the old one running and say why."""
        try:
            config = load_config(self.settings.queries_file)
        except ConfigError as exc:
            self.exporter_store.reloaded(False)
            self.log.error("config_reload_failed", error=str(exc))
            return
        self.config = config
        for name, store in self.stores.items():
            store.replace_config(config)
            scheduler = self.schedulers.get(name)
            if scheduler is not None:
                scheduler.apply(config)
        self.exporter_store.reloaded(True)
        self.log.info("config_reloaded", queries=len(config.enabled))

    def ready(self) -> bool:
        return all(store.database_up for store in self.stores.values())

    async def _refresh_process_metrics(self) -> None:
        trim = malloc_trim()
        while True:
            await asyncio.sleep(PROCESS_METRICS_REFRESH_SECONDS)
            self.exporter_store.render()
            self.log_budget.flush()
            if trim is not None and len(self.targets) > 1:
                # Every run replaces its target's page (100 KB): with hundreds of targets,
                # glibc keeps the freed pages; handing them back cut RSS at 300 targets by a
                # sixth (bench/fleet.py).
                trim()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        metrics, probes = self.routes()
        async with contextlib.AsyncExitStack() as stack:
            databases = {
                t.name: await stack.enter_async_context(t.database.open()) for t in self.targets
            }
            http = HttpServer(
                metrics,
                self.settings.listen_addresses,
                ready=self.ready,
                web_config=self.web,
                probes=probes,
                status=self.status,
            )
            async with http:
                self.log.info(
                    "listening",
                    address=",".join(http.bound),
                    targets=",".join(probes) or "-",
                    queries=len(self.config.enabled),
                    queries_file=str(self.settings.queries_file),
                )
                ranks = {name: i for i, name in enumerate(sorted(self.stores))}
                async with asyncio.TaskGroup() as group:
                    refresher = group.create_task(self._refresh_process_metrics())
                    for target in self.targets:
                        db = databases[target.name]
                        store = self.stores[target.name]
                        log = Budgeted(
                            get_logger(target=target.name) if target.in_targets_file else self.log,
                            self.log_budget,
                        )
                        slot = Slot(ranks[target.name], len(self.targets))
                        pinger = Pinger(
                            db,
                            store,
                            log,
                            interval=target.ping_interval,
                            timeout=min(target.database.connect_timeout, target.ping_interval),
                            slot=slot,
                        )
                        scheduler = Scheduler(
                            store,
                            log,
                            run=partial(
                                run_query,
                                db,
                                params=target.params,
                                max_series=target.max_series_per_query,
                            ),
                            slot=slot,
                            on_connection_error=pinger.ping_now,
                            on_contact=pinger.contact,
                        )
                        self.schedulers[target.name] = scheduler
                        group.create_task(pinger.run(self.stop))
                        group.create_task(scheduler.run(self.config, self.stop))
                    # What exists now (modules, config, targets, loops) lives as long as the
                    # process: out of the collector's way, so that its full collections, which
                    # stop every scrape, walk only what runs create.
                    gc.freeze()
                    # And those collections one tenth as often: each walks every tracked object
                    # (0.2-0.3 s at 300 targets, the event loop stopped), and in bench/fleet.py
                    # they found next to nothing to free (0 objects in six over 65 s): a run's
                    # garbage goes by reference count or in the young generations. A full
                    # collection now waits for 100 of the middle generation's, not 10.
                    gc.set_threshold(*gc.get_threshold()[:2], FULL_COLLECTION_AFTER)
                    await self.stop.wait()
                    refresher.cancel()
                self.log.info("stopping", step="http")
            self.log.info("stopping", step="database_pool")
        self.log.info("stopped")

    def _on_stop(self, sig: signal.Signals) -> None:
        self.log.info("shutdown_requested", signal=sig.name)
        self.stop.set()


async def run_all(target: Target, config: Config) -> tuple[QueryError | None, list[Outcome]]:
    """Ping, then every enabled query once, concurrently within the pool; the ping's error if
    the database cannot be reached (and then no query runs: each would say the same)."""
    # Every query at once, not spread as the daemon's are: two connections, as before one
    # connection per target was the default, so that none waits out its deadline in a queue.
    async with target.database.open(at_least=2) as db:
        error = await ping(db, target.database.connect_timeout)
        if not reachable(error):
            return error, []
        cap = target.max_series_per_query
        outcomes = await asyncio.gather(
            *(run_query(db, q, target.params, cap) for q in config.enabled)
        )
    return None, list(outcomes)


def unreachable_line(target: Target, error: QueryError) -> str:
    """One line for a database that cannot be reached, with the way out of the usual mistake."""
    line = f"cannot connect: {error.message}"
    if target.database.url_is_default:
        line += " (no DATABASE_URL set, so the default; set DATABASE_URL or --database-url)"
    return line


def once(target: Target, config: Config, out: TextIO = sys.stdout) -> int:
    """Print the page the daemon would serve after one run of every query; 1 if any failed."""
    error, outcomes = asyncio.run(run_all(target, config))
    store = TargetStore(config)
    store.set_database_up(error is None)
    log, now = get_logger(), SystemClock().now()
    if error is not None:
        log.error("database_unreachable", error=unreachable_line(target, error))
    for outcome in outcomes:
        log_events(log.bind(query=outcome.query.name), store.apply(outcome, now) or [])
    failed = any(o.error is not None for o in outcomes)
    page = Joined([store, ExporterStore()]).page
    out.write(page.text.decode())
    return 1 if failed or error is not None else 0


def check(
    target: Target,
    config: Config,
    *,
    connect: bool,
    redact: Callable[[str], str] = NO_SECRETS,
    out: TextIO = sys.stdout,
) -> int:
    """Report the validated config; with `connect`, run each query once and report each."""
    enabled = config.enabled
    title = f", target {target.name}" if target.in_targets_file else ""
    out.write(
        f"{config.path}: ok, {len(enabled)} queries enabled"
        f" ({len(config.queries) - len(enabled)} disabled){title}\n"
    )
    if not connect:
        out.write(
            "not connected to the database: add --connect to run every query once, read-only,"
            " as the exporter would\n"
        )
        return 0
    error, outcomes = asyncio.run(run_all(target, config))
    if error is not None:
        out.write(redact(f"FAIL  {unreachable_line(target, error)}\n"))
        return 1
    width = max((len(o.query.name) for o in outcomes), default=0)
    failed = 0
    for o in outcomes:
        name = o.query.name.ljust(width)
        match o.result:
            case Skipped(requirement):
                out.write(f"skip  {name}  requires {requirement.advice}\n")
            case QueryError(reason=reason, message=message):
                failed += 1
                out.write(redact(f"FAIL  {name}  {o.duration:.3f}s  {reason}: {message}\n"))
            case Values(series=series, rows=rows):
                out.write(f"ok    {name}  {o.duration:.3f}s  rows={rows} series={series}\n")
    out.write(f"{len(outcomes) - failed} ok, {failed} failed\n")
    return 1 if failed else 0
