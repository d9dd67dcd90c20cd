"""`homepage-cms-exporter triage`: the runbook's incident procedures as one read-only command.

The runbook's P1 (homepage not loading), P2 (scheduled publishes stuck) and P3 (slow
homepage) are a decision tree over the database's state. Each check here is one branch: it
runs read-only as the exporter role, with its own deadline, and returns findings that carry
the offending rows, the runbook's next step and the `docs/runbook.md` section to read. Where
the runbook's fix writes (re-enable, re-queue, cancel a query), the statement is printed for a
human to run; nothing here runs it.

Exit codes: 0 no incident, 1 P3, 2 P2, 3 P1, 4 cannot tell (unreachable, or a check failed
and nothing worse was found).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TextIO

from exporter.db import Database
from exporter.durations import format_duration
from exporter.errors import ErrorReason, QueryError
from exporter.scheduler import ping, reachable
from exporter.statuspage import QUICKREF
from exporter.targets import Target

CHECK_TIMEOUT_SECONDS = 3.0
MAX_ROWS = 20
QUERY_PREFIX_CHARS = 40  # of other sessions' SQL: enough to recognise, not to leak literals
RUNBOOK = "docs/runbook.md"
# The alerts' own numbers: alerts/thresholds.yaml, carried into the package by tools/mixin.
_T: dict[str, Any] = json.loads(QUICKREF.read_text(encoding="utf-8"))["thresholds"]
PUBLISH_LAG_MINUTES = int(_T["publish_lag_minutes"]["warning"])
PUBLISH_FAILURES_PER_HOUR_CRITICAL = int(_T["publish_failures_per_hour"]["critical"])
RENDER_SECONDS_CRITICAL = float(_T["render_seconds"]["critical"])
SLOW_QUERY_SECONDS = RENDER_SECONDS_CRITICAL  # P3's symptom: "Homepage load time > 1 second"
DEAD_TUPLE_RATIO = float(_T["dead_tuple_ratio"])
BLOAT_MIN_DEAD_ROWS = int(_T["bloat_min_dead_rows"])
STATISTICS_AGE_SECONDS = float(_T["statistics_age_seconds"])
CMS_CRON_JOB = str(_T["cms_cron_job"])
RUNBOOK_INDEXES = {
    "idx_homepage_sections_render": (
        "homepage_sections (locale, display_order) WHERE is_active AND status = 'published'"
    ),
    "idx_section_versions_history": "section_versions (section_id, version_number DESC)",
    "idx_section_schedules_pending": "section_schedules (publish_at) WHERE status = 'pending'",
}
PERMISSION = re.compile(r"permission denied|row-level security", re.IGNORECASE)
REMIGRATE = "\\i /migrations/20241217000001_homepage_cms_system.sql"  # the runbook's own fix
CMS_TABLES = "(c.relname LIKE 'homepage%' OR c.relname LIKE 'section%' OR c.relname LIKE 'media%')"


class Severity(IntEnum):
    INFO = 0
    P3 = 1
    P2 = 2
    P1 = 3

    @property
    def label(self) -> str:
        return "info" if self is Severity.INFO else self.name


VERDICTS = {
    Severity.P1: "P1 homepage not loading",
    Severity.P2: "P2 scheduled publishes not working",
    Severity.P3: "P3 performance degradation",
}
EXIT_CANNOT_TELL = 4


@dataclass(frozen=True)
class Finding:
    """One thing the runbook's triage would find, with what a human does next."""

    severity: Severity
    path: str  # the runbook's resolution path: "A", "B", "C", or "" for none
    title: str
    seen: str
    rows: Sequence[Mapping[str, object]] = ()
    next_step: str = ""
    statements: Sequence[str] = ()  # for a human to run; never run here
    section: str = ""  # the docs/runbook.md anchor

    def as_dict(self) -> dict[str, object]:
        return {
            "severity": self.severity.label,
            "path": self.path,
            "title": self.title,
            "seen": self.seen,
            "rows": [{k: _plain(v) for k, v in row.items()} for row in self.rows],
            "next_step": self.next_step,
            "statements": list(self.statements),
            "runbook": f"{RUNBOOK}#{self.section}" if self.section else "",
        }


