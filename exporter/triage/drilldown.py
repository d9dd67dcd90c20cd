"""Drill-downs: for an incident that holds, the offending rows and the statements that fix it.

The incident itself (whether it holds) is decided in exporter/incidents.py on the shipped
queries' samples; nothing here decides it again. A drill-down only reads the rows behind it
and prints, filled in, the statement a human runs: each statement is checked in the suite on a
real database to fix the incident without making the homepage older, wider or less protected.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from exporter.db import Database
from exporter.incidents import Firing, RunbookPath, cron_job_name, cron_job_owner
from exporter.triage.report import Finding, human_age

MAX_ROWS = 20
QUERY_PREFIX_CHARS = 40  # of other sessions' SQL: enough to recognise, not to leak literals
PERMISSION = re.compile(r"permission denied|row-level security", re.IGNORECASE)
DENIED_TABLE = re.compile(r"permission denied for (?:table|relation) (?P<table>[a-z_][a-z0-9_]*)")
REMIGRATE = "\\i /migrations/20241217000001_homepage_cms_system.sql"  # the runbook's own fix
PUBLIC_ROLES = "anon, authenticated"
# The runbook's P1 path B policy, word for word.
SECTIONS_POLICY = "Published sections viewable by everyone"


class Context:
    """What every drill-down gets: the database, the locales, thresholds and failed runs."""

    def __init__(
        self,
        db: Database,
        locales: Sequence[str],
        thresholds: Mapping[str, Any],
        errors: Mapping[str, str],
        timeout: float,
        params: Mapping[str, object],
    ) -> None:
        self.db = db
        self.locales = list(locales)
        self.thresholds = thresholds
        self.errors = errors  # query -> the error of its failed run
        self.timeout = timeout
        self.params = params  # the target's query parameters: the CMS's vocabulary

    async def rows(self, sql: str, *args: object) -> list[dict[str, Any]]:
        result = await self.db.fetch(sql, args, self.timeout)
        return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ids(rows: Sequence[Mapping[str, object]]) -> str:
    return ", ".join(literal(str(r["id"])) for r in rows)


def _labels(firing: Firing, key: str) -> list[str]:
    return sorted({str(labels.get(key, "")) for labels, _ in firing.series})


DrillDown = Callable[[Context, Firing], Awaitable[Finding]]


async def no_live_sections(ctx: Context, firing: Firing) -> Finding:
    locales = _labels(firing, "locale")
    disabled = await ctx.rows(
        "SELECT id::text AS id, locale, section_key, updated_at FROM homepage_sections"
        " WHERE locale = ANY ($1::text[]) AND status = 'published' AND NOT is_active"
        f" ORDER BY locale, updated_at DESC, id LIMIT {MAX_ROWS}",
        locales,
    )
    where = ", ".join(locales)
    if not disabled:
        return Finding(
            firing.incident,
            f"no published section at all for {where}",
            f"0 live sections for {where}, and none published but switched off",
            (),
            "Sections were deleted or never published: restore them from the version history"
            " or a backup, or serve the static fallback (path D).",
        )
    # Only the sections listed (by id): a section switched off on purpose in another locale,
    # or published after this triage, is not switched on by the statement.
    return Finding(
        firing.incident,
        f"every published section of {where} is switched off",
        f"0 live sections for {where}; {len(disabled)} published but inactive (newest change"
        " first)",
        disabled,
        "Re-enable the published sections listed (an accidental update?), clear the cache,"
        " verify the homepage loads.",
        [
            "UPDATE homepage_sections SET is_active = true"
            f" WHERE id IN ({_ids(disabled)}) AND status = 'published';"
        ],
    )


async def _read_access(ctx: Context, table: str) -> list[dict[str, Any]]:
    return await ctx.rows(
        "SELECT r.rolname::text AS role, has_table_privilege(r.oid, c.oid, 'SELECT') AS can_select,"
        " c.relrowsecurity AS rls_enabled,"
        " (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid AND p.polcmd IN ('r', '*')"
        "   AND (p.polroles = '{0}' OR r.oid = ANY (p.polroles))) AS read_policies"
        " FROM pg_roles r, pg_class c"
        " WHERE r.rolname IN ('anon', 'authenticated') AND c.oid = to_regclass($1)"
        " ORDER BY r.rolname",
        f"public.{table}",
    )


async def _policies(ctx: Context, table: str) -> list[dict[str, Any]]:
    return await ctx.rows(
        "SELECT p.polname AS policy, p.polcmd AS command, p.polpermissive AS permissive,"
        " ARRAY(SELECT rolname::text FROM pg_roles WHERE oid = ANY (p.polroles)) AS roles,"
        " pg_get_expr(p.polqual, p.polrelid) AS using_expression"
        " FROM pg_policy p WHERE p.polrelid = to_regclass($1) ORDER BY p.polname",
        f"public.{table}",
    )


async def invisible_to_public(ctx: Context, firing: Firing) -> Finding:
    where = ", ".join(_labels(firing, "locale"))
    access = await _read_access(ctx, "homepage_sections")
    policies = await _policies(ctx, "homepage_sections")
    no_grant = [a["role"] for a in access if not a["can_select"]]
    if no_grant:
        return Finding(
            firing.incident,
            f"anon sees no section for {where}: SELECT on homepage_sections was revoked",
            f"{', '.join(no_grant)} may not read homepage_sections at all",
            access,
            "Give the public roles their read access back (row level security still decides"
            " which rows).",
            [f"GRANT SELECT ON homepage_sections TO {PUBLIC_ROLES};"],
        )
    return Finding(
        firing.incident,
        f"anon sees no section for {where}: a row level security policy hides them",
        "live sections exist but the public role reads none; the policies on homepage_sections:",
        policies,
        "Recreate the runbook's public read policy (emergency only), then verify as anon.",
        [
            f'DROP POLICY IF EXISTS "{SECTIONS_POLICY}" ON homepage_sections;',
            f'CREATE POLICY "{SECTIONS_POLICY}" ON homepage_sections'
            " FOR SELECT USING (status = 'published' AND is_active = true);",
        ],
    )


# Each live section of the locales whose published_version_id is wrong, classified as the
# live_versions query classifies it (the `problem` label), with what it points at and the
# version it should show: its own published one (the newest, should there be several), which
# publish_section_version() points it back at. The runbook's "Verify data integrity" join.
# The problems wanted are filtered before the LIMIT.
_LIVE_POINTERS = (
    "SELECT * FROM (SELECT hs.id::text AS id, hs.locale, hs.section_key,"
    " CASE WHEN hs.published_version_id IS NULL THEN 'no_version'"
    "      WHEN sv.id IS NULL THEN 'missing_version'"
    "      WHEN sv.section_id IS DISTINCT FROM hs.id THEN 'another_sections_version'"
    "      WHEN sv.is_published IS NOT TRUE THEN 'unpublished_version' END AS problem,"
    " hs.published_version_id::text AS points_at, sv.version_number AS points_at_number,"
    " o.locale || ' ' || o.section_key AS points_at_section,"
    " own.id::text AS own_published_version, own.version_number AS own_version_number"
    " FROM homepage_sections hs"
    " LEFT JOIN section_versions sv ON sv.id = hs.published_version_id"
    " LEFT JOIN homepage_sections o ON o.id = sv.section_id"
    " LEFT JOIN LATERAL (SELECT v.id, v.version_number FROM section_versions v"
    "   WHERE v.section_id = hs.id AND v.is_published"
    "   ORDER BY v.version_number DESC LIMIT 1) own ON true"
    " WHERE hs.locale = ANY ($1::text[]) AND hs.is_active AND hs.status = 'published') p"
    " WHERE p.problem = ANY ($2::text[])"
    f" ORDER BY p.locale, p.section_key, p.id LIMIT {MAX_ROWS}"
)
# What gives the public a section without content (the runbook's LEFT JOIN): the rest of
# the problems, another section's version, gives it the wrong content.
NO_CONTENT = ["no_version", "missing_version", "unpublished_version"]
EVERY_PROBLEM = [*NO_CONTENT, "another_sections_version"]


def _publish_own(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Point each section back at its own published version (the runbook's Scenario 1 fix)."""
    return [
        f"SELECT * FROM publish_section_version({literal(str(r['id']))},"
        f" {literal(str(r['own_published_version']))});"
        for r in rows
        if r["own_published_version"] is not None
    ]


