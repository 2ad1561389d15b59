"""pg_cron: is it there, which jobs taskdb schedules, and installing or removing them.

Two jobs, both named by taskdb (pg_cron's ``cron.job.jobname``):

- ``taskdb_cancel_stale_queued`` runs ``taskdb_cancel_stale_queued_all`` in the *target* database on
  ``task_hygiene_settings.cleanup_schedule`` (cron syntax, UTC);
- ``taskdb_purge_cron_history`` runs in the *cron* database and deletes ``cron.job_run_details`` rows of
  taskdb's jobs (and only those) older than 14 days.

pg_cron keeps its jobs in one database per server (``cron.database_name``). When that is the target
database the cleanup is scheduled with ``cron.schedule``; otherwise taskdb connects to the cron database with
the same URL (credentials, driver) and uses ``cron.schedule_in_database`` (pg_cron >= 1.4). What was installed
is recorded in the target database's ``taskdb_cron_jobs``, so that ``queue_health`` can say so even when
``cron.job`` lives elsewhere, and so that a downgrade knows where to look.

Job names are unique per user in ``cron.job`` (not per database), and pg_cron 1.4's upsert by name keeps the
*old* database of an existing job (1.6 moves it). So the plain name is used when it is free or already is this
database's job; when another database's job holds it, the job is named ``taskdb_cancel_stale_queued:<db>``.

``TASKDB_CRON``: ``auto`` (default) installs where pg_cron can be used and otherwise upgrades without the job,
with one warning; ``require`` fails before changing anything, saying how to enable pg_cron; ``skip`` never
installs. The module has no opinion on Alembic: revision 0006 composes :func:`prepare`, :func:`schedule_jobs`,
:func:`record` and :func:`unschedule_jobs`; ``taskdb plan`` can print :class:`CronReadiness`.

``taskdb cron install|sync|remove|status`` use the same functions: :func:`install` (prepare + schedule_jobs +
record, as the upgrade; optionally a new ``cleanup_schedule`` first), :func:`sync` (the same, for an installed
job only), :func:`remove` (the downgrade's :func:`unschedule_jobs`, then the record is cleared) and
:func:`status` (the record, cron.job and the last runs in cron.job_run_details, wherever they live). These
commands ask for pg_cron explicitly: they act as ``require`` whatever ``TASKDB_CRON`` says.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from taskdb.catalog import forget_owned, owned, record_owned, table_exists
from taskdb.config import redact
from taskdb.cron_schedule import SECONDS_SINCE, schedule_problem
from taskdb.db import (
    connect,
    create_engine,
    pinned_schema,
    quote_ident,
    require_primary,
    rows,
    scalar,
    search_path_sql,
    sqlstate,
    transaction,
)
from taskdb.errors import ConfigError, TaskdbError
from taskdb.failpoints import failpoint

log = logging.getLogger("taskdb.cron")

MODE_ENV = "TASKDB_CRON"
MODES = ("auto", "require", "skip")

CLEANUP_JOB = "taskdb_cancel_stale_queued"
PURGE_JOB = "taskdb_purge_cron_history"
PURGE_SCHEDULE = "45 3 * * *"  # daily, UTC, half an hour after the default cleanup
HISTORY_KEPT = "14 days"
RECORD_TABLE = "taskdb_cron_jobs"
SETTINGS_TABLE = "task_hygiene_settings"
SCHEDULE_SETTING = f"{SETTINGS_TABLE}.cleanup_schedule"
APPLICATION_NAME = "taskdb cron"
# The revision that schedules the jobs and records them; `taskdb cron install` records what it creates under it,
# so that this revision's downgrade still undoes it.
CRON_REVISION = "0006_cron"
LAST_RUNS = 5  # runs of each job `taskdb cron status` shows

# pg_cron 1.4 stores jobname as type name: longer names would be silently truncated.
NAME_MAX_BYTES = 63
NAMED_JOBS_SINCE = (1, 3)
SCHEDULE_IN_DATABASE_SINCE = (1, 4)

# A transaction-scoped advisory lock in the cron database ('taskcron' in ASCII): upgrades of two target
# databases on one server choose job names one after the other, never both the same free name.
NAMES_LOCK_KEY = 0x7461736B63726F6E

INSUFFICIENT_PRIVILEGE = "42501"
SCHEDULE_IN_DATABASE = "cron.schedule_in_database(text,text,text,text,text,boolean)"

ENABLE_STEPS = (
    "To enable pg_cron: in postgresql.conf set shared_preload_libraries = 'pg_cron' (keep the libraries already "
    "listed) and cron.database_name = '<the database that holds the jobs>' (default 'postgres'), restart "
    "PostgreSQL, then {rerun}. Managed services: AWS RDS/Aurora: add pg_cron to shared_preload_libraries "
    "in the DB parameter group and reboot; Google Cloud SQL: set the flag cloudsql.enable_pg_cron=on; "
    "Azure Database for PostgreSQL: add PG_CRON to the azure.extensions and shared_preload_libraries server "
    "parameters; Supabase: Dashboard -> Database -> Extensions -> pg_cron."
)
WITHOUT_THE_JOB = f"Or set {MODE_ENV}=skip to upgrade without the job ({MODE_ENV}=auto does so with a warning)."
ENABLE_PG_CRON = ENABLE_STEPS.format(rerun="rerun the upgrade") + " " + WITHOUT_THE_JOB
MEANWHILE = "meanwhile `taskdb cleanup` cancels stale Queued tasks when something runs it"


class CronUnavailable(TaskdbError):
    """pg_cron cannot be used here, and TASKDB_CRON=require asks for it; nothing was changed."""


class CronNotInstallable(CronUnavailable):
    """``taskdb cron install`` / ``sync``: pg_cron cannot be used here (like a missing configuration: exit 2)."""

    exit_code = 2


class CronNotUpgraded(TaskdbError):
    """The database has not had revision 0006_cron: there is no record of taskdb's jobs to keep."""