@dataclass
class Report:
    target: str
    findings: list[Finding] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # check -> why it could not run
    skipped: dict[str, str] = field(default_factory=dict)  # check -> why it did not apply
    unreachable: str | None = None
    seconds: float = 0.0

    @property
    def severity(self) -> Severity:
        return max((f.severity for f in self.findings), default=Severity.INFO)

    @property
    def exit_code(self) -> int:
        if self.unreachable is not None:
            return EXIT_CANNOT_TELL
        if self.severity is Severity.P1:
            return int(Severity.P1)
        if self.failed:
            return EXIT_CANNOT_TELL
        return int(self.severity)

    @property
    def verdict(self) -> str:
        if self.unreachable is not None:
            return f"cannot tell: the database is unreachable ({self.unreachable})"
        if self.severity is Severity.INFO and self.failed:
            return "cannot tell: a check failed"
        return VERDICTS.get(self.severity, "no incident")


# --- the checks ---------------------------------------------------------------------------------


class Context:
    """What every check gets: the database, the configured locales, and a fetch helper."""

    def __init__(self, db: Database, locales: Sequence[str]) -> None:
        self.db = db
        self.locales = list(locales)
        self.live: dict[str, int] = {}  # locale -> live sections, filled by the first check

    async def rows(self, sql: str, *args: object) -> list[dict[str, Any]]:
        result = await self.db.fetch(sql, args, CHECK_TIMEOUT_SECONDS)
        return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _missing_function(name: str, severity: Severity, path: str) -> Finding:
    return Finding(
        severity,
        path,
        f"{name}() is missing",
        f"no function public.{name} in this database",
        (),
        "Re-run the CMS migration that creates it.",
        (REMIGRATE,),
        "homepagefunctionmissing",
    )


async def check_sections(ctx: Context) -> list[Finding]:
    """P1 triage 1: are there active published sections per locale (path A)."""
    counts = await ctx.rows(
        "SELECT l.locale,"
        " count(hs.id) FILTER (WHERE hs.is_active AND hs.status = 'published') AS live,"
        " count(hs.id) FILTER (WHERE NOT hs.is_active AND hs.status = 'published') AS disabled,"
        " count(hs.id) AS total"
        " FROM unnest($1::text[]) AS l(locale)"
        " LEFT JOIN homepage_sections hs ON hs.locale = l.locale"
        " GROUP BY l.locale ORDER BY l.locale",
        ctx.locales,
    )
    findings = []
    for row in counts:
        locale = str(row["locale"])
        ctx.live[locale] = int(row["live"])
        if ctx.live[locale] > 0:
            continue
        disabled = await ctx.rows(
            "SELECT id::text AS id, section_key, section_type, updated_at"
            " FROM homepage_sections WHERE locale = $1 AND status = 'published' AND NOT is_active"
            f" ORDER BY updated_at DESC, id LIMIT {MAX_ROWS}",
            locale,
        )
        if disabled:
            findings.append(
                Finding(
                    Severity.P1,
                    "A",
                    f"locale {locale}: every published section is disabled",
                    f"0 live sections for {locale}; {row['disabled']} published but inactive,"
                    f" {row['total']} in all (newest change first)",
                    disabled,
                    "Re-enable the published sections (an accidental update?), clear the"
                    " cache, verify the homepage loads.",
                    [
                        "UPDATE homepage_sections SET is_active = true"
                        f" WHERE locale = {_literal(locale)} AND status = 'published';"
                    ],
                    "homepagenolivesections",
                )
            )
        else:
            findings.append(
                Finding(
                    Severity.P1,
                    "A",
                    f"locale {locale}: no published section at all",
                    f"0 live sections for {locale}; {row['total']} sections in all, none published",
                    (),
                    "Sections were deleted or never published: restore them from the version"
                    " history or a backup, or serve the static fallback (path D).",
                    (),
                    "homepagenolivesections",
                )
            )
    return findings