def _without_own(rows: Sequence[Mapping[str, Any]]) -> str:
    lost = [f"{r['locale']} {r['section_key']}" for r in rows if r["own_published_version"] is None]
    return (
        f" {', '.join(lost)} has no published version of its own: choose one from its history"
        " (runbook, Backup & Recovery, Scenario 1) and publish it with publish_section_version()."
        if lost
        else ""
    )


async def live_section_version_wrong(ctx: Context, firing: Firing) -> Finding:
    locales = _labels(firing, "locale")
    wrong = await ctx.rows(_LIVE_POINTERS, locales, EVERY_PROBLEM)
    where = ", ".join(locales)
    return Finding(
        firing.incident,
        f"live sections of {where} show a version they should not",
        f"{len(wrong)} live sections point (published_version_id) at another section's"
        " version, a draft, or nothing",
        wrong,
        "Point each back at its own published version, then verify the homepage as anon."
        + _without_own(wrong),
        _publish_own(wrong),
    )


async def content_hidden(ctx: Context, firing: Firing) -> Finding:
    pairs = sorted({(str(lb.get("locale")), str(lb.get("role"))) for lb, _ in firing.series})
    where = ", ".join(f"{locale} ({role})" for locale, role in pairs)
    # First the sections themselves: one pointing at no version, or at a draft the public may
    # not read, arrives without content however right the policies are.
    locales = sorted({locale for locale, _ in pairs})
    pointers = await ctx.rows(_LIVE_POINTERS, locales, NO_CONTENT)
    if pointers:
        return Finding(
            firing.incident,
            f"live sections of {where} have no published version to show",
            f"{len(pointers)} live sections point (published_version_id) at no version, a"
            " missing one or an unpublished one: the public gets them without content",
            pointers,
            "Point each back at its own published version, then verify the homepage as anon;"
            " sections still without content after that are the versions' policy (run triage"
            " again)." + _without_own(pointers),
            _publish_own(pointers),
        )
    access = await _read_access(ctx, "section_versions")
    policies = await _policies(ctx, "section_versions")
    roles = sorted({role for _, role in pairs})
    no_grant = [a["role"] for a in access if not a["can_select"] and a["role"] in roles]
    if no_grant:
        statements = [f"GRANT SELECT ON section_versions TO {', '.join(no_grant)};"]
        why = f"{', '.join(no_grant)} may not read section_versions"
    else:
        # A policy of its own for the published versions: whatever was narrowed stays as it
        # is, and nothing unpublished becomes readable.
        statements = [
            'CREATE POLICY "Published versions viewable by the public" ON section_versions'
            f" FOR SELECT TO {', '.join(roles)} USING (is_published);"
        ]
        why = "no policy on section_versions lets them read the published versions"
    return Finding(
        firing.incident,
        f"sections arrive without their content for {where}",
        f"get_homepage_content() gives sections whose content is NULL: {why}",
        access + policies,
        "Let the public read the published versions again, then verify as anon.",
        statements,
    )


