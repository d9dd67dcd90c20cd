"""The command line: `run` (the default: the daemon), `once`, `check [--connect]`, `triage`,
`healthcheck`, `demo`, `--version`; settings from flags over the environment over `.env`, and
the exit codes (0 ok, 1 failed, 2 configuration; `triage` has its own, see its --help)."""

from __future__ import annotations

import argparse
import io
import ssl
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop

from exporter import __version__, logs
from exporter.app import Daemon, check, once
from exporter.config import Config, load_config
from exporter.errors import ConfigError
from exporter.settings import (
    DEFAULT_PORT,
    ENV_PREFIX,
    LogFormat,
    LogLevel,
    Settings,
    load_settings,
    unknown_settings,
)
from exporter.targets import Target, load_targets, secrets_of
from exporter.webconfig import WebConfig, load_web_config

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _setting_flags() -> dict[str, str]:
    """A flag for every setting, with its help: generated, so none can be missing."""
    return {name: field.description or "" for name, field in Settings.model_fields.items()}


_SETTING_FLAGS = _setting_flags()


# What triage reads: where the database is, what the queries are, and how they run; not how
# /metrics is served.
TRIAGE_SETTINGS = tuple(
    f
    for f in _SETTING_FLAGS
    if f not in ("listen_address", "web_config_file", "pool_size", "ping_interval")
)