async def check_anon(ctx: Context) -> list[Finding]:
    """P1 triage 2: does `anon` see the live sections (path B: a policy blocks them)."""
    visible = await ctx.rows(
        "SELECT locale, visible FROM homepage_exporter.sections_visible_to_anon($1)", ctx.locales
    )
    blind = [
        str(r["locale"])
        for r in visible
        if int(r["visible"]) == 0 and ctx.live.get(str(r["locale"]), 0) > 0
    ]
    if not blind:
        return []
    policies = await ctx.rows(
        "SELECT c.relrowsecurity AS rls_enabled, p.polname AS policy, p.polcmd AS command,"
        " p.polpermissive AS permissive,"
        " ARRAY(SELECT rolname::text FROM pg_roles WHERE oid = ANY (p.polroles)) AS roles,"
        " pg_get_expr(p.polqual, p.polrelid) AS using_expression"
        " FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid"
        " WHERE c.oid = 'public.homepage_sections'::regclass ORDER BY p.polname"
    )
    return [
        Finding(
            Severity.P1,
            "B",
            f"anon sees no section for {', '.join(blind)}",
            f"live sections exist for {', '.join(blind)} but the public role reads none:"
            " a row level security policy blocks them (policies on homepage_sections below)",
            policies,
            "Recreate the public read policy (emergency only), then verify as anon.",
            [
                'DROP POLICY IF EXISTS "Published sections viewable by everyone"'
                " ON homepage_sections;",
                'CREATE POLICY "Published sections viewable by everyone" ON homepage_sections'
                " FOR SELECT USING (status = 'published' AND is_active = true);",
            ],
            "homepageinvisibletopublic",
        )
    ]


async def check_render(ctx: Context) -> list[Finding]:
    """P1 triage 3: does get_homepage_content() run for the public (path C)."""
    present = await ctx.rows(
        "SELECT p.oid::regprocedure::text AS function, p.prosecdef AS security_definer,"
        " p.proconfig AS settings FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'public' AND p.proname = 'get_homepage_content'"
    )
    if not present:
        return [_missing_function("get_homepage_content", Severity.P1, "C")]
    try:
        rendered = await ctx.rows(
            "SELECT locale, sections, render_seconds FROM homepage_exporter.render_as_anon($1)",
            ctx.locales,
        )
    except QueryError as exc:
        if exc.reason is ErrorReason.CONNECTION:
            raise
        if exc.reason is ErrorReason.TIMEOUT:
            return [
                Finding(
                    Severity.P1,
                    "",
                    f"the homepage render did not finish in {CHECK_TIMEOUT_SECONDS:g} s",
                    f"get_homepage_content() as anon: {exc.message}",
                    present,
                    "Look at the blocked and long-running sessions below: a lock or a runaway"
                    " query is the usual cause.",
                    (),
                    "homepageslowquery",
                )
            ]
        return [
            Finding(
                Severity.P1,
                "C",
                "get_homepage_content() fails for the public",
                f"rendering as anon failed: {exc.message}",
                present,
                "Read the error: a broken function body or a missing grant. Re-run the"
                " migration if the function was changed.",
                (REMIGRATE,),
                "homepagerenderfailing",
            )
        ]
    findings = []
    for row in rendered:
        locale, seconds = str(row["locale"]), float(row["render_seconds"])
        if int(row["sections"]) == 0 and ctx.live.get(locale, 0) > 0:
            findings.append(
                Finding(
                    Severity.P1,
                    "C",
                    f"get_homepage_content({locale!r}) returns nothing",
                    f"{ctx.live[locale]} live sections for {locale}, none rendered for anon",
                    present,
                    "The function filters them out or its grants changed: compare it with"
                    " the migration.",
                    (REMIGRATE,),
                    "homepagerenderfailing",
                )
            )
        elif seconds > RENDER_SECONDS_CRITICAL:
            findings.append(
                Finding(
                    Severity.P3,
                    "",
                    f"the {locale} homepage renders in {seconds:.2f} s",
                    f"get_homepage_content({locale!r}) as anon took {seconds:.2f} s"
                    f" (over {RENDER_SECONDS_CRITICAL:g} s)",
                    [row],
                    "See the slow sessions, bloat, statistics and indexes below.",
                    (),
                    "homepageslowquery",
                )
            )
    return findings


