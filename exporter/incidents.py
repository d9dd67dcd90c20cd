"""The one definition of each incident: its condition, threshold, severity, runbook priority
and section.

An incident is a condition over the samples the shipped queries export. `tools/mixin` renders
each into the alerting rule Prometheus evaluates; `triage` and the status page evaluate the very
same condition in Python on the same queries' samples. So a threshold changed in
alerts/thresholds.yaml, or a condition changed here, changes all three at once: there is no
second copy to drift.

The condition language is deliberately small (one comparison, optionally joined `and on` /
`unless on` another comparison by labels): every incident of the DBA runbook's P1/P2/P3 tree
fits in it, and both PromQL and Python can evaluate it exactly. No library evaluates PromQL in
Python, and a general evaluator would be far more code than the three forms needed here.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

from exporter.mapping import Family

QUICKREF = Path(__file__).with_name("quickref.json")
# What the query exporter's own metrics say about a query (the part incidents read).
QUERY_UP = "homepage_exporter_query_up"
# Every alert is per scrape target; joins always keep these labels.
TARGET_LABELS = ("instance", "job")


class Priority(IntEnum):
    """The DBA runbook's incident priorities; the exit code of `triage` is this number."""

    NONE = 0
    P3 = 1
    P2 = 2
    P1 = 3

    @property
    def label(self) -> str:
        return "info" if self is Priority.NONE else self.name


class RunbookPath(StrEnum):
    """The runbook's resolution path under a priority (P1 path A, ...); NONE where it names
    none."""

    NONE = ""
    A = "A"
    B = "B"
    C = "C"
    D = "D"


class Severity(StrEnum):
    """What Alertmanager does with the alert: a ticket, or a page."""

    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return 1 if self is Severity.WARNING else 2


class Op(StrEnum):
    GT = ">"
    GE = ">="
    LT = "<"
    EQ = "=="

    def __call__(self, left: float, right: float) -> bool:
        return bool(_OPS[self](left, right))


_OPS: Mapping[Op, Callable[[float, float], bool]] = {
    Op.GT: operator.gt,
    Op.GE: operator.ge,
    Op.LT: operator.lt,
    Op.EQ: operator.eq,
}


@dataclass(frozen=True, slots=True)
class Threshold:
    """A number from alerts/thresholds.yaml: `key`, and for tiered keys its `tier`."""

    key: str
    tier: Severity | None = None

    def value(self, thresholds: Mapping[str, Any]) -> float:
        raw = thresholds[self.key]
        return float(raw[self.tier.value] if self.tier is not None else raw)


Bound = float | Threshold