def _common(settings: Sequence[str]) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env-file", type=Path, help="read settings from this .env file")
    for field in settings:
        common.add_argument("--" + field.replace("_", "-"), dest=field, help=_SETTING_FLAGS[field])
    return common


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="homepage-cms-exporter",
        description="Prometheus exporter for the Homepage CMS on PostgreSQL.",
        epilog=f"Every flag has an environment variable {ENV_PREFIX}<FLAG_NAME>; flags win.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = _common(tuple(_SETTING_FLAGS))
    sub = parser.add_subparsers(dest="command", metavar="{run,once,check,triage,healthcheck,demo}")
    sub.add_parser("run", parents=[common], help="serve /metrics (the default)")
    once_parser = sub.add_parser(
        "once", parents=[common], help="run every query once, print the exposition"
    )
    once_parser.add_argument("--target", help="with a targets file: which target")
    check_parser = sub.add_parser("check", parents=[common], help="validate settings and queries")
    check_parser.add_argument(
        "--connect", action="store_true", help="also run every query once, read-only"
    )
    triage_parser = sub.add_parser(
        "triage",
        parents=[_common(TRIAGE_SETTINGS)],
        help="run the runbook's incident triage once, read-only",
        description="Run the DBA runbook's incident triage once against the database, read-only,"
        " as the exporter role: every shipped query once, every incident the alerts define"
        " evaluated on their answers, and for each incident found the offending rows, the"
        " runbook's next step and the statements a human runs (triage never runs them).",
        epilog="exit codes: 0 no incident, 1 P3 (performance), 2 P2 (scheduled publishes),"
        " 3 P1 (homepage not loading, or CMS data exposed), 4 cannot tell (unreachable, no CMS"
        " schema in this database, or a check failed and nothing was found). The worst"
        " finding decides the code even when another check could not run.",
    )
    triage_parser.add_argument("--target", help="with a targets file: which target")
    triage_parser.add_argument("--json", action="store_true", help="JSON, for chat-ops")
    sub.add_parser(
        "healthcheck",
        parents=[common],
        help="probe this host's /healthz (for container HEALTHCHECK); exit 0 if alive",
    )
    demo = sub.add_parser(
        "demo", help="start a local PostgreSQL with a simulated homepage and serve its metrics"
    )
    demo.add_argument("--listen-address", help=f"host:port (default 127.0.0.1:{DEFAULT_PORT})")
    demo.add_argument("--queries-file", type=Path, help="queries file (default: shipped)")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {f: getattr(args, f, None) for f in _SETTING_FLAGS}
    return load_settings(overrides, env_file=args.env_file)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "run")
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    redact = logs.Redactor()
    try:
        settings = _settings(args)
        redact = logs.Redactor(settings.secrets())  # for an error in the targets file
        targets = load_targets(settings)
        redact = logs.Redactor(secrets_of(targets))  # every target's passwords, not only ours
        logs.configure(settings.log_level, settings.log_format, redact)
        for name in unknown_settings(args.env_file):
            logs.get_logger().warning("unknown_setting_ignored", name=name)
        _warn_of_a_local_queries_file(settings)
        config = load_config(settings.queries_file)
        web = load_web_config(settings.web_config_file) if settings.web_config_file else None
        if args.command == "healthcheck":
            return healthcheck(settings, web)
        if args.command == "check":
            codes = [check(t, config, connect=args.connect, redact=redact) for t in targets]
            return max(codes)
        if args.command == "once":
            return once(_pick(targets, args.target), config)
        if args.command == "triage":
            return _triage(_pick(targets, args.target, "triage"), config, args.json, redact)
        if "database_url" not in settings.model_fields_set and settings.targets_file is None:
            logs.get_logger().warning(
                "no_database_url",
                using=settings.database_url.get_secret_value(),
                hint="set DATABASE_URL (or --database-url) to the CMS's database",
            )
        _run(Daemon(settings, config, targets, web))
        return EXIT_OK
    except ConfigError as exc:
        print(f"homepage-cms-exporter: {redact(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_FAILED


def _triage(target: Target, config: Config, as_json: bool, redact: logs.Redactor) -> int:
    from exporter.triage import run_triage  # only this command needs it

    buffer = io.StringIO()
    code = run_triage(target, config, as_json=as_json, out=buffer)
    sys.stdout.write(redact(buffer.getvalue()))
    return code


def _warn_of_a_local_queries_file(settings: Settings) -> None:
    """A queries.yaml here (a clone being edited) is not what runs unless asked for: say so."""
    local = Path("queries.yaml")
    if "queries_file" in settings.model_fields_set or not local.is_file():
        return
    try:
        same = local.resolve() == settings.queries_file.resolve() or (
            local.read_bytes() == settings.queries_file.read_bytes()
        )
    except OSError:
        return
    if not same:
        logs.get_logger().warning(
            "local_queries_file_not_used",
            using=str(settings.queries_file),
            ignored=str(local.resolve()),
            hint="pass --queries-file queries.yaml (or HOMEPAGE_EXPORTER_QUERIES_FILE) to use it",
        )


def _pick(targets: list[Target], name: str | None, command: str = "once") -> Target:
    """The target of `once` or `triage`: the named one, or the only one."""
    if name is None and len(targets) == 1:
        return targets[0]
    for target in targets:
        if target.name == name and target.in_targets_file:
            return target
    names = ", ".join(t.name for t in targets if t.in_targets_file) or "(none: no targets file)"
    raise ConfigError(f"{command}: --target names one of the targets file's targets: {names}")


def healthcheck(settings: Settings, web: WebConfig | None) -> int:
    """GET /healthz on loopback at the configured port, over TLS when the web config says so.
    The certificate is not verified: this only asks our own process whether it is alive."""
    listen = settings.listen
    host = "::1" if listen.host == "::1" else "127.0.0.1"
    scheme = "https" if web is not None and web.ssl_context is not None else "http"
    shown = f"[{host}]" if ":" in host else host
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(f"{scheme}://{shown}:{listen.port}/healthz")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=3, context=context) as response:  # noqa: S310
            return EXIT_OK if response.status == 200 else EXIT_FAILED
    except (OSError, ValueError) as exc:
        print(f"homepage-cms-exporter healthcheck: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _demo(args: argparse.Namespace) -> int:
    from exporter.demo.run import demo

    logs.configure(LogLevel.INFO, LogFormat.LOGFMT)
    try:
        return demo(args.listen_address, args.queries_file)
    except KeyboardInterrupt:
        return EXIT_OK


def _run(daemon: Daemon) -> None:
    uvloop.run(daemon.run())