async def check_schedules(ctx: Context) -> list[Finding]:
    """P2: schedules pending past their time, and failed publishes in the last hour."""
    overdue = await ctx.rows(
        "SELECT s.id::text AS id, hs.section_key, hs.locale, s.publish_at,"
        " extract(epoch FROM now() - s.publish_at)::bigint AS age_seconds,"
        " count(*) OVER () AS overdue"
        " FROM section_schedules s LEFT JOIN homepage_sections hs ON hs.id = s.section_id"
        " WHERE s.status = 'pending'"
        f" AND s.publish_at <= now() - interval '{PUBLISH_LAG_MINUTES} minutes'"
        f" ORDER BY s.publish_at, s.id LIMIT {MAX_ROWS}"
    )
    failed = await ctx.rows(
        "SELECT s.id::text AS id, hs.section_key, hs.locale, s.processed_at,"
        " left(regexp_replace(coalesce(s.error_message, ''), '\\s+', ' ', 'g'), 120) AS error,"
        " count(*) OVER () AS failed"
        " FROM section_schedules s LEFT JOIN homepage_sections hs ON hs.id = s.section_id"
        " WHERE s.status = 'failed' AND s.processed_at > now() - interval '1 hour'"
        f" ORDER BY s.processed_at DESC, s.id LIMIT {MAX_ROWS}"
    )
    findings = []
    if overdue:
        total = int(overdue[0]["overdue"])
        oldest = float(overdue[0]["age_seconds"])
        findings.append(
            Finding(
                Severity.P2,
                "",
                f"{total} scheduled publishes overdue",
                f"{total} schedules still pending {PUBLISH_LAG_MINUTES}+ minutes past"
                f" publish_at; the oldest for {format_duration(oldest)} (oldest first)",
                [{k: v for k, v in r.items() if k != "overdue"} for r in overdue],
                "Find out why the job does not run them (cron job, function, grants: below);"
                " once fixed, process the queue by hand.",
                ("SELECT * FROM process_scheduled_publishes();",),
                "scheduledpublishlag",
            )
        )
    if failed:
        total = int(failed[0]["failed"])
        severe = total >= PUBLISH_FAILURES_PER_HOUR_CRITICAL
        findings.append(
            Finding(
                Severity.P2 if severe else Severity.INFO,
                "B" if severe else "",
                f"{total} scheduled publishes failed in the last hour",
                f"{total} schedules failed since an hour ago (newest first), each with its error",
                [{k: v for k, v in r.items() if k != "failed"} for r in failed],
                "Read the errors: a broken function or data it refuses. Fix, then re-queue the"
                " failed schedules by hand.",
                (
                    "UPDATE section_schedules SET status = 'pending', error_message = NULL"
                    " WHERE status = 'failed' AND processed_at > now() - interval '1 hour';",
                ),
                "highpublishfailurerate",
            )
        )
    return findings


async def check_cron(ctx: Context) -> list[Finding]:
    """P2 triage 1-2: the cron job (path A: disabled or missing; path B: its runs fail)."""
    job = await ctx.rows(
        "SELECT jobid, jobname, schedule, active FROM homepage_exporter.cron_job"
        " WHERE jobname = $1",
        CMS_CRON_JOB,
    )
    schedule = (
        f"SELECT cron.schedule({_literal(CMS_CRON_JOB)}, '*/5 * * * *',"
        " $$SELECT process_scheduled_publishes()$$);"
    )
    if not job or not job[0]["active"]:
        return [
            Finding(
                Severity.P2,
                "A",
                f"cron job {CMS_CRON_JOB} is {'inactive' if job else 'missing'}",
                "pg_cron will not run scheduled publishes"
                + (f" (jobid {job[0]['jobid']}, active = false)" if job else ""),
                job,
                "Re-create the job.",
                ((f"SELECT cron.unschedule({_literal(CMS_CRON_JOB)});",) if job else ())
                + (schedule,),
                "homepagecronjobinactive",
            )
        ]
    runs = await ctx.rows(
        "SELECT runid, status, start_time, end_time,"
        " left(regexp_replace(coalesce(return_message, ''), '\\s+', ' ', 'g'), 120) AS message"
        " FROM homepage_exporter.cron_job_run_details WHERE jobid = $1"
        " ORDER BY runid DESC LIMIT 5",
        job[0]["jobid"],
    )
    if not runs or runs[0]["status"] != "failed":
        return []
    if PERMISSION.search(str(runs[0]["message"])):  # path C: RLS or grants block the publish
        return [
            Finding(
                Severity.P2,
                "C",
                f"cron job {CMS_CRON_JOB}: its last run was refused by permissions",
                "the newest runs of the job (newest first): row level security or a grant"
                " blocks process_scheduled_publishes()",
                runs,
                "Make the function SECURITY DEFINER again (or restore the grant it lost).",
                ("ALTER FUNCTION process_scheduled_publishes() SECURITY DEFINER;",),
                "homepagepublishfunctionnotsecuritydefiner",
            )
        ]
    return [
        Finding(
            Severity.P2,
            "B",
            f"cron job {CMS_CRON_JOB}: its last run failed",
            "the newest runs of the job (newest first) with pg_cron's message",
            runs,
            "Run the function by hand to see its error, fix it (re-run the migration if"
            " the function was corrupted).",
            ("SELECT * FROM process_scheduled_publishes();",),
            "homepagecronjobfailed",
        )
    ]