# What each section carries besides its version: the alert's `relation` label -> table.
CATALOG = {"products": "section_products", "categories": "section_categories"}


async def catalog_hidden(ctx: Context, firing: Firing) -> Finding:
    pairs = sorted({(str(lb.get("locale")), str(lb.get("role"))) for lb, _ in firing.series})
    where = ", ".join(f"{locale} ({role})" for locale, role in pairs)
    roles = sorted({role for _, role in pairs})
    named = dict(firing.incident.labels).get("relation", "products")
    rows: list[dict[str, Any]] = []
    statements: list[str] = []
    why: list[str] = []
    # Both tables are read: when both hide rows, only one rule's series reach the drill-down.
    # The other table is named when a public role lacks its grant or any read policy; one
    # narrowed by a USING clause shows on the next triage, once this one is fixed.
    for relation, table in CATALOG.items():
        access = [a for a in await _read_access(ctx, table) if a["role"] in roles]
        no_grant = [a["role"] for a in access if not a["can_select"]]
        no_policy = [a["role"] for a in access if a["can_select"] and not a["read_policies"]]
        if relation != named and not no_grant and not no_policy:
            continue
        rows += [{"table": table, **a} for a in access]
        rows += [{"table": table, **p} for p in await _policies(ctx, table)]
        if no_grant:
            statements.append(f"GRANT SELECT ON {table} TO {', '.join(no_grant)};")
            why.append(f"{', '.join(no_grant)} may not read {table}")
        # A policy of its own, for the rows of live sections only: whatever was narrowed stays
        # as it is, and nothing the homepage does not show becomes readable. Also where a
        # policy applies but its USING clause was narrowed (no role lacks one then).
        if no_policy or not no_grant:
            name = f"Live section {relation} viewable by the public"
            statements += [
                f'DROP POLICY IF EXISTS "{name}" ON {table};',
                f'CREATE POLICY "{name}" ON {table} FOR SELECT TO {", ".join(roles)}'
                " USING (EXISTS (SELECT FROM homepage_sections hs WHERE hs.id = section_id"
                " AND hs.is_active AND hs.status = 'published'));",
            ]
            why.append(
                f"no policy on {table} lets {', '.join(no_policy)} read it"
                if no_policy
                else f"a policy on {table} hides rows of live sections"
            )
    return Finding(
        firing.incident,
        f"sections arrive without their {named} for {where}",
        "get_homepage_content() gives the live sections fewer products or categories than they"
        f" carry: {'; '.join(why)}",
        rows,
        "Let the public read the products and categories of the live sections again, then"
        " verify as anon.",
        statements,
    )


async def _function(ctx: Context, name: str) -> list[dict[str, Any]]:
    return await ctx.rows(
        "SELECT p.oid::regprocedure::text AS function, p.prosecdef AS security_definer,"
        " pg_get_userbyid(p.proowner)::text AS owner,"
        " has_function_privilege('anon', p.oid, 'EXECUTE') AS anon_can_execute"
        " FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND p.proname = $1",
        name,
    )


