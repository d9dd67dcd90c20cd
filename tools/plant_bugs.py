"""Plant the small bugs a tired developer makes, one at a time, in a copy of the tree, and
report which the tests catch (the kill rate). Never touches the working tree.

    .venv/bin/python tools/plant_bugs.py [--tree DIR] [--only NAME ...]

`--tree` is the tree to copy (default: this one); to measure the tests of another commit,
export it first: `git archive HEAD | tar -x -C /tmp/before` and pass `--tree /tmp/before`.
Each bug is tried against the same test files in every tree (files a tree lacks are left
out), slow ones included; a bug is killed when pytest fails. See docs/architecture.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bug:
    name: str
    area: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


WEB = ("tests/test_webconfig.py",)
LOGS = ("tests/test_logs.py", "tests/test_cli.py", "tests/test_redaction.py")
TRIAGE = ("tests/test_triage.py", "tests/test_triage_exit.py")
TIMING = ("tests/test_transition.py", "tests/test_first_run.py")
PAGE = ("tests/test_statuspage.py", "tests/test_threshold_edges.py")
INCIDENTS = (
    "tests/test_incident_agreement.py",
    "tests/test_triage.py",
    "tests/test_threshold_edges.py",
)
EXPOSITION = ("tests/test_exposition.py", "tests/test_http.py")

BUGS = [
    Bug("auth-unknown-user", "auth", "exporter/webconfig.py",
        " and user in self.users\n", "\n", WEB),
    Bug("auth-cache-ignores-password", "auth", "exporter/webconfig.py",
        'user.encode() + b"\\0" + password.encode() + b"\\0" + hashed',
        'user.encode() + b"\\0" + hashed', WEB),
    Bug("redact-shortest-first", "redaction", "exporter/logs.py",
        "key=len, reverse=True", "key=len, reverse=False", LOGS),
    Bug("redact-after-shortening", "redaction", "exporter/logs.py",
        "_shortened(self._redact(str(v)))", "self._redact(_shortened(str(v)))", LOGS),
    Bug("triage-failed-check-over-finding", "triage", "exporter/triage/report.py",
        "        if self.findings:\n            return int(self.priority)\n",
        "        if self.findings and not self.failed:\n            return int(self.priority)\n",
        TRIAGE),
    Bug("triage-unreachable-ignored", "triage", "exporter/triage/report.py",
        "if self.unreachable is not None or self.no_cms is not None:",
        "if self.no_cms is not None:", TRIAGE),
    Bug("first-run-a-whole-interval", "scheduler", "exporter/scheduler.py",
        "window = min(interval, FIRST_RUN_WINDOW_SECONDS * slot.of)", "window = interval",
        TIMING),
    Bug("next-run-ignores-now", "scheduler", "exporter/scheduler.py",
        "base = max(started + interval / 2, now)", "base = started + interval / 2", TIMING),
    Bug("page-warning-at-threshold", "status page", "exporter/statuspage.py",
        "if value > check.warning:", "if value >= check.warning:", PAGE),
    Bug("page-critical-at-threshold", "status page", "exporter/statuspage.py",
        "if value > check.critical:", "if value >= check.critical:", PAGE),
    Bug("incident-gt-as-ge", "thresholds", "exporter/incidents.py",
        "Op.GT: operator.gt,", "Op.GT: operator.ge,", INCIDENTS),
    Bug("incident-unless-ignored", "thresholds", "exporter/incidents.py",
        "            if unless is not None and key in unless:\n                continue\n", "",
        INCIDENTS),
    Bug("negotiation-tie-to-text", "http", "exporter/exposition.py",
        "om >= max(weights.values(), default=0.0)", "om > max(weights.values(), default=0.0)",
        EXPOSITION),
    Bug("gzip-at-q0", "http", "exporter/exposition.py",
        '.get("gzip", 0.0) > 0', '.get("gzip", 0.0) >= 0', EXPOSITION),
    Bug("stale-one-interval-early", "transition", "exporter/snapshot.py",
        "now.monotonic - last_success.monotonic <= prev.query.stale_after",
        "now.monotonic - last_success.monotonic < prev.query.stale_after - 1",
        ("tests/test_transition.py",)),
    Bug("mapping-bool-inverted", "mapping", "exporter/mapping.py",
        "return 1.0 if raw else 0.0", "return 0.0 if raw else 1.0",
        ("tests/test_mapping.py", "tests/test_properties.py")),
    Bug("mapping-null-label-as-None", "mapping", "exporter/mapping.py",
        '    if raw is None:\n        return ""\n', '    if raw is None:\n        return "None"\n',
        ("tests/test_mapping.py",)),
    Bug("sql-failures-window-2h", "sql", "exporter/queries.yaml",
        "count(*) FILTER (WHERE failed_at > now() - interval '1 hour') AS failures_last_hour",
        "count(*) FILTER (WHERE failed_at > now() - interval '2 hours') AS failures_last_hour",
        ("tests/test_queries.py",)),
    Bug("contract-cache-forever", "contract", "exporter/contract.py",
        "now - seen[0] < CACHE_SECONDS", "now - seen[0] >= 0",
        ("tests/test_contract.py", "tests/test_user_schema.py")),
    Bug("apply-a-reloaded-away-run", "store", "exporter/store.py",
        "        if current is None or current.query != outcome.query:\n            return None\n",
        "        if current is None:\n            return None\n",
        ("tests/test_transition.py", "tests/test_first_run.py")),
    Bug("gzip-not-carried-to-the-next-page", "http", "exporter/exposition.py",
        "        for fmt, encoding in replacing._served if replacing is not None else ():\n"
        "            page._make(fmt, encoding)\n", "",
        ("tests/test_transition.py", "tests/test_exposition.py")),
    Bug("unread-page-passes-its-bodies-on", "http", "exporter/exposition.py",
        "in replacing._served if replacing", "in replacing._bodies if replacing",
        ("tests/test_transition.py", "tests/test_exposition.py")),
    Bug("own-metrics-label-unescaped", "store", "exporter/selfmetrics.py",
        """return value.replace("\\\\", "\\\\\\\\").replace("\\n", "\\\\n")""",
        """return value.replace("\\n", "\\\\n")""",
        ("tests/test_transition.py",)),
    Bug("live-links-compared-as-text", "sql", "exporter/sql/exporter_role.sql",
        "      WHEN same_type THEN format", "      WHEN same_type AND false THEN format",
        ("tests/test_scale.py",)),
    Bug("live-links-ignore-the-foreign-key", "sql", "exporter/sql/exporter_role.sql",
        "AND c.confrelid = 'homepage_sections'::regclass),",
        "AND c.confrelid = 'homepage_sections'::regclass AND false),",
        ("tests/test_queries.py", "tests/test_user_schema.py")),
    Bug("processed-column-always-assumed", "sql", "queries.yaml",
        "WHERE CASE WHEN j ? $5::text THEN", "WHERE CASE WHEN true THEN",
        ("tests/test_user_schema.py",)),
]  # fmt: skip


def _copy(tree: Path, into: Path) -> Path:
    ignore = shutil.ignore_patterns(".venv", ".cache", ".git", "__pycache__", ".hypothesis")
    shutil.copytree(tree, into, ignore=ignore, symlinks=True)
    if (ROOT / ".cache").is_dir():
        (into / ".cache").symlink_to(ROOT / ".cache")
    return into


def _pytest(copy: Path, tests: list[str]) -> tuple[bool, float, str]:
    env = {**os.environ, "PYTHONPATH": str(copy)}  # the copy's `exporter`, not the installed one
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:randomly", "-p", "no:cacheprovider",
         *tests],
        cwd=copy, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = result.stdout.strip().splitlines() or [""]
    failed = [line.split(" - ")[0] for line in lines if line.startswith(("FAILED ", "ERROR "))]
    return result.returncode != 0, time.monotonic() - started, (failed or lines)[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--only", nargs="*", default=[])
    args = parser.parse_args()
    bugs = [b for b in BUGS if not args.only or b.name in args.only]
    killed = 0
    with tempfile.TemporaryDirectory(prefix="plant-bugs-") as tmp:
        copy = _copy(args.tree.resolve(), Path(tmp) / "tree")
        for bug in bugs:
            target = copy / bug.path
            original = target.read_text()
            if original.count(bug.old) != 1:
                print(f"{bug.name}: the text to change is not in {bug.path} once", flush=True)
                return 2
            tests = [t for t in bug.tests if (copy / t).is_file()]
            target.write_text(original.replace(bug.old, bug.new))
            try:
                caught, seconds, tail = _pytest(copy, tests)
            finally:
                target.write_text(original)
            killed += caught
            verdict = "KILLED " if caught else "SURVIVED"
            print(f"{verdict} {bug.area:12} {bug.name:34} {seconds:5.0f}s  {tail}", flush=True)
    print(f"{killed}/{len(bugs)} killed ({100 * killed / len(bugs):.0f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