async def check_publish_function(ctx: Context) -> list[Finding]:
    """P2 path C: process_scheduled_publishes() must run as SECURITY DEFINER (RLS)."""
    rows = await ctx.rows(
        "SELECT p.oid::regprocedure::text AS function, p.prosecdef AS security_definer"
        " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'public' AND p.proname = 'process_scheduled_publishes'"
    )
    if not rows:
        return [_missing_function("process_scheduled_publishes", Severity.P2, "B")]
    invoker = [r for r in rows if not r["security_definer"]]
    if not invoker:
        return []
    return [
        Finding(
            Severity.P2,
            "C",
            "process_scheduled_publishes() is not SECURITY DEFINER",
            "it runs with the caller's rights, so row level security can block the publish",
            invoker,
            "Make it SECURITY DEFINER again.",
            tuple(f"ALTER FUNCTION {r['function']} SECURITY DEFINER;" for r in invoker),
            "homepagepublishfunctionnotsecuritydefiner",
        )
    ]


async def check_sessions(ctx: Context) -> list[Finding]:
    """P3 triage 1: long-running and blocked sessions, and who blocks them."""
    rows = await ctx.rows(
        "WITH a AS (SELECT * FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        " AND application_name <> 'homepage-cms-exporter'),"
        " blockers AS (SELECT DISTINCT unnest(pg_blocking_pids(pid)) AS pid FROM a)"
        " SELECT a.pid, a.usename::text AS role, a.state,"
        " greatest(0, extract(epoch FROM clock_timestamp()"
        "   - coalesce(a.query_start, a.xact_start)))::numeric(12, 1) AS age_seconds,"
        " a.wait_event_type, a.wait_event, pg_blocking_pids(a.pid) AS blocked_by,"
        " a.pid IN (SELECT pid FROM blockers) AS blocking,"
        f" left(regexp_replace(a.query, '\\s+', ' ', 'g'), {QUERY_PREFIX_CHARS}) AS query_prefix"
        " FROM a WHERE a.pid IN (SELECT pid FROM blockers)"
        " OR cardinality(pg_blocking_pids(a.pid)) > 0"
        " OR (a.state = 'active'"
        f"     AND a.query_start < clock_timestamp() - interval '{SLOW_QUERY_SECONDS} second')"
        f" ORDER BY a.query_start NULLS LAST, a.pid LIMIT {MAX_ROWS}"
    )
    if not rows:
        return []
    blocked = [r for r in rows if r["blocked_by"]]
    culprits = [r for r in rows if r["blocking"]] or [r for r in rows if not r["blocked_by"]]
    seen = f"{len(rows)} sessions active over {SLOW_QUERY_SECONDS:g} s or in a lock chain"
    if blocked:
        seen += f"; {len(blocked)} waiting on a lock held by pid " + ", ".join(
            str(r["pid"]) for r in culprits
        )
    return [
        Finding(
            Severity.P3,
            "",
            "slow or blocked sessions",
            seen + " (oldest first)",
            rows,
            "Identify the sessions (role, wait event, query prefix); cancel the blocker or the"
            " runaway only if you know what it is.",
            tuple(f"SELECT pg_cancel_backend({r['pid']});" for r in culprits),
            "postgresblockedqueries" if blocked else "homepagelongrunningquery",
        )
    ]