async def render_empty(ctx: Context, firing: Firing) -> Finding:
    pairs = sorted({(str(lb.get("locale")), str(lb.get("role"))) for lb, _ in firing.series})
    where = ", ".join(f"{locale} ({role})" for locale, role in pairs)
    return Finding(
        firing.incident,
        f"get_homepage_content() returns nothing for {where}",
        "live sections the public can read exist, yet the function returns no row",
        await _function(ctx, "get_homepage_content"),
        "The function's filter, or a grant or policy on a table it joins, changed: compare"
        " the function with the migration, and re-run it if it was changed.",
        [REMIGRATE],
    )


async def render_failing(ctx: Context, firing: Firing) -> Finding:
    function = await _function(ctx, "get_homepage_content")
    error = ctx.errors.get("homepage_render", "")
    if function and not function[0]["anon_can_execute"]:
        return Finding(
            firing.incident,
            "get_homepage_content() may not be executed by the public",
            f"rendering as anon failed: {error}",
            function,
            "Give EXECUTE back to the public roles.",
            [f"GRANT EXECUTE ON FUNCTION {function[0]['function']} TO {PUBLIC_ROLES};"],
        )
    # The function runs with the caller's rights: a CMS table the public lost SELECT on fails
    # it. Only the public's read access to that table comes back, nothing wider.
    denied = DENIED_TABLE.search(error)
    if denied is not None and denied["table"] in await _cms_tables(ctx):
        table = denied["table"]
        return Finding(
            firing.incident,
            f"the public may not read {table}, which get_homepage_content() reads",
            f"rendering as anon failed: {error}",
            await _read_access(ctx, table),
            "Give the public roles their read access back (row level security still decides"
            " which rows).",
            [f"GRANT SELECT ON public.{table} TO {PUBLIC_ROLES};"],
        )
    return Finding(
        firing.incident,
        "get_homepage_content() fails for the public",
        f"rendering as anon failed: {error}",
        function,
        "Read the error: a broken function body, a missing table or grant. Re-run the"
        " migration if the function was changed.",
        [REMIGRATE],
    )


async def _cms_tables(ctx: Context) -> set[str]:
    rows = await ctx.rows(
        "SELECT c.relname::text AS name FROM pg_class c"
        " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')"
        " AND c.relname LIKE ANY ($1::text[])",
        ctx.params["cms_tables"],
    )
    return {str(r["name"]) for r in rows}


async def function_missing(ctx: Context, firing: Firing) -> Finding:
    names = _labels(firing, "function")
    return Finding(
        firing.incident,
        f"{', '.join(f'{n}()' for n in names)} missing",
        "no such function in schema public",
        [{"function": n} for n in names],
        "Re-run the CMS migration that creates it.",
        [REMIGRATE],
    )


async def rls_disabled(ctx: Context, firing: Firing) -> Finding:
    tables = _labels(firing, "table")
    return Finding(
        firing.incident,
        f"row level security is off on {', '.join(tables)}",
        "every role with table privileges (anon, on Supabase) reads and writes all rows",
        [{"table": t, "rls_enabled": False} for t in tables],
        "Enable row level security (the table's policies then apply).",
        [f"ALTER TABLE public.{t} ENABLE ROW LEVEL SECURITY;" for t in tables],
    )


# The schedules as the CMS keeps them: status and publish_at are the runbook's; the section,
# the version, the time of the run and the error are read through to_jsonb under the names
# the settings give, so a CMS without one of them still answers (NULL).
def _schedules(ctx: Context, where: str) -> str:
    return (
        "WITH s AS (SELECT sc.id::text AS id, sc.status, sc.publish_at,"
        "   j ->> $1::text AS section, j ->> $2::text AS version_id, j ->> $3::text AS error,"
        "   CASE WHEN j ? $4::text THEN (j ->> $4::text)::timestamptz ELSE sc.updated_at END"
        "     AS processed_at"
        "   FROM section_schedules sc, LATERAL to_jsonb(sc) AS j)"
        " SELECT s.id, hs.section_key, hs.locale, s.publish_at, s.processed_at,"
        " left(regexp_replace(coalesce(s.error, ''), '\\s+', ' ', 'g'), 120) AS error,"
        " v.version_number AS version, live.version_number AS live_version,"
        " hs.id::text AS section_id"
        " FROM s LEFT JOIN homepage_sections hs ON hs.id::text = s.section"
        " LEFT JOIN section_versions v ON v.id::text = s.version_id AND v.section_id = hs.id"
        " LEFT JOIN section_versions live ON live.id = hs.published_version_id"
        f" WHERE {where}"
    )