def _number(value: float) -> str:
    """A threshold as PromQL writes it: 0.5, 15, 10737418240."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True, slots=True)
class Signal:
    """`metric{match} op bound`; with `age`, `time() - metric op bound` (for timestamps)."""

    metric: str
    op: Op
    bound: Bound
    match: tuple[tuple[str, str], ...] = ()  # label = value
    exclude: tuple[tuple[str, str], ...] = ()  # label != value
    age: bool = False

    def threshold(self, thresholds: Mapping[str, Any]) -> float:
        if isinstance(self.bound, Threshold):
            return self.bound.value(thresholds)
        return float(self.bound)

    def promql(self, thresholds: Mapping[str, Any]) -> str:
        matchers = [f'{k}="{v}"' for k, v in self.match] + [f'{k}!="{v}"' for k, v in self.exclude]
        selector = self.metric + ("{" + ", ".join(matchers) + "}" if matchers else "")
        left = f"time() - {selector}" if self.age else selector
        return f"{left} {self.op} {_number(self.threshold(thresholds))}"

    def selects(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k, "") == v for k, v in self.match) and all(
            labels.get(k, "") != v for k, v in self.exclude
        )

    def holding(
        self, samples: Samples, thresholds: Mapping[str, Any], now: float
    ) -> list[tuple[Mapping[str, str], float]]:
        """The series of `metric` for which the comparison holds, with their values."""
        bound = self.threshold(thresholds)
        out = []
        for labels, value in samples.get(self.metric, ()):
            if not self.selects(labels) or math.isnan(value):
                continue
            shown = now - value if self.age else value
            if self.op(shown, bound):
                out.append((labels, shown))
        return out


Samples = Mapping[str, Sequence[tuple[Mapping[str, str], float]]]


@dataclass(frozen=True, slots=True)
class Incident:
    """One alerting rule, and what it means for the runbook's triage."""

    alert: str
    severity: Severity
    priority: Priority
    path: RunbookPath  # the runbook's resolution path under its priority
    group: str  # the rules file's group
    when: Signal
    summary: str
    description: str
    also: Signal | None = None  # `and on (instance, job, *on)`
    unless: Signal | None = None  # `unless on (instance, job, *on)`
    on: tuple[str, ...] = ()
    for_: str = "0m"
    # Extra rule labels: only where one alert has rules of two priorities (promtool refuses two
    # rules with the same name and labels).
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def metrics(self) -> frozenset[str]:
        """The metrics its condition reads."""
        return frozenset(s.metric for s in (self.when, self.also, self.unless) if s is not None)

    @property
    def section(self) -> str:
        """The docs/runbook.md anchor, as the alert's runbook_url names it."""
        return self.alert.lower()

    def expr(self, thresholds: Mapping[str, Any]) -> str:
        on = ", ".join((*TARGET_LABELS, *self.on))
        expr = self.when.promql(thresholds)
        if self.also is not None:
            expr += f"\nand on ({on}) {self.also.promql(thresholds)}"
        if self.unless is not None:
            expr += f"\nunless on ({on}) {self.unless.promql(thresholds)}"
        return expr

    def firing(
        self, samples: Samples, thresholds: Mapping[str, Any], now: float
    ) -> list[tuple[Mapping[str, str], float]]:
        """The series this incident's rule would return now (before `for:`): labels, value."""

        def keys(signal: Signal | None) -> set[tuple[str, ...]] | None:
            if signal is None:
                return None
            return {
                tuple(labels.get(k, "") for k in self.on)
                for labels, _ in signal.holding(samples, thresholds, now)
            }

        also, unless = keys(self.also), keys(self.unless)
        out = []
        for labels, value in self.when.holding(samples, thresholds, now):
            key = tuple(labels.get(k, "") for k in self.on)
            if also is not None and key not in also:
                continue
            if unless is not None and key in unless:
                continue
            out.append((labels, value))
        return out


def samples_of(
    families: Iterable[Family], query_up: Mapping[str, bool] | None = None
) -> dict[str, list[tuple[Mapping[str, str], float]]]:
    """The samples incidents read: the queries' families, and `query_up` per query that ran."""
    out: dict[str, list[tuple[Mapping[str, str], float]]] = {}
    for family in families:
        series = out.setdefault(family.metric.name, [])
        for sample in family.samples:
            if sample.value is not None:
                series.append(
                    (dict(zip(family.metric.labels, sample.labels, strict=True)), sample.value)
                )
    for query, up in (query_up or {}).items():
        out.setdefault(QUERY_UP, []).append(({"query": query}, 1.0 if up else 0.0))
    return out


@dataclass(frozen=True, slots=True)
class Firing:
    """An incident that holds now: the worst tier of one alert, and the series behind it."""

    incident: Incident
    series: tuple[tuple[Mapping[str, str], float], ...] = field(default=())


def evaluate(
    samples: Samples, thresholds: Mapping[str, Any], now: float, incidents: Sequence[Incident]
) -> list[Firing]:
    """Every alert that holds now, each at its worst tier (a critical hides its warning)."""
    worst: dict[str, Firing] = {}
    for incident in incidents:
        series = incident.firing(samples, thresholds, now)
        if not series:
            continue
        seen = worst.get(incident.alert)
        if seen is None or incident.severity.rank > seen.incident.severity.rank:
            worst[incident.alert] = Firing(incident, tuple(series))
    return sorted(
        worst.values(),
        key=lambda f: (-f.incident.priority, -f.incident.severity.rank, f.incident.alert),
    )


def load_thresholds(path: Path = QUICKREF) -> dict[str, Any]:
    """The alerts' thresholds as the package carries them (generated from alerts/thresholds.yaml
    by tools/mixin, so the installed exporter needs no repository)."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["thresholds"]
    return data


# --- the definitions ---------------------------------------------------------------------------

W, C = Severity.WARNING, Severity.CRITICAL
RENDER = "homepage_render"


def cron_job_name(thresholds: Mapping[str, Any]) -> str:
    """The CMS's pg_cron job (a name, not a number, in alerts/thresholds.yaml)."""
    return str(thresholds["cms_cron_job"])