class CronJobConflict(TaskdbError):
    """pg_cron did not store a taskdb job the way taskdb asked; the transaction was rolled back."""


# -- configuration ----------------------------------------------------------------------------------------


def cron_mode(environ: Mapping[str, str] | None = None) -> str:
    """``TASKDB_CRON``: auto (default), require or skip; anything else is a configuration error."""
    env = os.environ if environ is None else environ
    mode = (env.get(MODE_ENV) or "auto").strip().lower()
    if mode not in MODES:
        raise ConfigError(f"{MODE_ENV}={env.get(MODE_ENV)!r} is not one of: {', '.join(MODES)} (default auto)")
    return mode


@dataclass(frozen=True)
class CronJobConfig:
    """One pg_cron job as taskdb wants it: ``cron.job``'s jobname, schedule, command and database."""

    name: str
    schedule: str
    command: str
    database: str  # where the command runs (cron.job.database)

    def validate(self, version: tuple[int, int] | None = None, where: str | None = SCHEDULE_SETTING) -> None:
        """Reject what pg_cron would reject, before anything is changed; ``version`` is pg_cron's, ``where``
        says where the schedule comes from (the message says to fix it there)."""
        if not self.name or len(self.name.encode()) > NAME_MAX_BYTES:
            raise ConfigError(f"pg_cron job name {self.name!r} must be 1 to {NAME_MAX_BYTES} bytes")
        if not self.command.strip():
            raise ConfigError(f"pg_cron job {self.name}: empty command")
        problem = schedule_problem(self.schedule, version)
        if problem is not None:
            raise ConfigError(f"pg_cron job {self.name}: {problem}" + (f"; fix {where}" if where else ""))


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def cleanup_command(jobname: str, schema: str) -> str:
    """The cleanup job's command: the batched procedure, in the queue's schema (the job's session has its own
    search_path), the actor naming the pg_cron job."""
    return f"CALL {quote_ident(schema)}.taskdb_cancel_stale_queued_all({quote_literal('pg_cron job ' + jobname)})"


def queue_schema(conn: Connection) -> str:
    """The schema of the queue ``conn`` works on (taskdb.target pins it; else where its names resolve)."""
    return pinned_schema(conn) or str(scalar(conn, "SELECT current_schema()"))


def _name_patterns() -> str:
    plain = ", ".join(quote_literal(name) for name in (CLEANUP_JOB, PURGE_JOB))
    qualified = " OR ".join(
        f"j.jobname LIKE {quote_literal(name.replace('_', chr(92) + '_') + ':%')}" for name in (CLEANUP_JOB, PURGE_JOB)
    )
    return f"(j.jobname IN ({plain}) OR {qualified})"


# Deletes history of taskdb's jobs only (found by name in cron.job), older than HISTORY_KEPT by start_time,
# so failed runs without end_time go too. A run that never started has no start_time: it goes once a run
# with a larger runid (runids come from a sequence) started before the cutoff.
PURGE_COMMAND = (
    "DELETE FROM cron.job_run_details d USING cron.job j "
    f"WHERE j.jobid = d.jobid AND {_name_patterns()} "
    f"AND (d.start_time < now() - interval '{HISTORY_KEPT}' "
    "OR (d.start_time IS NULL AND d.runid < (SELECT max(r.runid) FROM cron.job_run_details r "
    f"WHERE r.start_time < now() - interval '{HISTORY_KEPT}')))"
)

# The cleanup jobs of any database (plain or qualified name) as seen from the cron database.
CLEANUP_JOBS_SQL = (
    "SELECT j.jobid, j.jobname::text AS jobname, j.database FROM cron.job j "
    f"WHERE j.jobname = {quote_literal(CLEANUP_JOB)} "
    f"OR j.jobname LIKE {quote_literal(CLEANUP_JOB.replace('_', chr(92) + '_') + ':%')}"
)