def _columns_args(ctx: Context) -> tuple[object, ...]:
    p = ctx.params
    return (
        p["schedule_section_column"],
        p["schedule_version_column"],
        p["schedule_error_column"],
        p["schedule_processed_column"],
    )


async def _schedule_columns(ctx: Context) -> set[str]:
    rows = await ctx.rows(
        "SELECT attname::text AS name FROM pg_attribute"
        " WHERE attrelid = to_regclass('public.section_schedules') AND attnum > 0"
        " AND NOT attisdropped"
    )
    return {str(r["name"]) for r in rows}


async def publish_lag(ctx: Context, firing: Firing) -> Finding:
    pending = str(ctx.params["schedule_pending"])
    overdue = await ctx.rows(
        _schedules(ctx, "s.status = $5::text AND s.publish_at <= now()").replace(
            " SELECT s.id,",
            " SELECT extract(epoch FROM now() - s.publish_at)::bigint AS age_seconds, s.id,",
            1,
        )
        + f" ORDER BY s.publish_at, s.id LIMIT {MAX_ROWS}",
        *_columns_args(ctx),
        pending,
    )
    for row in overdue:
        del row["error"], row["processed_at"]
    # A schedule whose version is not newer than the live one would put an older version live.
    older = [
        r
        for r in overdue
        if r["version"] is not None
        and r["live_version"] is not None
        and int(r["version"]) <= int(r["live_version"])
    ]
    statements = []
    if older:
        # Processing these would roll the homepage back (or publish the live one again):
        # withdraw them first, dated as the CMS dates its own changes.
        touched = ", updated_at = now()" if "updated_at" in await _schedule_columns(ctx) else ""
        statements.append(
            "UPDATE section_schedules SET status ="
            f" {literal(str(ctx.params['schedule_cancelled']))}{touched}"
            f" WHERE id IN ({_ids(older)}) AND status = {literal(pending)};"
        )
    statements.append("SELECT * FROM process_scheduled_publishes();")
    oldest = float(overdue[0]["age_seconds"]) if overdue else 0.0
    return Finding(
        firing.incident,
        f"scheduled publishes overdue, the oldest by {human_age(oldest)}",
        f"{len(overdue)} schedules pending past publish_at (oldest first)"
        + (f"; {len(older)} would publish a version no newer than the live one" if older else ""),
        overdue,
        "Find out why the job does not run them (cron job, function, grants); once fixed,"
        " process the queue by hand.",
        statements,
    )


async def publish_failures(ctx: Context, firing: Firing) -> Finding:
    failed_word = str(ctx.params["schedule_failed"])
    recent = "s.status = $5::text AND s.processed_at > now() - interval '1 hour'"
    failed = await ctx.rows(
        _schedules(ctx, recent) + f" ORDER BY s.processed_at DESC, s.id LIMIT {MAX_ROWS}",
        *_columns_args(ctx),
        failed_word,
    )
    # Re-queue only what would move the homepage forward: per section the newest failed
    # schedule, of a version of that section newer than the live one, with nothing waiting or
    # published for the section after it. Without a version column nothing can be judged, so
    # nothing is offered.
    candidates = [
        r
        for r in failed
        if r["version"] is not None
        and (r["live_version"] is None or int(r["version"]) > int(r["live_version"]))
    ]
    later = await ctx.rows(
        _schedules(ctx, "s.status IN ($5::text, $6::text)"),
        *_columns_args(ctx),
        str(ctx.params["schedule_pending"]),
        str(ctx.params["schedule_published"]),
    )
    requeue: dict[str, dict[str, Any]] = {}
    # The newest per section: the latest publish_at, then the newest version.
    for r in sorted(
        candidates, key=lambda r: (r["publish_at"], int(r["version"]), r["id"]), reverse=True
    ):
        section = r["section_id"]
        replaced = any(
            o["section_id"] == section and o["publish_at"] >= r["publish_at"] for o in later
        )
        if section not in requeue and not replaced:
            requeue[section] = r
        elif section not in requeue:
            requeue[section] = {}  # the newest failure of the section was replaced: none
    chosen = [r for r in requeue.values() if r]
    columns = await _schedule_columns(ctx)
    resets = [
        f"{c} = NULL"
        for c in (ctx.params["schedule_error_column"], ctx.params["schedule_processed_column"])
        if c in columns
    ] + (["updated_at = now()"] if "updated_at" in columns else [])  # as docs/runbook.md does
    statements = (
        [
            "UPDATE section_schedules SET "
            + ", ".join([f"status = {literal(str(ctx.params['schedule_pending']))}", *resets])
            + f" WHERE id IN ({_ids(chosen)}) AND status = {literal(failed_word)};"
        ]
        if chosen
        else []
    )
    step = "Read the errors: a broken function or data it refuses. Fix the cause"
    step += (
        ", then re-queue the newest failed schedule of each section (only those that publish a"
        " version newer than the live one)."
        if chosen
        else "; nothing to re-queue: each failed schedule would publish a version no newer than"
        " the live one, or a later schedule replaced it."
    )
    for row in failed:
        del row["section_id"]
    return Finding(
        firing.incident,
        f"{len(failed)} scheduled publishes failed in the last hour",
        "newest first, each with its error, its version and the live version",
        failed,
        step,
        statements,
    )