def cron_job_owner(thresholds: Mapping[str, Any]) -> str:
    """The role that owns it: pg_cron lets another role use the same job name."""
    return str(thresholds["cms_cron_owner"])


def _tiered(
    alert: str,
    key: str,
    metric: str,
    priority: Priority,
    path: RunbookPath,
    group: str,
    for_: tuple[str, str],
    summary: str,
    description: str,
    match: tuple[tuple[str, str], ...] = (),
) -> Iterator[Incident]:
    for severity, duration in ((W, for_[0]), (C, for_[1])):
        yield Incident(
            alert,
            severity,
            priority,
            path,
            group,
            Signal(metric, Op.GT, Threshold(key, severity), match=match),
            summary,
            description,
            for_=duration,
        )


def _named(info: str, text: str) -> str:
    """A description fragment from the info series `info` of the same target, if present."""
    return (
        "{{ with printf `" + info + '{instance="%s",job="%s"}` $labels.instance $labels.job'
        " | query }}{{ with . | first }}" + text + "{{ end }}{{ end }}"
    )


OLDEST_DUE = _named(
    "homepage_scheduled_publish_oldest_due_info",
    " Oldest: schedule {{ .Labels.oldest_id }} ({{ .Labels.oldest_section }},"
    " {{ .Labels.oldest_locale }}).",
)
NEWEST_FAILURE = _named(
    "homepage_publish_failure_newest_info",
    " Newest: schedule {{ .Labels.newest_id }} ({{ .Labels.newest_section }},"
    " {{ .Labels.newest_locale }}): {{ .Labels.newest_error }}.",
)