def qualified_name(base: str, database: str) -> str:
    """``base:database``, shortened with a hash of the database name when it would pass 63 bytes."""
    name = f"{base}:{database}"
    if len(name.encode()) <= NAME_MAX_BYTES:
        return name
    return f"{base}:{hashlib.sha256(database.encode()).hexdigest()[:16]}"


def purge_job(cron_database: str, jobname: str = PURGE_JOB) -> CronJobConfig:
    return CronJobConfig(jobname, PURGE_SCHEDULE, PURGE_COMMAND, cron_database)


# -- readiness --------------------------------------------------------------------------------------------


def parse_version(text: str | None) -> tuple[int, int] | None:
    """``'1.4-1'`` -> (1, 4); None for None or nonsense."""
    match = re.match(r"^(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass(frozen=True)
class CronReadiness:
    """What taskdb found out about pg_cron, read-only; ``problem`` says why the jobs cannot be installed."""

    current_database: str
    user: str
    superuser: bool
    library_loaded: bool | None  # None: this role may not read shared_preload_libraries
    cron_database: str | None  # cron.database_name
    extension_version: str | None  # installed in the cron database
    available_version: str | None  # what CREATE EXTENSION pg_cron would install
    can_create_extension: bool | None  # None: not needed (installed) or cannot tell before trying
    timezone: str | None  # cron.timezone (pg_cron >= 1.5); schedules are UTC before that
    problem: str | None = None
    notes: tuple[str, ...] = field(default=())
    # True when pg_cron itself is missing (library or extension files), so the fix is to enable it; False
    # when it is there but this role lacks a privilege (the problem names the GRANT)
    missing: bool = False

    @property
    def same_database(self) -> bool:
        return self.cron_database == self.current_database

    @property
    def version(self) -> tuple[int, int] | None:
        return parse_version(self.extension_version or self.available_version)

    @property
    def seconds_schedules(self) -> bool:
        return self.version is not None and self.version >= SECONDS_SINCE

    @property
    def ready(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(same_database=self.same_database, ready=self.ready, seconds_schedules=self.seconds_schedules)
        return out

    def describe(self) -> list[str]:
        """Lines for ``taskdb plan``."""
        if self.ready:
            where = "this database" if self.same_database else f"database {self.cron_database!r} (cron.database_name)"
            state = (
                f"pg_cron {self.extension_version} installed"
                if self.extension_version
                else (f"pg_cron {self.available_version} will be created")
            )
            lines = [f"pg_cron: ready; {state} in {where}; jobs {CLEANUP_JOB}, {PURGE_JOB}"]
        else:
            lines = [f"pg_cron: not usable: {self.problem}"]
        return lines + [f"pg_cron: {note}" for note in self.notes]


def _try(conn: Connection, sql: str, params: Mapping[str, Any] | None = None) -> tuple[Any, str | None]:
    """(value, None), or (None, reason) when this role may not read it. The connection is AUTOCOMMIT."""
    try:
        return scalar(conn, sql, params), None
    except DBAPIError as exc:
        if sqlstate(exc) != INSUFFICIENT_PRIVILEGE:
            raise
        return None, str(getattr(exc, "orig", exc)).strip().splitlines()[0]


@contextmanager
def cron_connection(conn: Connection, database: str) -> Iterator[Connection]:
    """``conn`` itself when it is connected to ``database``; else a new AUTOCOMMIT connection to
    ``database`` with the same URL: credentials, driver, host and query options."""
    if scalar(conn, "SELECT current_database()") == database:
        yield conn
        return
    url = conn.engine.url.set(database=database)
    engine = create_engine(url.render_as_string(hide_password=False), application_name=APPLICATION_NAME)
    try:
        other = connect(engine)  # a failure is one line that never holds the password
        try:
            other = other.execution_options(isolation_level="AUTOCOMMIT")
            yield other
        finally:
            other.close()
    finally:
        engine.dispose()


def detect(conn: Connection) -> CronReadiness:
    """Read-only: is the pg_cron library loaded, which database holds the jobs, is the extension there (or
    can it be created), which version, may this role schedule? Connects to the cron database if it is another."""
    current, user, superuser = conn.execute(
        sa.text("SELECT current_database(), current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
    ).one()
    libraries, denied = _try(conn, "SELECT current_setting('shared_preload_libraries')")
    loaded = (
        None
        if denied
        else "pg_cron" in [lib.strip().strip('"').rsplit("/", 1)[-1] for lib in str(libraries or "").split(",")]
    )
    available = scalar(conn, "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_cron'")
    base = {
        "current_database": current,
        "user": user,
        "superuser": bool(superuser),
        "library_loaded": loaded,
        "cron_database": None,
        "extension_version": None,
        "available_version": available,
        "can_create_extension": None,
        "timezone": None,
    }

    if loaded is False:
        why = "the pg_cron library is not loaded (shared_preload_libraries does not list it)"
        if available is None:
            why += "; its extension files are not installed either (e.g. apt-get install postgresql-<major>-cron)"
        return CronReadiness(**base, problem=why, missing=True)
    cron_db, denied_db = _try(conn, "SELECT current_setting('cron.database_name', true)")
    if loaded is None:
        # This role may not read settings: the cron schema in this database still proves pg_cron works here.
        if scalar(conn, "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'") is None:
            return CronReadiness(
                **base,
                problem=(
                    f"role {user} may not read shared_preload_libraries / cron.database_name ({denied}), so taskdb "
                    f"cannot tell whether or where pg_cron runs: GRANT pg_read_all_settings TO {user}"
                ),
            )
        cron_db = current
    base["library_loaded"] = True
    if not cron_db:
        return CronReadiness(
            **base,
            problem=(
                f"cron.database_name cannot be read ({denied_db})" if denied_db else "cron.database_name is not set"
            ),
        )
    base["cron_database"] = cron_db
    base["timezone"] = _try(conn, "SELECT current_setting('cron.timezone', true)")[0]
    if not scalar(conn, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = :d)", {"d": cron_db}):
        return CronReadiness(
            **base,
            problem=(
                f"cron.database_name = {cron_db!r} names no database: CREATE DATABASE {cron_db} (pg_cron's scheduler "
                "waits for it), or point cron.database_name at an existing database and restart"
            ),
        )
    try:
        with cron_connection(conn, cron_db) as cconn:
            return _detect_in_cron_database(cconn, base)
    except TaskdbError as exc:  # cannot connect to the cron database
        return CronReadiness(
            **base,
            problem=(
                f"{exc}: taskdb connects to the cron database {cron_db!r} with the same URL; let {user} connect "
                f"there (GRANT CONNECT ON DATABASE {cron_db} TO {user}), or set {MODE_ENV}=skip"
            ),
        )


def _detect_in_cron_database(cconn: Connection, base: dict[str, Any]) -> CronReadiness:
    user, cron_db, current = base["user"], base["cron_database"], base["current_database"]
    installed = scalar(cconn, "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'")
    base["extension_version"] = installed
    version = parse_version(installed or base["available_version"])
    notes: list[str] = []
    if base["timezone"] and base["timezone"] not in ("GMT", "UTC"):
        notes.append(f"cron.timezone is {base['timezone']}: schedules are read in that time zone, not UTC")
    if installed is None:
        if base["available_version"] is None:
            return CronReadiness(
                **base,
                missing=True,
                problem=(
                    "the pg_cron library is loaded but the extension's files are missing "
                    "(install the pg_cron package matching the server, e.g. postgresql-<major>-cron)"
                ),
            )
        trusted = scalar(
            cconn,
            "SELECT bool_or(trusted) FROM pg_available_extension_versions WHERE name = 'pg_cron' AND version = :v",
            {"v": base["available_version"]},
        )
        may_create = scalar(cconn, "SELECT has_database_privilege(current_database(), 'CREATE')")
        if base["superuser"] or (trusted and may_create):
            base["can_create_extension"] = True
        else:
            # Some managed services let a non-superuser admin role create it: the upgrade tries.
            notes.append(f"role {user} is not a superuser: creating the extension in {cron_db!r} may be refused")
    if version is None or version < NAMED_JOBS_SINCE:
        return CronReadiness(
            **base,
            notes=tuple(notes),
            problem=(
                f"pg_cron {installed or base['available_version']} is too old (named jobs need 1.3): "
                f"ALTER EXTENSION pg_cron UPDATE in database {cron_db!r}"
            ),
        )
    other = cron_db != current
    if other and version < SCHEDULE_IN_DATABASE_SINCE:
        return CronReadiness(
            **base,
            notes=tuple(notes),
            problem=(
                f"pg_cron {installed} has no cron.schedule_in_database (1.4+), needed because cron.database_name is "
                f"{cron_db!r}, not {current!r}: ALTER EXTENSION pg_cron UPDATE in database {cron_db!r}"
            ),
        )
    if installed is not None and not base["superuser"]:
        if not scalar(cconn, "SELECT has_schema_privilege('cron', 'USAGE')"):
            return CronReadiness(
                **base,
                notes=tuple(notes),
                problem=(
                    f"role {user} may not use the cron schema: GRANT USAGE ON SCHEMA cron TO {user} (in {cron_db!r})"
                ),
            )
        if other and not scalar(cconn, "SELECT has_function_privilege(:f, 'EXECUTE')", {"f": SCHEDULE_IN_DATABASE}):
            return CronReadiness(
                **base,
                notes=tuple(notes),
                problem=(
                    f"role {user} may not call cron.schedule_in_database: "
                    f"GRANT EXECUTE ON FUNCTION {SCHEDULE_IN_DATABASE} TO {user} (in {cron_db!r})"
                ),
            )
    return CronReadiness(**base, notes=tuple(notes))


def how_to_enable(problem: str, missing: bool = True, requested_by: str | None = None) -> str:
    """The message for a missing or unusable pg_cron: what is wrong, then exactly how to fix it. For an upgrade
    (``requested_by`` None) it ends with TASKDB_CRON=skip; for a command, it says to rerun that command."""
    if requested_by is None:
        if missing:
            return f"pg_cron is not available: {problem}. {ENABLE_PG_CRON}"
        return f"pg_cron cannot be used: {problem}. {WITHOUT_THE_JOB.split(' (')[0]}."
    if missing:
        return f"pg_cron is not available: {problem}. {ENABLE_STEPS.format(rerun=f'rerun `{requested_by}`')}"
    return f"pg_cron cannot be used: {problem}. Fix that, then rerun `{requested_by}`; {MEANWHILE}."


def _unavailable(requested_by: str | None, message: str) -> CronUnavailable:
    """``TASKDB_CRON=require`` during an upgrade (exit 1), or a ``taskdb cron`` command (exit 2)."""
    if requested_by is None:
        return CronUnavailable(f"{MODE_ENV}=require: {message} Nothing was changed.")
    return CronNotInstallable(f"{requested_by}: {message} Nothing was changed.")


# -- install ----------------------------------------------------------------------------------------------


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
            raise _unavailable(requested_by, how_to_enable(str(readiness.problem), readiness.missing, requested_by))
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
    log.warning(
        "upgrading without the pg_cron job %s (queue_health.cron_job_installed is false; stale Queued tasks are "
        "cancelled only when something calls taskdb_cancel_stale_queued_all). %s",
        CLEANUP_JOB,
        message,
    )


def _jobs_named(cconn: Connection, names: list[str]) -> dict[str, dict[str, Any]]:
    found = rows(
        cconn,
        "SELECT jobid, jobname::text AS jobname, schedule, command, database, active FROM cron.job "
        "WHERE jobname::text = ANY(CAST(:names AS text[]))",
        {"names": names},
    )
    return {r["jobname"]: r for r in found}


def choose_name(cconn: Connection, base: str, database: str) -> str:
    """``base`` if it is free or already this database's job; else ``base:database`` (another database's
    job holds the plain name: pg_cron 1.4 would keep running an upserted job in *that* database)."""
    qualified = qualified_name(base, database)
    existing = _jobs_named(cconn, [base, qualified])
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
    existing = _jobs_named(cconn, [job.name]).get(job.name)
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
        stored = _jobs_named(cconn, [job.name]).get(job.name)
        # pg_cron 1.4's upsert keeps an existing job's database: never leave a job running somewhere else.
        if stored is None or stored["jobid"] != jobid or stored["database"] != job.database:
            raise CronJobConflict(
                f"pg_cron stored job {job.name!r} for database {stored and stored['database']!r}, "
                f"not {job.database!r}; nothing was changed"
            )
    else:
        jobid = existing["jobid"]
    was = existing["schedule"] if changed and existing is not None and existing["schedule"] != job.schedule else None
    return InstalledJob(
        kind, job.name, int(jobid), cron_database, job.database, job.schedule, job.command, changed, was
    )


def extension_owner_name(cron_database: str) -> str:
    """How taskdb_owned_objects names a pg_cron extension taskdb created."""
    return f"pg_cron in database {cron_database}"


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
        problem = f"CREATE EXTENSION pg_cron in database {cron_db!r} failed: {refused}"
        missing = "shared_preload_libraries" in str(refused) or "control file" in str(refused)
        if not missing:
            rerun = "the upgrade" if plan.requested_by is None else f"`{plan.requested_by}`"
            problem += (
                f"; pg_cron is not a trusted extension: a superuser (on managed services the admin role, e.g. "
                f"rds_superuser) must run CREATE EXTENSION pg_cron in database {cron_db!r}, then rerun {rerun}"
            )
        message = how_to_enable(problem, missing, plan.requested_by)
        if plan.mode == "require":
            raise _unavailable(plan.requested_by, message) from None
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


RECORD_SQL = f"""
INSERT INTO {RECORD_TABLE} AS r (job, jobname, jobid, cron_database, run_database, schedule, command)
VALUES (:job, :jobname, :jobid, :cron_database, :run_database, :schedule, :command)
ON CONFLICT (job) DO UPDATE
SET jobname = EXCLUDED.jobname, jobid = EXCLUDED.jobid, cron_database = EXCLUDED.cron_database,
    run_database = EXCLUDED.run_database, schedule = EXCLUDED.schedule, command = EXCLUDED.command,
    installed_at = now()
WHERE (r.jobname, r.jobid, r.cron_database, r.run_database, r.schedule, r.command)
      IS DISTINCT FROM (EXCLUDED.jobname, EXCLUDED.jobid, EXCLUDED.cron_database, EXCLUDED.run_database,
                        EXCLUDED.schedule, EXCLUDED.command)
"""


def record(conn: Connection, installation: Installation, revision: str) -> None:
    """Write what is installed to taskdb_cron_jobs (unchanged rows are not rewritten) and, when this upgrade
    created pg_cron, that taskdb owns it. Call inside the target database's transaction."""
    for job in installation.jobs:
        params = asdict(job)
        params.pop("changed")
        params.pop("was")
        conn.execute(sa.text(RECORD_SQL), params)
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


# -- remove -----------------------------------------------------------------------------------------------


def recorded_jobs(conn: Connection) -> list[dict[str, Any]]:
    if not table_exists(conn, RECORD_TABLE):
        return []
    return rows(conn, f"SELECT * FROM {RECORD_TABLE} ORDER BY job")


def unscheduling_sql(job: Mapping[str, Any]) -> str:
    """What a DBA runs by hand when taskdb cannot reach the cron database."""
    return (
        f"in database {job['cron_database']}: SELECT cron.unschedule(jobid) FROM cron.job "
        f"WHERE jobname = {quote_literal(str(job['jobname']))} AND database = {quote_literal(str(job['run_database']))}"
    )


def unschedule_jobs(
    conn: Connection, revision: str, mode: str | None = None, *, requested_by: str | None = None
) -> list[dict[str, Any]]:
    """Remove this database's cleanup job, the purge job when no taskdb cleanup job is left in that cron
    database, and pg_cron itself when taskdb created it and nothing else uses it. ``require`` makes an
    unreachable cron database an error (before anything changes); otherwise it is a warning with the SQL.

    Returns the recorded jobs, each with ``outcome``: ``unscheduled``; ``absent`` (not in cron.job any more);
    ``kept`` (the purge job, which other databases' cleanup jobs still use); ``unreachable`` (warned)."""
    mode = mode or cron_mode()
    by_cron_db: dict[str, list[dict[str, Any]]] = {}
    for job in recorded_jobs(conn):
        by_cron_db.setdefault(job["cron_database"], []).append(job)
    done: list[dict[str, Any]] = []
    for cron_db, jobs in by_cron_db.items():
        try:
            with cron_connection(conn, cron_db) as cconn:
                if scalar(cconn, "SELECT to_regclass('cron.job') IS NULL"):
                    log.info("pg_cron is no longer installed in %s: no job to remove", cron_db)
                    done += [{**job, "outcome": "absent"} for job in jobs]
                    continue
                outcomes = _unschedule_in(cconn, cron_db, jobs)
                removed = [int(job["jobid"]) for job in outcomes if job["outcome"] == "unscheduled"]
                _drop_extension_if_ours(cconn, conn, cron_db, removed, revision)
                done += outcomes
        except (TaskdbError, DBAPIError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            todo = "; ".join(unscheduling_sql(job) for job in jobs)
            if mode == "require":
                who = f"{MODE_ENV}=require" if requested_by is None else requested_by
                raise CronUnavailable(
                    f"{who}: cannot remove taskdb's pg_cron jobs in {cron_db!r} ({reason}); "
                    f"nothing was changed. Fix access to that database, or remove them by hand ({todo}) and rerun"
                ) from None
            log.warning(
                "cannot remove taskdb's pg_cron jobs in %s (%s); remove them by hand: %s", cron_db, reason, todo
            )
            done += [{**job, "outcome": "unreachable"} for job in jobs]
    return done


def _unschedule_in(cconn: Connection, cron_db: str, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One transaction: unschedule this database's cleanup job, and the purge job if it is the last one.
    Returns ``jobs`` with their outcome (see :func:`unschedule_jobs`); an unscheduled job has cron.job's jobid."""
    outcomes: list[dict[str, Any]] = []
    with transaction(cconn):
        cconn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": NAMES_LOCK_KEY})
        ours = {job["job"]: job for job in jobs}
        cleanup = ours.pop(CLEANUP_JOB, None)
        if cleanup is not None:
            found = _jobs_named(cconn, [cleanup["jobname"]]).get(cleanup["jobname"])
            if found is not None and found["database"] == cleanup["run_database"]:
                scalar(cconn, "SELECT cron.unschedule(CAST(:id AS bigint))", {"id": found["jobid"]})
                outcomes.append({**cleanup, "jobid": int(found["jobid"]), "outcome": "unscheduled"})
            else:
                outcomes.append({**cleanup, "outcome": "absent"})
        purge = ours.pop(PURGE_JOB, None)
        if purge is not None:
            found = _jobs_named(cconn, [purge["jobname"]]).get(purge["jobname"])
            if found is None or found["database"] != cron_db:
                outcomes.append({**purge, "outcome": "absent"})
            elif rows(cconn, CLEANUP_JOBS_SQL):
                outcomes.append({**purge, "outcome": "kept"})  # other databases' cleanup jobs still use it
            else:
                # The purge job serves every taskdb database of this server: it goes with the last cleanup job.
                scalar(cconn, "SELECT cron.unschedule(CAST(:id AS bigint))", {"id": found["jobid"]})
                outcomes.append({**purge, "jobid": int(found["jobid"]), "outcome": "unscheduled"})
        outcomes += [{**job, "outcome": "absent"} for job in ours.values()]
    removed = [job["jobid"] for job in outcomes if job["outcome"] == "unscheduled"]
    log.info("removed pg_cron jobs %s from %s", removed, cron_db)
    return outcomes


def _drop_extension_if_ours(
    cconn: Connection, conn: Connection, cron_db: str, removed: list[int], revision: str
) -> None:
    """DROP EXTENSION pg_cron only if this revision created it, no job is left, and its history holds no
    row of anybody else's job (never drop a table holding rows taskdb did not write)."""
    name = extension_owner_name(cron_db)
    if name not in owned(conn, "extension", revision):
        return
    # Row-level security hides other users' jobs from non-superusers: only a superuser can tell "unused".
    if not scalar(cconn, "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"):
        log.info("keeping pg_cron in %s: this role cannot see every user's jobs", cron_db)
        return
    in_use = scalar(
        cconn,
        "SELECT EXISTS (SELECT 1 FROM cron.job) OR EXISTS (SELECT 1 FROM cron.job_run_details "
        "WHERE jobid <> ALL(CAST(:ours AS bigint[])))",
        {"ours": removed},
    )
    if in_use:
        log.info("keeping pg_cron in %s: other jobs or their history are there", cron_db)
        return
    try:
        cconn.exec_driver_sql("DROP EXTENSION IF EXISTS pg_cron")
    except DBAPIError as exc:  # the jobs are gone already; an extension left behind harms nobody
        log.warning("kept pg_cron in %s: DROP EXTENSION failed: %s", cron_db, str(exc.orig).strip().splitlines()[0])
        return
    forget_owned(conn, "extension", name)
    log.info("dropped pg_cron from %s (taskdb had created it)", cron_db)


@dataclass(frozen=True)
class Removal:
    """What :func:`remove` did: each recorded job with its ``outcome`` (see :func:`unschedule_jobs`)."""

    database: str
    jobs: list[dict[str, Any]]
    cleared: int  # rows deleted from taskdb_cron_jobs

    @property
    def changed(self) -> bool:
        return self.cleared > 0 or any(job["outcome"] == "unscheduled" for job in self.jobs)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed}


def remove(conn: Connection, *, requested_by: str = "taskdb cron remove", revision: str = CRON_REVISION) -> Removal:
    """``taskdb cron remove``: the downgrade's :func:`unschedule_jobs` (this database's cleanup job wherever it
    lives, the purge job with the server's last cleanup job, pg_cron itself if taskdb created it and nothing
    else uses it), then the record is cleared. An unreachable cron database is an error before anything
    changes, whatever TASKDB_CRON says. Idempotent; the queue keeps working (``taskdb cleanup``)."""
    require_primary(conn, requested_by)
    database = str(scalar(conn, "SELECT current_database()"))
    if not table_exists(conn, RECORD_TABLE):
        return Removal(database, [], 0)
    jobs = unschedule_jobs(conn, revision, "require", requested_by=requested_by)
    with transaction(conn):
        cleared = len(
            rows(
                conn,
                f"DELETE FROM {RECORD_TABLE} WHERE job = ANY(CAST(:jobs AS text[])) RETURNING job",
                {"jobs": [job["job"] for job in jobs if job["outcome"] != "unreachable"]},
            )
        )
    return Removal(database, jobs, cleared)


# -- status -----------------------------------------------------------------------------------------------

JOB_STATE_SQL = (
    "SELECT jobid, schedule, command, active FROM cron.job WHERE jobname::text = :jobname AND database = :database"
)
LAST_RUNS_SQL = (
    "SELECT runid, status, start_time, end_time, "
    "round((extract(epoch FROM end_time - start_time) * 1000)::numeric, 1)::float8 AS duration_ms, "
    "return_message FROM cron.job_run_details WHERE jobid = CAST(:jobid AS bigint) "
    f"ORDER BY runid DESC LIMIT {LAST_RUNS}"
)


def _first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def _read_job_states(conn: Connection, jobs: list[dict[str, Any]]) -> None:
    """Add cron.job's view of each recorded job (``in_cron_job``, ``schedule``, ``active``) and its last runs,
    reading each cron database once; ``unreadable`` says why when it cannot be read."""
    url = conn.engine.url.render_as_string(hide_password=False)
    by_cron_db: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        job.update(in_cron_job=None, active=None, last_runs=[], unreadable=None)
        by_cron_db.setdefault(str(job["cron_database"]), []).append(job)
    for cron_db, group in by_cron_db.items():
        try:
            with cron_connection(conn, cron_db) as cconn:
                has_job = scalar(cconn, "SELECT to_regclass('cron.job') IS NOT NULL")
                has_runs = scalar(cconn, "SELECT to_regclass('cron.job_run_details') IS NOT NULL")
                for job in group:
                    found = (
                        rows(cconn, JOB_STATE_SQL, {"jobname": job["jobname"], "database": job["run_database"]})
                        if has_job
                        else []
                    )
                    job["in_cron_job"] = bool(found)
                    if found:
                        job.update(
                            jobid=found[0]["jobid"],
                            schedule=found[0]["schedule"],
                            command=found[0]["command"],
                            active=found[0]["active"],
                        )
                        if has_runs:
                            job["last_runs"] = rows(cconn, LAST_RUNS_SQL, {"jobid": found[0]["jobid"]})
        except (TaskdbError, DBAPIError) as exc:
            for job in group:
                job["unreadable"] = redact(_first_line(exc), url)


def status(conn: Connection) -> dict[str, Any]:
    """``taskdb cron status``, read-only: pg_cron readiness, the jobs taskdb recorded with their state in
    cron.job (schedule, active) and last runs (cron.job_run_details, newest first), wherever they live; whether
    the cleanup job follows ``cleanup_schedule``; queue_health's cron columns; and notes saying what to do."""
    readiness = detect(conn)
    database = readiness.current_database
    upgraded = table_exists(conn, RECORD_TABLE)
    schedule = stored_schedule(conn) if table_exists(conn, SETTINGS_TABLE) else None
    jobs = [dict(job) for job in recorded_jobs(conn)]
    _read_job_states(conn, jobs)
    health = (
        rows(
            conn,
            "SELECT cron_job_installed, cron_job_active, last_cleanup_at, cleanup_lag::text AS cleanup_lag "
            "FROM queue_health",
        )[0]
        if table_exists(conn, "queue_health")
        else {}
    )
    cleanup = next((job for job in jobs if job["job"] == CLEANUP_JOB), None)
    installed = (
        None
        if cleanup is not None and cleanup["in_cron_job"] is None
        else bool(cleanup is not None and cleanup["in_cron_job"])
    )
    in_sync = None if not (cleanup and cleanup["in_cron_job"]) else cleanup["schedule"] == schedule
    notes = _status_notes(readiness, upgraded, schedule, cleanup, in_sync, jobs)
    return {
        "database": database,
        "installed": installed,
        "cleanup_schedule": schedule,
        "in_sync": in_sync,
        "jobs": jobs,
        "readiness": readiness.as_dict(),
        "health": health,
        "notes": notes,
    }


def _status_notes(
    readiness: CronReadiness,
    upgraded: bool,
    schedule: str | None,
    cleanup: dict[str, Any] | None,
    in_sync: bool | None,
    jobs: list[dict[str, Any]],
) -> list[str]:
    """Doctor-style lines: what is wrong, then what to do."""
    database = readiness.current_database
    if not upgraded:
        return [
            f"no taskdb pg_cron job is installed: database {database} has not had revision {CRON_REVISION}; "
            "`taskdb upgrade` installs the jobs where pg_cron is available"
        ]
    if cleanup is None:
        notes = [
            f"no taskdb pg_cron job is installed for database {database}: nothing cancels stale Queued tasks "
            f"on a schedule. `taskdb cron install` installs it ({SCHEDULE_SETTING} {schedule!r}); {MEANWHILE}"
        ]
        if not readiness.ready:
            notes.append(how_to_enable(str(readiness.problem), readiness.missing, "taskdb cron install"))
        return notes
    notes = []
    visible = (
        ""
        if readiness.superuser
        else (f" (as role {readiness.user} sees it: pg_cron shows each role only its own jobs)")
    )
    for job in jobs:
        where = f"in database {job['cron_database']}"
        if job["unreadable"]:
            notes.append(
                f"cron.job {where} could not be read ({job['unreadable']}): the job's state and runs are "
                "unknown; taskdb_cron_jobs says it was installed"
            )
        elif not job["in_cron_job"]:
            notes.append(
                f"pg_cron job {job['jobname']} is recorded but missing from cron.job {where}{visible}: "
                f"`taskdb cron install` schedules it again; {MEANWHILE}"
            )
        elif not job["active"]:
            notes.append(
                f"pg_cron job {job['jobname']} (jobid {job['jobid']}) is inactive {where}: "
                f"SELECT cron.alter_job({job['jobid']}, active => true) there to resume it"
            )
        elif job["last_runs"] and job["last_runs"][0]["status"] == "failed":
            message = " ".join(str(job["last_runs"][0]["return_message"] or "").split())[:200]
            notes.append(f"the last run of pg_cron job {job['jobname']} failed: {message}")
    if in_sync is False:
        notes.append(
            f"{SCHEDULE_SETTING} is {schedule!r} but pg_cron job {cleanup['jobname']} runs on "
            f"{cleanup['schedule']!r}: `taskdb cron sync` applies the setting"
        )
    return notes