async def _cron_job(ctx: Context) -> list[dict[str, Any]]:
    return await ctx.rows(
        "SELECT jobid, jobname, username, schedule, active FROM homepage_exporter.cron_job"
        " WHERE jobname = $1 AND username = $2 ORDER BY jobid",
        cron_job_name(ctx.thresholds),
        cron_job_owner(ctx.thresholds),
    )


async def cron_inactive(ctx: Context, firing: Firing) -> Finding:
    name = cron_job_name(ctx.thresholds)
    job = await _cron_job(ctx)
    if job:
        # cron.alter_job keeps the job's schedule and id; on Supabase an UPDATE of cron.job is
        # refused (the table is supabase_admin's).
        statements = [f"SELECT cron.alter_job(job_id := {job[0]['jobid']}, active := true);"]
        seen = f"jobid {job[0]['jobid']} is inactive: pg_cron will not run scheduled publishes"
    else:
        statements = [
            f"SELECT cron.schedule({literal(name)}, '*/5 * * * *',"
            " $$SELECT process_scheduled_publishes()$$);"
        ]
        seen = "no such job: pg_cron will not run scheduled publishes"
    return Finding(
        firing.incident,
        f"cron job {name} is {'inactive' if job else 'missing'}",
        seen,
        job,
        "Re-enable the job (or create it again), then process the queue by hand if due.",
        statements,
    )


async def _cron_runs(ctx: Context) -> list[dict[str, Any]]:
    job = await _cron_job(ctx)
    if not job:
        return []
    return await ctx.rows(
        "SELECT runid, status, start_time,"
        " extract(epoch FROM end_time - start_time)::numeric(12, 3) AS duration_seconds,"
        " left(regexp_replace(coalesce(return_message, ''), '\\s+', ' ', 'g'), 120) AS message"
        " FROM homepage_exporter.cron_job_run_details WHERE jobid = $1"
        " ORDER BY runid DESC LIMIT 5",
        job[0]["jobid"],
    )


async def cron_failed(ctx: Context, firing: Firing) -> Finding:
    name = cron_job_name(ctx.thresholds)
    runs = await _cron_runs(ctx)
    if runs and PERMISSION.search(str(runs[0]["message"])):  # P2 path C: RLS or a grant
        return Finding(
            firing.incident,
            f"cron job {name}: its last run was refused by permissions",
            "row level security or a grant blocks process_scheduled_publishes() (newest first)",
            runs,
            "Make the function SECURITY DEFINER again (or restore the grant it lost).",
            ["ALTER FUNCTION process_scheduled_publishes() SECURITY DEFINER;"],
            path=RunbookPath.C,
        )
    return Finding(
        firing.incident,
        f"cron job {name}: its last run failed",
        "the newest runs of the job (newest first) with pg_cron's message",
        runs,
        "Run the function by hand to see its error; fix it (re-run the migration if the"
        " function was corrupted).",
        ["SELECT * FROM process_scheduled_publishes();"],
    )


async def cron_runs(ctx: Context, firing: Firing) -> Finding:
    name = cron_job_name(ctx.thresholds)
    return Finding(
        firing.incident,
        f"cron job {name}: {firing.incident.summary[:1].lower()}{firing.incident.summary[1:]}",
        "the newest runs of the job (newest first)",
        await _cron_runs(ctx),
        "Look for locks on section_schedules and a backlog of due schedules; check that"
        " pg_cron's scheduler runs (cron.database_name, the server log).",
    )


async def not_security_definer(ctx: Context, firing: Firing) -> Finding:
    rows = [
        r for r in await _function(ctx, "process_scheduled_publishes") if not r["security_definer"]
    ]
    return Finding(
        firing.incident,
        "process_scheduled_publishes() is not SECURITY DEFINER",
        "it runs with the caller's rights, so row level security can block the publish",
        rows,
        "Make it SECURITY DEFINER again.",
        [f"ALTER FUNCTION {r['function']} SECURITY DEFINER;" for r in rows],
    )


