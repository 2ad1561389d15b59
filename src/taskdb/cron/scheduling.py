"""Scheduling: install taskdb's two jobs where pg_cron keeps them, and record them here.

:func:`prepare` decides before anything changes (``TASKDB_CRON``, readiness, the validated schedule);
:func:`schedule_jobs` creates pg_cron if absent and schedules both jobs in the cron database, in one
transaction: with ``cron.schedule`` when that is this database, else with ``cron.schedule_in_database`` over a
connection there (same URL); :func:`record` writes what is installed to ``taskdb_cron_jobs``;
:func:`warn_if_missing` is the one warning of an ``auto`` upgrade without the job. Revision 0006 composes them;
``taskdb cron install`` / ``sync`` are :func:`install` / :func:`sync`.

Job names are unique per user in ``cron.job`` (not per database), and pg_cron 1.4's upsert by name keeps the
*old* database of an existing job (1.6 moves it). So the plain name is used when it is free or already is this
database's job; when another database's job holds it, the job is named ``taskdb_cancel_stale_queued:<db>``
(:func:`choose_name`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from taskdb.catalog import record_owned, table_exists
from taskdb.cron.config import (
    CLEANUP_JOB,
    CRON_REVISION,
    NAMES_LOCK_KEY,
    PURGE_JOB,
    RECORD_TABLE,
    SCHEDULE_SETTING,
    SETTINGS_TABLE,
    CronJobConfig,
    CronJobConflict,
    CronNotUpgraded,
    cleanup_command,
    cron_connection,
    cron_mode,
    cron_sql,
    extension_owner_name,
    jobs_named,
    log,
    qualified_name,
    queue_schema,
    recorded_jobs,
)
from taskdb.cron.purge import purge_job
from taskdb.cron.readiness import (
    CronReadiness,
    detect,
    extension_refused,
    how_to_enable,
    parse_version,
    unavailable,
    upgrade_warning,
)
from taskdb.db import pinned_schema, require_primary, scalar, search_path_sql, transaction
from taskdb.errors import TaskdbError
from taskdb.failpoints import failpoint


@dataclass(frozen=True)
class CronPlan:
    """What an upgrade (or ``taskdb cron install``) will do about pg_cron, decided before anything changes."""

    mode: str
    readiness: CronReadiness | None  # None when skipped
    schedule: str | None  # the cleanup's schedule, validated
    # who asks for pg_cron under mode require: None for TASKDB_CRON=require (an upgrade), else the command
    requested_by: str | None = None
    schedule_source: str | None = SCHEDULE_SETTING  # where the schedule comes from (None: the caller's argument)

    @property
    def install(self) -> bool:
        return self.mode != "skip" and self.readiness is not None and self.readiness.ready


@dataclass(frozen=True)
class InstalledJob:
    """A row of taskdb_cron_jobs: one taskdb job as pg_cron holds it."""

    job: str  # taskdb's name for it: CLEANUP_JOB or PURGE_JOB
    jobname: str  # cron.job.jobname
    jobid: int
    cron_database: str
    run_database: str
    schedule: str
    command: str
    changed: bool = False  # whether this install wrote to cron.job
    was: str | None = None  # cron.job's schedule before this install changed it (None: new or unchanged)


@dataclass(frozen=True)
class Installation:
    """What :func:`schedule_jobs` did: the jobs, whether it created pg_cron, or why it installed nothing."""

    jobs: list[InstalledJob]
    created_extension: bool = False
    skipped: str | None = None  # why pg_cron turned out unusable (CREATE EXTENSION refused), with the remedy


def stored_schedule(conn: Connection) -> str:
    return str(scalar(conn, f"SELECT cleanup_schedule FROM {SETTINGS_TABLE}"))


def prepare(
    conn: Connection, mode: str | None = None, *, schedule: str | None = None, requested_by: str | None = None
) -> CronPlan:
    """Read-only: mode, readiness and the validated schedule (``schedule``, else the stored cleanup_schedule).
    Raises (nothing changed) on a bad TASKDB_CRON, a bad schedule, or ``require`` without a usable pg_cron."""
    mode = mode or cron_mode()
    if mode == "skip":
        return CronPlan(mode, None, None, requested_by)
    source = SCHEDULE_SETTING if schedule is None else None
    if schedule is not None:  # the caller's schedule: its syntax first, before anything is looked at
        schedule = " ".join(schedule.split())
        CronJobConfig(CLEANUP_JOB, schedule, cleanup_command(CLEANUP_JOB, "public"), "-").validate(None, where=None)
    readiness = detect(conn)
    schedule = stored_schedule(conn) if schedule is None else schedule
    if not readiness.ready:
        if mode == "require":
            raise unavailable(requested_by, how_to_enable(str(readiness.problem), readiness.missing, requested_by))
        return CronPlan(mode, readiness, schedule, requested_by, source)
    command = cleanup_command(CLEANUP_JOB, queue_schema(conn))
    CronJobConfig(CLEANUP_JOB, schedule, command, readiness.current_database).validate(readiness.version, where=source)
    return CronPlan(mode, readiness, schedule, requested_by, source)


def warn_if_missing(plan: CronPlan, installation: Installation) -> None:
    """The one warning of an ``auto`` upgrade that goes on without the job."""
    if plan.mode != "auto" or plan.readiness is None:
        return
    if not plan.readiness.ready:
        message = how_to_enable(str(plan.readiness.problem), plan.readiness.missing)
    elif installation.skipped:
        message = installation.skipped
    else:
        return
    log.warning("%s", upgrade_warning(message))


def choose_name(cconn: Connection, base: str, database: str) -> str:
    """``base`` if it is free or already this database's job; else ``base:database`` (another database's
    job holds the plain name: pg_cron 1.4 would keep running an upserted job in *that* database)."""
    qualified = qualified_name(base, database)
    existing = jobs_named(cconn, [base, qualified])
    for name in (base, qualified):
        if name in existing and existing[name]["database"] == database:
            return name
    if base not in existing:
        return base
    if qualified not in existing:
        return qualified
    raise CronJobConflict(
        f"pg_cron jobs {base!r} and {qualified!r} both exist for other databases "
        f"({existing[base]['database']!r}, {existing[qualified]['database']!r}); unschedule the stale one"
    )


def _ensure_job(cconn: Connection, job: CronJobConfig, kind: str, cron_database: str) -> InstalledJob:
    """Schedule ``job`` unless cron.job already holds exactly it (then nothing is written)."""
    existing = jobs_named(cconn, [job.name]).get(job.name)
    changed = existing is None or (existing["schedule"], existing["command"]) != (job.schedule, job.command)
    if changed:
        if job.database == cron_database:
            params = {"n": job.name, "s": job.schedule, "c": job.command}
            jobid = scalar(cconn, "SELECT cron.schedule(:n, :s, :c)", params)
        else:
            jobid = scalar(
                cconn,
                "SELECT cron.schedule_in_database(:n, :s, :c, database => :d)",
                {"n": job.name, "s": job.schedule, "c": job.command, "d": job.database},
            )
        stored = jobs_named(cconn, [job.name]).get(job.name)
        # pg_cron 1.4's upsert keeps an existing job's database: never leave a job running somewhere else.
        if stored is None or stored["jobid"] != jobid or stored["database"] != job.database:
            raise CronJobConflict(
                f"pg_cron stored job {job.name!r} for database {stored and stored['database']!r}, "
                f"not {job.database!r}; nothing was changed"
            )
    else:
        assert existing is not None  # unchanged means found
        jobid = existing["jobid"]
    was = existing["schedule"] if changed and existing is not None and existing["schedule"] != job.schedule else None
    return InstalledJob(
        kind, job.name, int(jobid), cron_database, job.database, job.schedule, job.command, changed, was
    )


def schedule_jobs(conn: Connection, plan: CronPlan) -> Installation:
    """In the cron database, in one transaction: create pg_cron if absent, schedule (or update) both jobs.

    Nothing of the target database is touched, so a failure leaves everything as it was. A refused
    CREATE EXTENSION is :class:`CronUnavailable` under ``require``, an :class:`Installation` with
    ``skipped`` under ``auto``.
    """
    if not plan.install or plan.readiness is None or plan.schedule is None:
        return Installation([])
    readiness = plan.readiness
    cron_db, current = str(readiness.cron_database), readiness.current_database
    try:
        return _schedule_jobs(conn, plan.schedule, cron_db, current, plan.schedule_source)
    except _ExtensionRefused as refused:
        problem, missing = extension_refused(cron_db, str(refused), plan.requested_by)
        message = how_to_enable(problem, missing, plan.requested_by)
        if plan.mode == "require":
            raise unavailable(plan.requested_by, message) from None
        return Installation([], skipped=message)


class _ExtensionRefused(Exception):
    """CREATE EXTENSION pg_cron failed (privilege, files, library): pg_cron is not usable here."""


def _schedule_jobs(
    conn: Connection, schedule: str, cron_db: str, current: str, where: str | None = SCHEDULE_SETTING
) -> Installation:
    with cron_connection(conn, cron_db) as cconn, transaction(cconn):
        created = False
        if scalar(cconn, "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'") is None:
            try:
                # where the session's own search_path puts it (as before taskdb pinned its transactions to the
                # queue's schema): pg_cron serves the whole database, and must not go with that schema
                cconn.exec_driver_sql("SET LOCAL search_path TO DEFAULT")
                cconn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_cron")
                if pinned_schema(cconn) is not None:
                    cconn.exec_driver_sql(search_path_sql(str(pinned_schema(cconn))))
            except DBAPIError as exc:
                raise _ExtensionRefused(str(exc.orig).strip().splitlines()[0]) from None
            created = True
            if cconn is conn:  # pg_cron in this very database: taskdb's ownership commits with the extension
                record_owned(cconn, "extension", extension_owner_name(cron_db), CRON_REVISION)
        cconn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": NAMES_LOCK_KEY})
        version = parse_version(scalar(cconn, "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'"))
        cleanup_name = choose_name(cconn, CLEANUP_JOB, current)
        cleanup = CronJobConfig(cleanup_name, schedule, cleanup_command(cleanup_name, queue_schema(conn)), current)
        purge = purge_job(cron_db, choose_name(cconn, PURGE_JOB, cron_db))
        cleanup.validate(version, where)
        purge.validate(version)
        jobs = [_ensure_job(cconn, cleanup, CLEANUP_JOB, cron_db), _ensure_job(cconn, purge, PURGE_JOB, cron_db)]
    failpoint("cron.after_schedule")  # committed in the cron database, not yet recorded in the target
    for job in jobs:
        if job.changed:
            log.info(
                "pg_cron job %s scheduled (%s) in %s, runs in %s", job.jobname, job.schedule, cron_db, job.run_database
            )
    return Installation(jobs, created)


def record(conn: Connection, installation: Installation, revision: str) -> None:
    """Write what is installed to taskdb_cron_jobs (unchanged rows are not rewritten) and, when this upgrade
    created pg_cron, that taskdb owns it. Call inside the target database's transaction."""
    for job in installation.jobs:
        params = asdict(job)
        params.pop("changed")
        params.pop("was")
        conn.execute(sa.text(cron_sql("record_job")), params)
    if installation.created_extension and installation.jobs:
        record_owned(conn, "extension", extension_owner_name(installation.jobs[0].cron_database), revision)