async def check_indexes(ctx: Context) -> list[Finding]:
    """P3 triage 2 / path C: the indexes the runbook names, present and valid."""
    rows = await ctx.rows(
        "SELECT e.idx AS index, i.indisvalid AS valid FROM unnest($1::text[]) AS e(idx)"
        " LEFT JOIN pg_class c ON c.relname = e.idx"
        " AND c.relnamespace = 'public'::regnamespace"
        " LEFT JOIN pg_index i ON i.indexrelid = c.oid ORDER BY e.idx",
        list(RUNBOOK_INDEXES),
    )
    bad = [
        {"index": r["index"], "state": "invalid" if r["valid"] is False else "missing"}
        for r in rows
        if r["valid"] is not True
    ]
    if not bad:
        return []
    statements = []
    for r in bad:
        name = str(r["index"])
        if r["state"] == "invalid":
            statements.append(f"DROP INDEX CONCURRENTLY {name};")
        statements.append(f"CREATE INDEX CONCURRENTLY {name} ON {RUNBOOK_INDEXES[name]};")
    return [
        Finding(
            Severity.P3,
            "C",
            "runbook indexes missing or invalid",
            ", ".join(f"{r['index']} ({r['state']})" for r in bad),
            bad,
            "Build them concurrently (no table lock).",
            statements,
            "homepageindexmissing",
        )
    ]


async def check_tables(ctx: Context) -> list[Finding]:
    """P3 triage 3 / paths A-B: bloated tables, stale statistics; and tables with RLS off."""
    rows = await ctx.rows(
        "SELECT c.relname AS table, c.relrowsecurity AS rls_enabled,"
        " s.n_live_tup AS live_rows, s.n_dead_tup AS dead_rows,"
        " round(s.n_dead_tup::numeric / nullif(s.n_live_tup + s.n_dead_tup, 0), 3) AS dead_ratio,"
        " greatest(s.last_analyze, s.last_autoanalyze) AS last_analyzed,"
        " s.n_mod_since_analyze AS changed_since_analyze"
        " FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid"
        " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'"
        f" AND {CMS_TABLES} ORDER BY c.relname"
    )
    bloated = [
        r
        for r in rows
        if int(r["dead_rows"]) >= BLOAT_MIN_DEAD_ROWS
        and float(r["dead_ratio"] or 0) > DEAD_TUPLE_RATIO
    ]
    now = dt.datetime.now(dt.UTC)
    stale = [
        r
        for r in rows
        if int(r["changed_since_analyze"]) > 0
        and (
            (r["last_analyzed"] is None and int(r["live_rows"]) >= BLOAT_MIN_DEAD_ROWS)
            or (
                isinstance(r["last_analyzed"], dt.datetime)
                and (now - r["last_analyzed"]).total_seconds() > STATISTICS_AGE_SECONDS
            )
        )
    ]
    open_tables = [r for r in rows if not r["rls_enabled"]]
    findings = []
    if bloated:
        findings.append(
            Finding(
                Severity.P3,
                "A",
                "tables bloated with dead rows",
                f"over {DEAD_TUPLE_RATIO:.0%} dead rows (and {BLOAT_MIN_DEAD_ROWS}+ of them)",
                bloated,
                "VACUUM now; VACUUM FULL or pg_repack only in a maintenance window.",
                tuple(f"VACUUM (ANALYZE) public.{r['table']};" for r in bloated),
                "homepagetablebloated",
            )
        )
    if stale:
        findings.append(
            Finding(
                Severity.P3,
                "B",
                "tables with stale statistics",
                "changed since their last ANALYZE, which is over"
                f" {format_duration(STATISTICS_AGE_SECONDS)} old or never ran",
                stale,
                "Refresh the planner's statistics.",
                tuple(f"ANALYZE public.{r['table']};" for r in stale),
                "homepagetablestatisticsstale",
            )
        )
    if open_tables:
        findings.append(
            Finding(
                Severity.P3,
                "",
                "CMS tables with row level security off",
                "every role with table privileges (anon, on Supabase) reads and writes all rows",
                [{"table": r["table"], "rls_enabled": False} for r in open_tables],
                "Enable row level security (the policies then apply).",
                tuple(
                    f"ALTER TABLE public.{r['table']} ENABLE ROW LEVEL SECURITY;"
                    for r in open_tables
                ),
                "homepagetablerlsdisabled",
            )
        )
    return findings