# Sessions that touch the CMS, as the runbook's own P3 query looks for them, and more exactly:
# by the CMS relations they hold locks on, or by the CMS's names in their query text. Someone
# else's query (the shop's analytics) is not a CMS incident and is never offered a cancel.
CMS_RELATIONS = (  # HOMEPAGE_EXPORTER_CMS_TABLES, and their partitions
    "SELECT c.oid FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace"
    " AND (SELECT r.relname FROM pg_class r WHERE r.oid = coalesce(pg_partition_root(c.oid),"
    " c.oid)) LIKE ANY ($4::text[])"
)
CMS_TEXT = "(homepage|section_|media_assets|get_homepage_content|process_scheduled_publishes)"
# The runbook's own maintenance, which a cancel would break: pg_dump's COPY ... TO stdout,
# VACUUM, ANALYZE, REINDEX, CREATE INDEX CONCURRENTLY.
MAINTENANCE = r"^\s*(copy\s.*\sto\s+stdout|vacuum|analyze|reindex|create\s+index)"


async def cms_sessions(ctx: Context, slower_than: float) -> list[dict[str, Any]]:
    return await ctx.rows(
        f"WITH cms AS ({CMS_RELATIONS}),"
        " a AS (SELECT * FROM pg_stat_activity WHERE datname = current_database()"
        "   AND pid <> pg_backend_pid() AND application_name <> 'homepage-cms-exporter'"
        "   AND state IS DISTINCT FROM 'idle'),"
        " touching AS (SELECT DISTINCT l.pid FROM pg_locks l JOIN cms ON cms.oid = l.relation),"
        " own AS (SELECT pid FROM a WHERE pid IN (SELECT pid FROM touching) OR query ~* $1),"
        # A blocker is the CMS's when it holds up a CMS session: the shop's own lock chain is
        # not (its holder would otherwise be named, and offered a cancel).
        " blockers AS (SELECT DISTINCT unnest(pg_blocking_pids(pid)) AS pid FROM own)"
        " SELECT a.pid, a.usename::text AS role, a.application_name AS application, a.state,"
        " greatest(0, extract(epoch FROM clock_timestamp()"
        "   - coalesce(a.query_start, a.xact_start)))::numeric(12, 1) AS age_seconds,"
        " a.wait_event_type, a.wait_event, pg_blocking_pids(a.pid) AS blocked_by,"
        " a.pid IN (SELECT pid FROM blockers) AS blocking,"
        " a.query ~* $2 AS maintenance,"
        f" left(regexp_replace(a.query, '\\s+', ' ', 'g'), {QUERY_PREFIX_CHARS}) AS query_prefix"
        " FROM a"
        " WHERE (a.pid IN (SELECT pid FROM own) OR a.pid IN (SELECT pid FROM blockers))"
        " AND (a.pid IN (SELECT pid FROM blockers) OR cardinality(pg_blocking_pids(a.pid)) > 0"
        "      OR (a.state = 'active'"
        "          AND a.query_start < clock_timestamp() - make_interval(secs => $3)))"
        f" ORDER BY a.query_start NULLS LAST, a.pid LIMIT {MAX_ROWS}",
        CMS_TEXT,
        MAINTENANCE,
        slower_than,
        ctx.params["cms_tables"],
    )