@dataclass(frozen=True)
class InstallResult:
    """What :func:`install` / :func:`sync` did: the jobs as installed now, and what changed."""

    database: str
    schedule: str  # the cleanup's schedule, now in task_hygiene_settings and in cron.job
    jobs: list[InstalledJob]
    created_extension: bool = False
    previous_schedule: str | None = None  # cleanup_schedule before install(schedule=...) changed it

    @property
    def changed(self) -> bool:
        """Whether anything was written: a job (re)scheduled, pg_cron created, or the schedule changed."""
        return self.created_extension or self.previous_schedule is not None or any(j.changed for j in self.jobs)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["changed"] = self.changed
        return out


def _require_upgraded(conn: Connection, requested_by: str) -> None:
    missing = [table for table in (SETTINGS_TABLE, RECORD_TABLE) if not table_exists(conn, table)]
    if missing:
        raise CronNotUpgraded(
            f"{requested_by}: this database has not had revision {CRON_REVISION} (no {', '.join(missing)}): run "
            "`taskdb upgrade`, which installs the pg_cron jobs where pg_cron is available. Nothing was changed."
        )


def install(
    conn: Connection,
    *,
    schedule: str | None = None,
    actor: str | None = None,
    requested_by: str = "taskdb cron install",
    revision: str = CRON_REVISION,
) -> InstallResult:
    """``taskdb cron install``: what revision 0006 does (prepare + schedule_jobs + record), asked for explicitly:
    pg_cron must be usable whatever TASKDB_CRON says (else :class:`CronNotInstallable`, nothing changed).
    Idempotent: a job already as wanted is not rewritten (same jobid, same row).

    ``schedule`` replaces ``task_hygiene_settings.cleanup_schedule``: validated first (syntax, then against the
    server's pg_cron), scheduled in the cron database, then written to the settings together with the record
    (one transaction of the target database), and logged with ``actor``. ``conn`` is AUTOCOMMIT."""
    require_primary(conn, requested_by)
    _require_upgraded(conn, requested_by)
    plan = prepare(conn, "require", schedule=schedule, requested_by=requested_by)
    assert plan.schedule is not None and plan.readiness is not None  # require: ready, or raised
    before = stored_schedule(conn)
    # The cron database first, in one transaction: if it fails, nothing anywhere has changed.
    installation = schedule_jobs(conn, plan)
    new_schedule = plan.schedule != before
    with transaction(conn):
        if new_schedule:
            conn.execute(sa.text(f"UPDATE {SETTINGS_TABLE} SET cleanup_schedule = :s"), {"s": plan.schedule})
        record(conn, installation, revision)
    if new_schedule:
        log.info(
            "%s changed from %r to %r by %s (role %s); taskdb_cron_jobs.installed_at records when the job took it",
            SCHEDULE_SETTING,
            before,
            plan.schedule,
            actor or requested_by,
            plan.readiness.user,
        )
    return InstallResult(
        plan.readiness.current_database,
        plan.schedule,
        installation.jobs,
        installation.created_extension,
        before if new_schedule else None,
    )


class CronNotInstalled(TaskdbError):
    """No taskdb pg_cron job is installed for this database: nothing to sync."""


def sync(conn: Connection, *, actor: str | None = None, requested_by: str = "taskdb cron sync") -> InstallResult:
    """``taskdb cron sync``: make the installed jobs match ``task_hygiene_settings.cleanup_schedule`` again (a
    DBA's UPDATE takes effect; the jobid is kept). The same path as :func:`install`, but only where the cleanup
    job is recorded as installed: a job removed on purpose is not brought back (:class:`CronNotInstalled`)."""
    require_primary(conn, requested_by)
    _require_upgraded(conn, requested_by)
    if not any(job["job"] == CLEANUP_JOB for job in recorded_jobs(conn)):
        database = scalar(conn, "SELECT current_database()")
        raise CronNotInstalled(
            f"{requested_by}: no taskdb pg_cron job is installed for database {database}, so there is nothing to "
            f"sync; `taskdb cron install` installs it with {SCHEDULE_SETTING} {stored_schedule(conn)!r}"
        )
    return install(conn, actor=actor, requested_by=requested_by)
