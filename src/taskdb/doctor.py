"""`taskdb doctor`: is the queue healthy, and if not, what is wrong and what to do. Read-only.

Built on ``queue_health`` (the figures) and the catalog (constraints, indexes, the Alembic revision, the
pg_cron job). Every problem is a :class:`Finding`: one line saying what is wrong and one saying what to do.

Severity and exit code go together, so a CI gate and a JSON consumer read the same answer:

- ``ok`` / 0: nothing found;
- ``warning`` / 1: the database could be checked and something needs attention;
- ``error`` / 2: cannot check (no URL, server unreachable, no taskdb objects, not upgraded to 0005_hygiene,
  or a check failed with a database error), so nothing can be vouched for.

The queries are in ``sql/doctor.sql``. :func:`diagnose` needs an AUTOCOMMIT connection (a failed query must
not abort the checks after it), such as ``taskdb.cli.common.connection`` gives.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from taskdb import api, cron, cron_schedule, version_table
from taskdb.config import redact
from taskdb.db import is_autocommit, read_only_transaction, rows, scalar
from taskdb.errors import TaskdbError
from taskdb.sql import queries

Severity = Literal["warning", "error"]
WARNING: Severity = "warning"
ERROR: Severity = "error"

HYGIENE_REVISION = "0005_hygiene"  # queue_health, the settings and the cleanup arrive here
CRON_REVISION = "0006_cron"  # schedules the cleanup job and records it in taskdb_cron_jobs

# The constraints DESIGN.md makes public; a missing one lets the bad rows they forbid back in.
CONSTRAINTS = (
    "tasks_status_valid",
    "tasks_attempts_nonnegative",
    "tasks_legacy_reason_known",
    "tasks_healthy_has_owner_and_run_type",
    "tasks_flagged_not_queued",
    "tasks_user_id_fkey",
)

# A seconds schedule ('5 seconds') doubled would call a job late after a few seconds of scheduler jitter.
MIN_LATE_AFTER_SECONDS = 60.0

# What to do, for the findings the alert rules (monitoring/prometheus/taskdb-alerts.yml) also raise: a finding
# fills in the database's figures ({name}); an alert's description repeats the text with <name> in their place
# (tests/monitoring/test_alert_rules.py holds the two equal).
FIX_CONNECTION = "pass --url or set TASKDB_DATABASE_URL / DATABASE_URL to a reachable database"
FIX_STALE_QUEUED = (
    "SELECT * FROM stale_queued_tasks shows them and when the cleanup cancels them (queued_ttl {queued_ttl}); "
    "check the workers of their run type, and that the cleanup runs (`taskdb cleanup --dry-run`)"
)
FIX_FLAGGED_QUEUED = (
    "UPDATE tasks SET status = 'Cancelled' WHERE legacy_reason IS NOT NULL AND status = 'Queued'; then make sure "
    "constraint tasks_flagged_not_queued exists and is valid"
)
FIX_CLEANUP_LATE = (
    "in database {cron_database}: SELECT status, return_message, start_time FROM cron.job_run_details WHERE jobid = "
    "{jobid} ORDER BY runid DESC LIMIT 5; check that pg_cron's scheduler runs and can connect (cron.host, .pgpass); "
    "meanwhile `taskdb cleanup`"
)
FIX_CLEANUP_NOT_INSTALLED = "`taskdb cron install`, or run `taskdb cleanup` on a schedule of your own"


def late_after(every: float) -> float:
    """Seconds without a successful run after which a job that runs every ``every`` seconds is late: twice its
    schedule, at least :data:`MIN_LATE_AFTER_SECONDS`. The one rule: the cleanup_job check judges by it, and
    `taskdb metrics` reports it (taskdb_cleanup_late_after_seconds, which TaskdbCleanupLate compares with)."""
    return max(2 * every, MIN_LATE_AFTER_SECONDS)


SQL = queries("doctor")

# How long a check waits for a lock (e.g. behind an upgrade's ACCESS EXCLUSIVE) before it gives up.
LOCK_TIMEOUT_MS = 5000

CHECK_CONNECTION = "connection"
CHECK_SCHEMA = "schema"
CHECK_REVISION = "revision"
CHECK_CONSTRAINTS = "constraints"
CHECK_INDEXES = "indexes"
CHECK_FLAGGED_QUEUED = "flagged_queued"
CHECK_STALE_QUEUED = "stale_queued"
CHECK_CLEANUP_JOB = "cleanup_job"


@dataclass(frozen=True)
class Finding:
    check: str
    severity: Severity
    message: str  # what is wrong
    fix: str  # what to do


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # every check that ran, in order
    database: str | None = None
    revision: str | None = None
    head: str | None = None
    queue_health: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # context that is no problem (e.g. which source was read)

    @property
    def status(self) -> Literal["ok", "warning", "error"]:
        if any(f.severity == ERROR for f in self.findings):
            return "error"
        return "warning" if self.findings else "ok"

    @property
    def exit_code(self) -> int:
        return {"ok": 0, "warning": 1, "error": 2}[self.status]

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "findings": [asdict(f) for f in self.findings],
            "checked": list(self.checked),
            "database": self.database,
            "revision": self.revision,
            "head": self.head,
            "queue_health": dict(self.queue_health),
            "notes": list(self.notes),
        }


def cannot_connect(reason: str) -> Report:
    """The report when there is no database to look at (no URL, unreachable): status error, exit 2.
    ``reason`` must already be redacted."""
    return Report(
        findings=[
            Finding(
                CHECK_CONNECTION,
                ERROR,
                f"cannot check: {reason}",
                FIX_CONNECTION,
            )
        ],
        checked=[CHECK_CONNECTION],
    )


def diagnose(conn: Connection, *, lock_timeout_ms: int = LOCK_TIMEOUT_MS, versions: str | None = None) -> Report:
    """Run every check that the database's state allows; never writes.

    A health check must answer, not queue behind an upgrade's DDL: each check runs in a READ ONLY transaction
    with ``SET LOCAL lock_timeout`` = ``lock_timeout_ms``, and a check that times out is "cannot check".
    taskdb's revision is read from ``versions`` (default: the configured version table, taskdb.version_table).
    """
    if not is_autocommit(conn):
        raise RuntimeError("taskdb.doctor.diagnose needs an AUTOCOMMIT connection")
    versions = version_table.validate(versions, "versions") if versions else version_table.configured()
    report = Report()
    checks = _Checks(conn, report, lock_timeout_ms, versions)
    # The schema check decides what else can run: on a database without the hygiene objects the queue
    # checks would only fail, so the report says "cannot check" and why (with the revision, if any).
    if not checks.run(CHECK_SCHEMA, checks.schema):
        if checks.objects.get("has_version_table"):
            checks.run(CHECK_REVISION, checks.revision)
        return report
    checks.run(CHECK_REVISION, checks.revision)
    checks.run(CHECK_CONSTRAINTS, checks.constraints)
    checks.run(CHECK_INDEXES, checks.indexes)
    checks.run(CHECK_FLAGGED_QUEUED, checks.flagged_queued)
    checks.run(CHECK_STALE_QUEUED, checks.stale_queued)
    checks.run(CHECK_CLEANUP_JOB, checks.cleanup_job)
    return report


class _Checks:
    """The checks, sharing one connection and what earlier checks learnt (objects, settings)."""

    def __init__(self, conn: Connection, report: Report, lock_timeout_ms: int, versions: str) -> None:
        self.conn, self.report, self.lock_timeout_ms, self.versions = conn, report, lock_timeout_ms, versions
        self.objects: dict[str, Any] = {}
        self.url = conn.engine.url.render_as_string(hide_password=False)  # only to redact error text

    def run(self, name: str, check: Callable[[], list[Finding]]) -> bool:
        """Run one check; True when it ran and found nothing that stops the others."""
        self.report.checked.append(name)
        try:
            # each check in a short READ ONLY transaction of its own, waiting for no lock longer than the limit
            with read_only_transaction(self.conn, lock_timeout_ms=self.lock_timeout_ms):
                found = check()
        except DBAPIError as exc:  # e.g. a role without SELECT on a view: this check cannot vouch for anything
            reason = redact(str(exc.orig or exc).strip().splitlines()[0], self.url)
            found = [
                Finding(
                    name,
                    ERROR,
                    f"cannot run the {name} check: {reason}",
                    "run doctor as a role that may read taskdb's objects (e.g. one granted "
                    "taskdb_monitor), or fix the error above",
                )
            ]
        self.report.findings.extend(found)
        return not any(f.severity == ERROR for f in found)

    def sql(self, name: str) -> str:
        """A query of sql/doctor.sql with taskdb's version table in it (a validated plain identifier)."""
        return SQL[name].replace("{{version_table}}", self.versions)

    # -- schema and revision -------------------------------------------------------------------------

    def schema(self) -> list[Finding]:
        self.objects = rows(self.conn, self.sql("objects"))[0]
        self.report.database = self.objects["database"]
        if not self.objects["has_tasks"] and not self.objects["has_version_table"]:
            return [
                Finding(
                    CHECK_SCHEMA,
                    ERROR,
                    f"cannot check: database {self.objects['database']} has no taskdb objects "
                    f"(no tasks table, no {self.versions})",
                    "point --url at the application's database, or install taskdb there with `taskdb upgrade`",
                )
            ]
        if not self.objects["has_version_table"]:
            return [
                Finding(
                    CHECK_SCHEMA,
                    ERROR,
                    "cannot check: tasks exists but taskdb has never upgraded this database",
                    "`taskdb plan` to see what the upgrade will do, then `taskdb upgrade`",
                )
            ]
        if not (self.objects["has_queue_health"] and self.objects["has_settings"]):
            return [
                Finding(
                    CHECK_SCHEMA,
                    ERROR,
                    f"cannot check the queue: the database is not upgraded to {HYGIENE_REVISION} "
                    "(no queue_health / task_hygiene_settings)",
                    "`taskdb plan`, then `taskdb upgrade`",
                )
            ]
        return []

    def revision(self) -> list[Finding]:
        versions = [r["version_num"] for r in rows(self.conn, self.sql("revisions"))]
        script = ScriptDirectory.from_config(api.alembic_config(None))  # the revision files; no database
        head = script.get_current_head()
        self.report.head = head
        self.report.revision = ", ".join(versions) or None
        if versions == [head]:
            return []
        if len(versions) != 1:
            return [
                Finding(
                    CHECK_REVISION,
                    WARNING,
                    f"{self.versions} holds {len(versions)} revisions "
                    f"({self.report.revision or 'none'}), expected one; head is {head}",
                    f"inspect {self.versions} by hand (`taskdb current`), then `taskdb upgrade`",
                )
            ]
        try:
            known = script.get_revision(versions[0]) is not None
        except CommandError:
            known = False
        if not known:
            return [
                Finding(
                    CHECK_REVISION,
                    WARNING,
                    f"database revision {versions[0]} is unknown to this taskdb (head {head}): a newer "
                    f"taskdb, or another Alembic project, wrote {self.versions}",
                    "run doctor from the taskdb version that upgraded this database",
                )
            ]
        behind = len(list(script.iterate_revisions(head, versions[0])))
        return [
            Finding(
                CHECK_REVISION,
                WARNING,
                f"database revision {versions[0]} is {behind} behind head {head}",
                "`taskdb plan` to review, then `taskdb upgrade`",
            )
        ]

    # -- the catalog of tasks --------------------------------------------------------------------------

    def constraints(self) -> list[Finding]:
        found = {r["name"]: r["validated"] for r in rows(self.conn, SQL["constraints"])}
        out = [
            Finding(
                CHECK_CONSTRAINTS,
                WARNING,
                f"constraint {name} on tasks is NOT VALID: rows written before it was added are unchecked",
                f"ALTER TABLE tasks VALIDATE CONSTRAINT {name}; (SHARE UPDATE EXCLUSIVE: reads and writes go "
                "on; if it fails, fix or flag the rows it names)",
            )
            for name, validated in sorted(found.items())
            if not validated
        ]
        out += [
            Finding(
                CHECK_CONSTRAINTS,
                WARNING,
                f"constraint {name} on tasks is missing: the rows it forbids can be written again",
                f"re-add it as in migrations/versions/0004_constraints.py: ALTER TABLE tasks ADD CONSTRAINT {name} "
                "... NOT VALID, then VALIDATE CONSTRAINT",
            )
            for name in CONSTRAINTS
            if name not in found
        ]
        return out

    def indexes(self) -> list[Finding]:
        return [
            Finding(
                CHECK_INDEXES,
                WARNING,
                f"index {r['name']} on tasks is INVALID (a failed CREATE INDEX CONCURRENTLY or REINDEX): "
                "writes maintain it, queries cannot use it",
                f"REINDEX INDEX CONCURRENTLY {r['name']}; or DROP INDEX CONCURRENTLY {r['name']}; then "
                f"{_concurrently(r['definition'])}; (a UNIQUE index fails again until duplicates are gone)",
            )
            for r in rows(self.conn, SQL["invalid_indexes"])
        ]

    # -- the queue ---------------------------------------------------------------------------------------

    def flagged_queued(self) -> list[Finding]:
        found = rows(self.conn, SQL["flagged_queued"])[0]
        if not found["n"]:
            return []
        sample = ", ".join(found["sample_ids"] or [])
        return [
            Finding(
                CHECK_FLAGGED_QUEUED,
                WARNING,
                f"{found['n']} flagged task(s) (legacy_reason set) are Queued, which tasks_flagged_not_queued "
                f"forbids (e.g. {sample}): the claim skips them, nothing will ever run them",
                FIX_FLAGGED_QUEUED,
            )
        ]

    def stale_queued(self) -> list[Finding]:
        health = rows(self.conn, SQL["queue_health"])[0]["health"]
        self.report.queue_health = dict(health)
        settings = rows(self.conn, SQL["settings"])[0]
        # the count is the view stale_queued_tasks (one predicate); the age is NULL for a created_at of
        # -infinity, which the view counts
        if not health.get("stale_count"):
            return []
        age = health.get("oldest_queued_age_seconds")
        waited = duration(float(age)) if age is not None else "since created_at -infinity"
        return [
            Finding(
                CHECK_STALE_QUEUED,
                WARNING,
                f"{health.get('stale_count')} Queued task(s) older than stale_after "
                f"({settings['stale_after']}); the oldest has waited {waited}",
                FIX_STALE_QUEUED.format(queued_ttl=settings["queued_ttl"]),
            )
        ]

    # -- the pg_cron cleanup job ---------------------------------------------------------------------------

    def cleanup_job(self) -> list[Finding]:
        if not self.objects.get("has_cron_record"):
            return [
                Finding(
                    CHECK_CLEANUP_JOB,
                    WARNING,
                    f"the pg_cron cleanup job is not installed: the database has not had {CRON_REVISION}",
                    "`taskdb upgrade` (it schedules the job where pg_cron is available)",
                )
            ]
        record = rows(self.conn, SQL["cleanup_record"])
        if not record:
            return self._no_job_recorded()
        job = record[0]
        state, unreadable = self._cron_job_state(job)
        where = f"in database {job['cron_database']}"
        if state is None and unreadable is None:
            # pg_cron's row-level security shows a role only its own jobs: say whose view this is.
            visible = (
                ""
                if self.objects["superuser"]
                else (f" (as role {self.objects['role']} sees it: pg_cron shows each role only its own jobs)")
            )
            return [
                Finding(
                    CHECK_CLEANUP_JOB,
                    WARNING,
                    f"the pg_cron job {job['jobname']} is missing from cron.job {where}{visible}: nothing "
                    "cancels stale Queued tasks",
                    "`taskdb cron install` schedules it again; meanwhile `taskdb cleanup`",
                )
            ]
        if state is not None and not state["active"]:
            return [
                Finding(
                    CHECK_CLEANUP_JOB,
                    WARNING,
                    f"the pg_cron job {job['jobname']} (jobid {state['jobid']}) is inactive {where}: nothing "
                    "cancels stale Queued tasks",
                    f"{where}: SELECT cron.alter_job({state['jobid']}, active => true); meanwhile `taskdb cleanup`",
                )
            ]
        return self._late(job, state, unreadable)

    def _no_job_recorded(self) -> list[Finding]:
        readiness = cron.detect(self.conn)
        if not readiness.ready:
            what = "not available" if readiness.missing else f"not usable by role {readiness.user}"
            return [
                Finding(
                    CHECK_CLEANUP_JOB,
                    WARNING,
                    f"pg_cron is {what} ({readiness.problem}), so no job cancels stale Queued tasks",
                    "run `taskdb cleanup` on a schedule of your own (system cron, a Kubernetes CronJob), or "
                    "enable pg_cron (README: Enabling pg_cron) and then `taskdb cron install`",
                )
            ]
        return [
            Finding(
                CHECK_CLEANUP_JOB,
                WARNING,
                f"pg_cron is ready in database {readiness.cron_database} but the cleanup job is not "
                "installed (upgraded with TASKDB_CRON=skip, pg_cron came later, or `taskdb cron remove`)",
                FIX_CLEANUP_NOT_INSTALLED,
            )
        ]

    def _cron_job_state(self, job: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """(the job's cron.job row with its last runs, None) when the cron database can be read; (None, None)
        when it can and the job is not there; (None, why) when it cannot be read."""
        try:
            with cron.cron_connection(self.conn, str(job["cron_database"])) as cconn:
                if scalar(cconn, "SELECT to_regclass('cron.job') IS NULL"):
                    return None, None  # pg_cron was dropped: its jobs went with it
                found = rows(cconn, SQL["cron_job"], {"jobname": job["jobname"], "database": job["run_database"]})
                return (found[0] if found else None), None
        except (TaskdbError, DBAPIError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            return None, redact(reason, self.url)

    def _late(self, job: Mapping[str, Any], state: Mapping[str, Any] | None, unreadable: str | None) -> list[Finding]:
        schedule = str(state["schedule"] if state else job["schedule"])
        every = cron_schedule.interval(schedule)
        if every is None:
            self.report.notes.append(f"cleanup job schedule {schedule!r} not understood: lateness not checked")
            return []
        # The last success: cron.job_run_details where readable; the cleanup's own task_hygiene_runs rows
        # too (they exist even when cron.log_run is off). A (re)install restarts the clock.
        actor = f"pg_cron job {job['jobname']}"
        own = rows(self.conn, SQL["cleanup_runs"], {"actor": actor})[0]
        agos = [
            a for a in ((state or {}).get("last_success_seconds_ago"), own["last_success_seconds_ago"]) if a is not None
        ]
        last_success = min(agos) if agos else None
        installed_ago = float(job["installed_seconds_ago"])
        quiet_for = installed_ago if last_success is None else min(installed_ago, last_success)
        limit = late_after(every)
        if unreadable:
            self.report.notes.append(
                f"cron.job in database {job['cron_database']} not readable ({unreadable}); "
                "the job's runs were read from task_hygiene_runs"
            )
        if quiet_for <= limit:
            return []
        seen = (
            f"none since it was installed {duration(installed_ago)} ago"
            if quiet_for == installed_ago
            else f"the last {duration(last_success or 0)} ago"
        )
        last = ""
        if state and state.get("last_status") and state["last_status"] != "succeeded":
            message = " ".join(str(state.get("last_message") or "").split())[:200]
            last = f"; its last run {state['last_status']}: {message}"
        elif unreadable:
            last = f"; cron.job could not be read ({unreadable})"
        jobid = state["jobid"] if state else job["jobid"]
        return [
            Finding(
                CHECK_CLEANUP_JOB,
                WARNING,
                f"the pg_cron job {job['jobname']} (schedule '{schedule}', every {duration(every)}) is late: "
                f"no successful run within {duration(limit)} ({seen}){last}",
                FIX_CLEANUP_LATE.format(cron_database=job["cron_database"], jobid=jobid),
            )
        ]


def _concurrently(definition: str) -> str:
    """pg_get_indexdef's CREATE [UNIQUE] INDEX ... as CREATE [UNIQUE] INDEX CONCURRENTLY ..."""
    return re.sub(r"^CREATE (UNIQUE )?INDEX ", r"CREATE \1INDEX CONCURRENTLY ", definition, count=1)


# -- schedules and durations ---------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """61 -> '1m 1s', 93784 -> '1d 2h 3m': how long, for people."""
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{days}d" if days else "",
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs and not days else "",
    ]
    return " ".join(p for p in parts if p) or "0s"