def _cancels(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """pg_cancel_backend for the blockers (or, with none, the runaways), never maintenance."""
    culprits = [r for r in rows if r["blocking"]] or [r for r in rows if not r["blocked_by"]]
    return [f"SELECT pg_cancel_backend({r['pid']});" for r in culprits if not r["maintenance"]]


async def sessions(ctx: Context, firing: Firing) -> Finding:
    slower_than = 300.0 if firing.incident.alert == "HomepageLongRunningQuery" else 1.0
    rows = await cms_sessions(ctx, slower_than)
    blocked = [r for r in rows if r["blocked_by"]]
    return Finding(
        firing.incident,
        "blocked CMS sessions" if blocked else "long-running CMS queries",
        f"{len(rows)} CMS sessions in a lock chain or active too long (oldest first)",
        rows,
        "Identify the sessions (role, application, wait event, query prefix); cancel the"
        " blocker or the runaway only if you know what it is. Maintenance (pg_dump, VACUUM,"
        " ANALYZE) is never offered a cancel.",
        _cancels(rows),
    )


async def slow_render(ctx: Context, firing: Firing) -> Finding:
    rows: list[dict[str, Any]] = [
        {"locale": lb.get("locale"), "role": lb.get("role"), "render_seconds": round(v, 3)}
        for lb, v in sorted(firing.series, key=lambda s: -s[1])
    ]
    worst = rows[0]
    busy = await cms_sessions(ctx, 1.0)
    return Finding(
        firing.incident,
        f"the {worst['locale']} homepage renders in {float(str(worst['render_seconds'])):.2f} s",
        f"get_homepage_content() is over the runbook's {firing.incident.severity} threshold"
        " (slowest first), then the CMS sessions busy or blocked now",
        rows + busy,
        "Look at the CMS sessions listed, bloat, statistics and indexes (the findings below).",
        _cancels(busy),
    )


# The definitions the runbook gives (Performance Tuning: Create Missing Indexes).
RUNBOOK_INDEXES = {
    "idx_homepage_sections_render": (
        "homepage_sections (locale, display_order) WHERE is_active AND status = 'published'"
    ),
    "idx_section_versions_history": "section_versions (section_id, version_number DESC)",
    "idx_section_schedules_pending": "section_schedules (publish_at) WHERE status = 'pending'",
}


INDEX_STATE = {"HomepageIndexMissing": "missing", "HomepageIndexInvalid": "invalid"}


async def indexes(ctx: Context, firing: Firing) -> Finding:
    names = _labels(firing, "index")
    # An index still being built (CREATE INDEX CONCURRENTLY) is invalid until it finishes: it
    # must not be dropped.
    building = {
        str(r["index"])
        for r in await ctx.rows(
            "SELECT c.relname AS index FROM pg_stat_progress_create_index p"
            " JOIN pg_class c ON c.oid = p.index_relid"
        )
    }
    rows = [
        {"index": n, "state": "building" if n in building else INDEX_STATE[firing.incident.alert]}
        for n in names
    ]
    statements = []
    for name in names:
        if name in building:
            continue
        if firing.incident.alert == "HomepageIndexInvalid":
            statements.append(f"REINDEX INDEX CONCURRENTLY public.{name};")
        elif name in RUNBOOK_INDEXES:
            statements.append(f"CREATE INDEX CONCURRENTLY {name} ON {RUNBOOK_INDEXES[name]};")
    return Finding(
        firing.incident,
        f"CMS indexes {INDEX_STATE[firing.incident.alert]}: {', '.join(names)}",
        "; ".join(f"{r['index']} ({r['state']})" for r in rows),
        rows,
        "Build them concurrently (no table lock); leave one that is being built alone.",
        statements,
    )


async def tables(ctx: Context, firing: Firing) -> Finding:
    names = _labels(firing, "table")
    rows = await ctx.rows(
        "SELECT s.relname AS table, s.n_live_tup AS live_rows, s.n_dead_tup AS dead_rows,"
        " round(s.n_dead_tup::numeric / nullif(s.n_live_tup + s.n_dead_tup, 0), 3) AS dead_ratio,"
        " greatest(s.last_analyze, s.last_autoanalyze) AS last_analyzed,"
        " greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuumed,"
        " s.n_mod_since_analyze AS changed_since_analyze"
        " FROM pg_stat_user_tables s WHERE s.schemaname = 'public' AND s.relname = ANY ($1::text[])"
        " ORDER BY s.relname",
        names,
    )
    bloat = firing.incident.alert == "HomepageTableBloated"
    return Finding(
        firing.incident,
        ("bloated CMS tables: " if bloat else "CMS tables with stale statistics: ")
        + ", ".join(names),
        "dead rows and the last VACUUM and ANALYZE of each",
        rows,
        "VACUUM now; VACUUM FULL or pg_repack only in a maintenance window."
        if bloat
        else "Refresh the planner's statistics.",
        [f"VACUUM (ANALYZE) public.{n};" if bloat else f"ANALYZE public.{n};" for n in names],
    )


DRILLDOWNS: Mapping[str, DrillDown] = {
    "HomepageLongRunningQuery": sessions,
    "PostgresBlockedQueries": sessions,
    "HomepageIndexMissing": indexes,
    "HomepageIndexInvalid": indexes,
    "HomepageTableBloated": tables,
    "HomepageTableStatisticsStale": tables,
    "HomepageNoLiveSections": no_live_sections,
    "HomepageInvisibleToPublic": invisible_to_public,
    "HomepageContentHidden": content_hidden,
    "HomepageLiveSectionVersionWrong": live_section_version_wrong,
    "HomepageCatalogHidden": catalog_hidden,
    "HomepageRenderEmpty": render_empty,
    "HomepageRenderFailing": render_failing,
    "HomepageFunctionMissing": function_missing,
    "HomepageTableRLSDisabled": rls_disabled,
    "ScheduledPublishLag": publish_lag,
    "HighPublishFailureRate": publish_failures,
    "HomepageCronJobInactive": cron_inactive,
    "HomepageCronJobFailed": cron_failed,
    "HomepageCronJobSlow": cron_runs,
    "HomepageCronJobNotRunning": cron_runs,
    "HomepagePublishFunctionNotSecurityDefiner": not_security_definer,
    "HomepageSlowQuery": slow_render,
}


async def plain(ctx: Context, firing: Firing) -> Finding:
    """An incident without a drill-down of its own: the series behind it."""
    return Finding(
        firing.incident,
        firing.incident.summary,
        f"{len(firing.series)} series over the threshold",
        [{**labels, "value": value} for labels, value in firing.series],
        "",
    )


def drilldown(alert: str) -> DrillDown:
    return DRILLDOWNS.get(alert, plain)