Check = Callable[[Context], Awaitable[list[Finding]]]
# In order: check_sections fills Context.live, which anon and render use.
CHECKS: list[tuple[str, Check]] = [
    ("sections", check_sections),
    ("anon_visibility", check_anon),
    ("render", check_render),
    ("schedules", check_schedules),
    ("cron_job", check_cron),
    ("publish_function", check_publish_function),
    ("sessions", check_sessions),
    ("indexes", check_indexes),
    ("tables", check_tables),
]


async def _has_cron_views(ctx: Context) -> bool:
    rows = await ctx.rows("SELECT to_regclass('homepage_exporter.cron_job') IS NOT NULL AS ok")
    return bool(rows and rows[0]["ok"])


async def triage(target: Target) -> Report:
    """Run every check once against `target`; never raises for database trouble."""
    started = time.monotonic()
    report = Report(target.name if target.probed else "")
    s = target.settings
    async with target.open_database() as db:
        error = await ping(db, min(s.connect_timeout, CHECK_TIMEOUT_SECONDS))
        if not reachable(error) and error is not None:
            report.unreachable = error.message
            report.seconds = time.monotonic() - started
            return report
        ctx = Context(db, s.locales)

        async def run(name: str, check: Check) -> None:
            try:
                report.findings += await check(ctx)
            except QueryError as exc:
                report.failed[name] = f"{exc.reason}: {exc.message}"

        await run(*CHECKS[0])  # the live counts the next two depend on
        has_cron = await _has_cron_views(ctx)
        rest = []
        for name, check in CHECKS[1:]:
            if name == "cron_job" and not has_cron:
                report.skipped[name] = "pg_cron is not installed (or exporter_role.sql predates it)"
                continue
            rest.append(run(name, check))
        await asyncio.gather(*rest)
    report.findings.sort(key=lambda f: (-f.severity, f.path or "Z", f.title))
    report.seconds = time.monotonic() - started
    return report


# --- output -------------------------------------------------------------------------------------


def _plain(value: object) -> object:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, int | float | bool | str) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def _cell(key: str, value: object) -> str:
    if value is None:
        return f"{key}=-"
    if key.endswith("_seconds"):
        return f"{key.removesuffix('_seconds')}={format_duration(float(str(value)))}"
    if isinstance(value, dt.datetime):
        return f"{key}={value.astimezone(dt.UTC):%Y-%m-%d %H:%M:%SZ}"
    text = " ".join(str(_plain(value)).split())
    return f"{key}={text}" if " " not in text else f'{key}="{text}"'


def write_text(report: Report, out: TextIO) -> None:
    where = f" (target {report.target})" if report.target else ""
    out.write(f"triage{where}: {report.verdict}\n")
    if report.unreachable is not None:
        return
    if not report.findings and not report.failed:
        out.write("no incident: every check passed\n")
    for f in report.findings:
        label = f"{f.severity.label}{' ' + f.path if f.path else ''}"
        out.write(f"\n[{label}] {f.title}\n  seen: {f.seen}\n")
        for row in f.rows:
            out.write("    " + "  ".join(_cell(k, v) for k, v in row.items()) + "\n")
        if f.next_step:
            out.write(f"  next: {f.next_step}\n")
        if f.statements:
            out.write("  run by hand, if it applies (triage never runs these):\n")
            for statement in f.statements:
                out.write(f"    {statement}\n")
        if f.section:
            out.write(f"  read: {RUNBOOK}#{f.section}\n")
    for name, why in report.failed.items():
        out.write(f"\n[check failed] {name}: {why}\n")
    for name, why in report.skipped.items():
        out.write(f"[skipped] {name}: {why}\n")
    out.write(f"\n{len(CHECKS) - len(report.skipped)} checks in {report.seconds:.2f} s\n")


def write_json(report: Report, out: TextIO) -> None:
    json.dump(
        {
            "target": report.target,
            "verdict": report.verdict,
            "severity": None
            if report.exit_code in (0, EXIT_CANNOT_TELL)
            else report.severity.label,
            "exit_code": report.exit_code,
            "unreachable": report.unreachable,
            "findings": [f.as_dict() for f in report.findings],
            "failed_checks": report.failed,
            "skipped_checks": report.skipped,
            "seconds": round(report.seconds, 3),
        },
        out,
        indent=2,
    )
    out.write("\n")


def run_triage(target: Target, *, as_json: bool, out: TextIO) -> int:
    report = asyncio.run(triage(target))
    (write_json if as_json else write_text)(report, out)
    return report.exit_code