def incidents(cms_cron_job: str, cms_cron_owner: str) -> list[Incident]:
    """Every incident, in the order of the runbook's triage (P1, P2, P3)."""
    job = (("jobname", cms_cron_job), ("username", cms_cron_owner))
    return [
        # --- P1: homepage not loading --------------------------------------------------------
        Incident(
            "HomepageNoLiveSections",
            C,
            Priority.P1,
            RunbookPath.A,
            "homepage",
            Signal("homepage_sections_live", Op.EQ, 0),
            "The homepage has no live sections.",
            "Locale {{ $labels.locale }} on {{ $labels.instance }} has no active, published"
            " section: the public homepage is blank. Check homepage_sections for is_active ="
            " false (the kill switch) or deleted rows, then re-enable (runbook P1 path A).",
            also=Signal("homepage_locale_expected_live", Op.EQ, 1),
            on=("locale",),
            for_="2m",
        ),
        Incident(
            "HomepageInvisibleToPublic",
            C,
            Priority.P1,
            RunbookPath.B,
            "homepage",
            Signal("homepage_sections_visible_to_anon", Op.EQ, 0),
            "Row level security hides the homepage from the public.",
            "Locale {{ $labels.locale }} on {{ $labels.instance }} has live sections but the anon"
            " role can read none of them. Check the SELECT policies on homepage_sections first"
            " (runbook P1 path B).",
            also=Signal("homepage_sections_live", Op.GT, 0),
            on=("locale",),
            for_="2m",
        ),
        Incident(
            "HomepageContentHidden",
            C,
            Priority.P1,
            RunbookPath.B,
            "homepage",
            Signal("homepage_render_sections_without_content", Op.GT, 0),
            "The public receives homepage sections without their content.",
            "get_homepage_content('{{ $labels.locale }}') gives the {{ $labels.role }} role"
            " {{ $value }} sections whose content is NULL on {{ $labels.instance }}: a policy or"
            " grant on section_versions hides the published versions (runbook P1 path B).",
            for_="2m",
        ),
        # The runbook's "Verify data integrity" join, on what is live. A section pointing at
        # another section's version shows that section's content (another locale's hero);
        # one pointing at a draft shows it, unreviewed, where the versions' policy lets the
        # public read drafts; with a render that INNER JOINs the versions, one pointing at
        # nothing vanishes. No count of the render sees these. Where the render gives such
        # sections without content instead (the runbook's LEFT JOIN, a policy that hides
        # drafts), HomepageContentHidden pages for the locale and this one keeps quiet.
        Incident(
            "HomepageLiveSectionVersionWrong",
            C,
            Priority.P2,
            RunbookPath.NONE,
            "homepage",
            Signal("homepage_live_sections_version_wrong", Op.GT, 0),
            "A live homepage section shows a version it should not.",
            "{{ $value }} live sections of locale {{ $labels.locale }} on {{ $labels.instance }}"
            " have a published_version_id that is wrong ({{ $labels.problem }}): the public"
            " sees another section's content, a draft, or nothing. Point each back at its own"
            " published version (runbook, Backup & Recovery, Scenario 1).",
            unless=Signal("homepage_render_sections_without_content", Op.GT, 0),
            on=("locale",),
            for_="2m",
            labels=(("priority", "P2"),),
        ),
        # One rule per table, so that the page names what is missing; a homepage the role gets
        # no section of at all is HomepageRenderEmpty's or HomepageInvisibleToPublic's page.
        # It pages when the role receives none of them: a CMS's function leaves some out by
        # design (sold out, not yet on sale, a carousel's first ten), so fewer than are linked
        # is ordinary; none of many is a policy or grant that hides the table.
        *(
            Incident(
                "HomepageCatalogHidden",
                C,
                Priority.P1,
                RunbookPath.B,
                "homepage",
                Signal(f"homepage_render_{relation}_missing", Op.GT, 0),
                "The public receives homepage sections without their products or categories.",
                "get_homepage_content('{{ $labels.locale }}') gives the {{ $labels.role }} role"
                f" none of the {{{{ $value }}}} {relation} the live sections carry on"
                f" {{{{ $labels.instance }}}}: a policy or grant on section_{relation} hides them"
                " (runbook P1 path B).",
                also=Signal(f"homepage_render_{relation}", Op.EQ, 0),
                unless=Signal("homepage_render_sections", Op.EQ, 0),
                on=("locale", "role"),
                for_="2m",
                labels=(("relation", relation),),
            )
            for relation in ("products", "categories")
        ),
        Incident(
            "HomepageRenderEmpty",
            C,
            Priority.P1,
            RunbookPath.C,
            "homepage",
            Signal("homepage_render_sections", Op.EQ, 0),
            "get_homepage_content() returns no sections while sections are live.",
            "get_homepage_content('{{ $labels.locale }}') returns nothing to the"
            " {{ $labels.role }} role on {{ $labels.instance }} although live sections exist"
            " that the public can read: the function's filter, or a grant or policy on the"
            " tables it joins, has changed. Compare it with the migration (runbook P1 path C).",
            also=Signal("homepage_sections_live", Op.GT, 0),
            unless=Signal("homepage_sections_visible_to_anon", Op.EQ, 0),
            on=("locale",),
            for_="2m",
        ),
        Incident(
            "HomepageRenderFailing",
            C,
            Priority.P1,
            RunbookPath.C,
            "homepage",
            Signal(QUERY_UP, Op.EQ, 0, match=(("query", RENDER),)),
            "get_homepage_content() fails.",
            "Calling get_homepage_content() as anon fails on {{ $labels.instance }}. Run it by"
            " hand to see the error; a missing function or a revoked EXECUTE is the usual cause"
            " (runbook P1 path C).",
            for_="5m",
        ),
        Incident(
            "HomepageFunctionMissing",
            C,
            Priority.P1,
            RunbookPath.C,
            "homepage",
            Signal(
                "homepage_cms_function_present",
                Op.EQ,
                0,
                match=(("function", "get_homepage_content"),),
            ),
            "A CMS function is missing.",
            "Function {{ $labels.function }}() does not exist in schema public on"
            " {{ $labels.instance }}. Re-apply the CMS migration (runbook P1 path C).",
            for_="5m",
            labels=(("priority", "P1"),),
        ),
        Incident(
            "HomepageTableRLSDisabled",
            C,
            Priority.P1,
            RunbookPath.NONE,
            "homepage",
            Signal("homepage_cms_table_rls_enabled", Op.EQ, 0),
            "Row level security is off on a CMS table.",
            "Table {{ $labels.table }} on {{ $labels.instance }} has row level security"
            " disabled: every row is readable through the public API. Run ALTER TABLE"
            " {{ $labels.table }} ENABLE ROW LEVEL SECURITY after checking its policies.",
            for_="1m",
        ),
        # --- P2: scheduled publishes not working ---------------------------------------------
        Incident(
            "HomepageFunctionMissing",
            C,
            Priority.P2,
            RunbookPath.B,
            "homepage",
            Signal(
                "homepage_cms_function_present",
                Op.EQ,
                0,
                exclude=(("function", "get_homepage_content"),),
            ),
            "A CMS function is missing.",
            "Function {{ $labels.function }}() does not exist in schema public on"
            " {{ $labels.instance }}. Re-apply the CMS migration (runbook P2 path B).",
            for_="5m",
            labels=(("priority", "P2"),),
        ),
        *_tiered(
            "ScheduledPublishLag",
            "publish_lag_minutes",
            "homepage_scheduled_publish_lag_minutes",
            Priority.P2,
            RunbookPath.NONE,
            "publishing",
            ("5m", "10m"),
            "Scheduled publishes are delayed.",
            "The oldest due schedule on {{ $labels.instance }} is {{ $value | humanize }}"
            " minutes behind." + OLDEST_DUE + " Check the process-scheduled-publishes cron job,"
            " then run SELECT * FROM process_scheduled_publishes() by hand (runbook P2).",
        ),
        *_tiered(
            "HighPublishFailureRate",
            "publish_failures_per_hour",
            "homepage_publish_failures_last_hour",
            Priority.P2,
            RunbookPath.B,
            "publishing",
            ("10m", "10m"),
            "Scheduled publishes are failing.",
            "{{ $value }} scheduled publishes failed in the last hour on {{ $labels.instance }}."
            + NEWEST_FAILURE
            + " Read error_message of the failed rows in section_schedules; RLS and a version of"
            " the wrong section are the usual causes.",
        ),
        Incident(
            "HomepageCronJobInactive",
            W,
            Priority.P2,
            RunbookPath.A,
            "publishing",
            Signal("homepage_cron_job_active", Op.EQ, 0, match=job),
            "The CMS's pg_cron job is inactive or missing.",
            "pg_cron job {{ $labels.jobname }} on {{ $labels.instance }} is inactive or gone,"
            " so scheduled publishes will not run. Re-create it with cron.schedule (runbook P2"
            " path A).",
            for_="5m",
        ),
        Incident(
            "HomepageCronJobFailed",
            W,
            Priority.P2,
            RunbookPath.B,
            "publishing",
            Signal("homepage_cron_job_last_run_failure_info", Op.EQ, 1, match=job),
            "The last pg_cron run failed.",
            "The newest finished run of {{ $labels.jobname }} on {{ $labels.instance }} failed:"
            " {{ $labels.message }}. The whole message is return_message in"
            " cron.job_run_details.",
        ),
        Incident(
            "HomepageCronJobSlow",
            W,
            Priority.P2,
            RunbookPath.NONE,
            "publishing",
            Signal(
                "homepage_cron_job_last_run_duration_seconds",
                Op.GT,
                Threshold("cron_run_seconds"),
                match=job,
            ),
            "A pg_cron run took too long.",
            "The newest run of {{ $labels.jobname }} on {{ $labels.instance }} took"
            " {{ $value | humanizeDuration }}. Look for locks on section_schedules and for a"
            " backlog of due schedules.",
        ),
        Incident(
            "HomepageCronJobNotRunning",
            W,
            Priority.P2,
            RunbookPath.A,
            "publishing",
            Signal(
                "homepage_cron_job_last_run_start_timestamp_seconds",
                Op.GT,
                Threshold("cron_gap_seconds"),
                match=job,
                age=True,
            ),
            "An active pg_cron job has stopped running.",
            "Active job {{ $labels.jobname }} on {{ $labels.instance }} last started"
            " {{ $value | humanizeDuration }} ago. Check that the pg_cron scheduler is running"
            " (cron.database_name, the server log).",
            also=Signal("homepage_cron_job_active", Op.EQ, 1),
            on=("jobname", "username"),
            for_="5m",
        ),
        Incident(
            "HomepagePublishFunctionNotSecurityDefiner",
            W,
            Priority.P2,
            RunbookPath.C,
            "publishing",
            Signal(
                "homepage_cms_function_security_definer",
                Op.EQ,
                0,
                match=(("function", "process_scheduled_publishes"),),
            ),
            "process_scheduled_publishes() is not SECURITY DEFINER.",
            "process_scheduled_publishes() on {{ $labels.instance }} runs with the caller's"
            " rights, so row level security can block publishes. ALTER FUNCTION"
            " process_scheduled_publishes() SECURITY DEFINER (runbook P2 path C).",
            for_="5m",
        ),
        # --- P3: performance degradation -----------------------------------------------------
        *_tiered(
            "HomepageSlowQuery",
            "render_seconds",
            "homepage_render_duration_seconds",
            Priority.P3,
            RunbookPath.NONE,
            "homepage",
            ("5m", "5m"),
            "Homepage rendering is slow.",
            "get_homepage_content('{{ $labels.locale }}') takes {{ $value | humanizeDuration }}"
            " for the {{ $labels.role }} role on {{ $labels.instance }}. Check that"
            " idx_homepage_sections_render is used and statistics are fresh (ANALYZE"
            " homepage_sections).",
        ),
        Incident(
            "HomepageLongRunningQuery",
            W,
            Priority.P3,
            RunbookPath.NONE,
            "database",
            # pg_dump, VACUUM, ANALYZE and the weekly cleanup are maintenance: not counted.
            Signal("homepage_postgres_longest_cms_query_seconds", Op.GT, 300),
            "A CMS query has run for over 5 minutes.",
            "A query on CMS tables has run for {{ $value | humanizeDuration }} on"
            " {{ $labels.instance }}. Find it in pg_stat_activity before terminating anything.",
            for_="2m",
        ),
        Incident(
            "PostgresBlockedQueries",
            W,
            Priority.P3,
            RunbookPath.NONE,
            "database",
            Signal("homepage_postgres_blocked_queries", Op.GE, 1),
            "Sessions are waiting on locks.",
            "{{ $value }} sessions on {{ $labels.instance }} have waited on locks for 5 minutes."
            " Find the holders with pg_blocking_pids().",
            for_="5m",
        ),
        Incident(
            "HomepageTableBloated",
            W,
            Priority.P3,
            RunbookPath.A,
            "database",
            Signal("homepage_cms_table_dead_tuple_ratio", Op.GT, Threshold("dead_tuple_ratio")),
            "A CMS table is bloated.",
            "{{ $value | humanizePercentage }} of the rows in {{ $labels.table }} on"
            " {{ $labels.instance }} are dead. Check autovacuum; VACUUM ANALYZE"
            " {{ $labels.table }} (runbook P3 path A).",
            also=Signal("homepage_cms_table_dead_rows", Op.GT, Threshold("bloat_min_dead_rows")),
            on=("table",),
            for_="30m",
        ),
        Incident(
            "HomepageTableStatisticsStale",
            W,
            Priority.P3,
            RunbookPath.B,
            "database",
            Signal(
                "homepage_cms_table_last_analyzed_timestamp_seconds",
                Op.GT,
                Threshold("statistics_age_seconds"),
                age=True,
            ),
            "Planner statistics of a CMS table are old.",
            "{{ $labels.table }} on {{ $labels.instance }} was last analyzed"
            " {{ $value | humanizeDuration }} ago. Run ANALYZE {{ $labels.table }} and check the"
            " daily statistics job.",
            # Only where rows changed since: an unchanged table's statistics are still true.
            also=Signal("homepage_cms_table_rows_modified_since_analyze", Op.GT, 0),
            on=("table",),
            for_="1h",
        ),
        Incident(
            "HomepageIndexMissing",
            W,
            Priority.P3,
            RunbookPath.C,
            "database",
            Signal("homepage_cms_index_present", Op.EQ, 0),
            "An index the runbook expects is missing.",
            "Index {{ $labels.index }} on {{ $labels.table }} is missing on"
            " {{ $labels.instance }}. Re-create it with CREATE INDEX CONCURRENTLY.",
            for_="15m",
        ),
        Incident(
            "HomepageIndexInvalid",
            W,
            Priority.P3,
            RunbookPath.C,
            "database",
            Signal("homepage_cms_index_valid", Op.EQ, 0),
            "A CMS index is invalid.",
            "Index {{ $labels.index }} on {{ $labels.table }} ({{ $labels.instance }}) is invalid,"
            " usually left by a failed CREATE INDEX CONCURRENTLY. Drop it and create it again.",
            # Missing is not invalid; an index being built concurrently is invalid until done.
            also=Signal("homepage_cms_index_building", Op.EQ, 0),
            unless=Signal("homepage_cms_index_present", Op.EQ, 0),
            on=("index", "table"),
            for_="15m",
        ),
    ]


def shipped(thresholds: Mapping[str, Any] | None = None) -> list[Incident]:
    """The incidents with the package's thresholds (the cron job's name is one of them)."""
    t = load_thresholds() if thresholds is None else thresholds
    return incidents(cron_job_name(t), cron_job_owner(t))
