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
from taskdb.db import connect, create_engine, rows, scalar, sqlstate, transaction
from taskdb.errors import ConfigError, TaskdbError

log = logging.getLogger("taskdb.cron")

MODE_ENV = "TASKDB_CRON"
MODES = ("auto", "require", "skip")

CLEANUP_JOB = "taskdb_cancel_stale_queued"
PURGE_JOB = "taskdb_purge_cron_history"
PURGE_SCHEDULE = "45 3 * * *"  # daily, UTC, half an hour after the default cleanup
HISTORY_KEPT = "14 days"
RECORD_TABLE = "taskdb_cron_jobs"
APPLICATION_NAME = "taskdb cron"

# pg_cron 1.4 stores jobname as type name: longer names would be silently truncated.
NAME_MAX_BYTES = 63
NAMED_JOBS_SINCE = (1, 3)
SCHEDULE_IN_DATABASE_SINCE = (1, 4)
SECONDS_SINCE = (1, 5)

# A transaction-scoped advisory lock in the cron database ('taskcron' in ASCII): upgrades of two target
# databases on one server choose job names one after the other, never both the same free name.
NAMES_LOCK_KEY = 0x7461736B63726F6E

INSUFFICIENT_PRIVILEGE = "42501"
SCHEDULE_IN_DATABASE = "cron.schedule_in_database(text,text,text,text,text,boolean)"

ENABLE_PG_CRON = (
    "To enable pg_cron: in postgresql.conf set shared_preload_libraries = 'pg_cron' (keep the libraries already "
    "listed) and cron.database_name = '<the database that holds the jobs>' (default 'postgres'), restart "
    "PostgreSQL, then rerun the upgrade. Managed services: AWS RDS/Aurora: add pg_cron to shared_preload_libraries "
    "in the DB parameter group and reboot; Google Cloud SQL: set the flag cloudsql.enable_pg_cron=on; "
    "Azure Database for PostgreSQL: add PG_CRON to the azure.extensions and shared_preload_libraries server "
    "parameters; Supabase: Dashboard -> Database -> Extensions -> pg_cron. "
    f"Or set {MODE_ENV}=skip to upgrade without the job ({MODE_ENV}=auto does so with a warning)."
)


class CronUnavailable(TaskdbError):
    """pg_cron cannot be used here, and TASKDB_CRON=require asks for it; nothing was changed."""


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


_MACROS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly", "@reboot"})
_SECONDS = re.compile(r"^([1-9]|[1-5][0-9]) seconds?$")
_FIELD = re.compile(r"^[0-9A-Za-z*,/$-]+$")


@dataclass(frozen=True)
class CronJobConfig:
    """One pg_cron job as taskdb wants it: ``cron.job``'s jobname, schedule, command and database."""

    name: str
    schedule: str
    command: str
    database: str  # where the command runs (cron.job.database)

    def validate(self, version: tuple[int, int] | None = None) -> None:
        """Reject what pg_cron would reject, before anything is changed; ``version`` is pg_cron's."""
        if not self.name or len(self.name.encode()) > NAME_MAX_BYTES:
            raise ConfigError(f"pg_cron job name {self.name!r} must be 1 to {NAME_MAX_BYTES} bytes")
        if not self.command.strip():
            raise ConfigError(f"pg_cron job {self.name}: empty command")
        schedule = " ".join(self.schedule.split())
        # 'N seconds' and '$' (last day of the month) arrived in pg_cron 1.5; 1.4 rejects them.
        if (_SECONDS.match(schedule) or "$" in schedule) and version is not None and version < SECONDS_SINCE:
            raise ConfigError(
                f"pg_cron job {self.name}: schedule {self.schedule!r} needs pg_cron >= 1.5 (this server has "
                f"{version[0]}.{version[1]}): use a plain cron schedule such as '* * * * *' in "
                "task_hygiene_settings.cleanup_schedule, or upgrade pg_cron"
            )
        if _SECONDS.match(schedule):
            return
        fields = schedule.split(" ")
        if schedule.lower() in _MACROS or (len(fields) == 5 and all(_FIELD.match(f) for f in fields)):
            return
        raise ConfigError(
            f"pg_cron job {self.name}: invalid schedule {self.schedule!r}: use five cron fields "
            "(minute hour day-of-month month day-of-week, UTC, e.g. '15 3 * * *'), a macro such as '@daily', "
            "or on pg_cron >= 1.5 'N seconds' (1-59); fix task_hygiene_settings.cleanup_schedule"
        )


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def cleanup_command(jobname: str) -> str:
    """The cleanup job's command: the batched procedure, the actor naming the pg_cron job."""
    return f"CALL taskdb_cancel_stale_queued_all({quote_literal('pg_cron job ' + jobname)})"


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
            state = f"pg_cron {self.extension_version} installed" if self.extension_version else (
                f"pg_cron {self.available_version} will be created"
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
    loaded = None if denied else "pg_cron" in [
        lib.strip().strip('"').rsplit("/", 1)[-1] for lib in str(libraries or "").split(",")
    ]
    available = scalar(conn, "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_cron'")
    base = {"current_database": current, "user": user, "superuser": bool(superuser), "library_loaded": loaded,
            "cron_database": None, "extension_version": None, "available_version": available,
            "can_create_extension": None, "timezone": None}  # fmt: skip

    if loaded is False:
        why = "the pg_cron library is not loaded (shared_preload_libraries does not list it)"
        if available is None:
            why += "; its extension files are not installed either (e.g. apt-get install postgresql-<major>-cron)"
        return CronReadiness(**base, problem=why, missing=True)
    cron_db, denied_db = _try(conn, "SELECT current_setting('cron.database_name', true)")
    if loaded is None:
        # This role may not read settings: the cron schema in this database still proves pg_cron works here.
        if scalar(conn, "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'") is None:
            return CronReadiness(**base, problem=(
                f"role {user} may not read shared_preload_libraries / cron.database_name ({denied}), so taskdb "
                f"cannot tell whether or where pg_cron runs: GRANT pg_read_all_settings TO {user}"
            ))
        cron_db = current
    base["library_loaded"] = True
    if not cron_db:
        return CronReadiness(**base, problem=(
            f"cron.database_name cannot be read ({denied_db})" if denied_db else "cron.database_name is not set"
        ))
    base["cron_database"] = cron_db
    base["timezone"] = _try(conn, "SELECT current_setting('cron.timezone', true)")[0]
    if not scalar(conn, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = :d)", {"d": cron_db}):
        return CronReadiness(**base, problem=(
            f"cron.database_name = {cron_db!r} names no database: CREATE DATABASE {cron_db} (pg_cron's scheduler "
            "waits for it), or point cron.database_name at an existing database and restart"
        ))
    try:
        with cron_connection(conn, cron_db) as cconn:
            return _detect_in_cron_database(cconn, base)
    except TaskdbError as exc:  # cannot connect to the cron database
        return CronReadiness(**base, problem=(
            f"{exc}: taskdb connects to the cron database {cron_db!r} with the same URL; let {user} connect "
            f"there (GRANT CONNECT ON DATABASE {cron_db} TO {user}), or set {MODE_ENV}=skip"
        ))


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
            return CronReadiness(**base, missing=True, problem=(
                "the pg_cron library is loaded but the extension's files are missing "
                "(install the pg_cron package matching the server, e.g. postgresql-<major>-cron)"
            ))
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
        return CronReadiness(**base, notes=tuple(notes), problem=(
            f"pg_cron {installed or base['available_version']} is too old (named jobs need 1.3): "
            f"ALTER EXTENSION pg_cron UPDATE in database {cron_db!r}"
        ))
    other = cron_db != current
    if other and version < SCHEDULE_IN_DATABASE_SINCE:
        return CronReadiness(**base, notes=tuple(notes), problem=(
            f"pg_cron {installed} has no cron.schedule_in_database (1.4+), needed because cron.database_name is "
            f"{cron_db!r}, not {current!r}: ALTER EXTENSION pg_cron UPDATE in database {cron_db!r}"
        ))
    if installed is not None and not base["superuser"]:
        if not scalar(cconn, "SELECT has_schema_privilege('cron', 'USAGE')"):
            return CronReadiness(**base, notes=tuple(notes), problem=(
                f"role {user} may not use the cron schema: GRANT USAGE ON SCHEMA cron TO {user} (in {cron_db!r})"
            ))
        if other and not scalar(cconn, "SELECT has_function_privilege(:f, 'EXECUTE')", {"f": SCHEDULE_IN_DATABASE}):
            return CronReadiness(**base, notes=tuple(notes), problem=(
                f"role {user} may not call cron.schedule_in_database: "
                f"GRANT EXECUTE ON FUNCTION {SCHEDULE_IN_DATABASE} TO {user} (in {cron_db!r})"
            ))
    return CronReadiness(**base, notes=tuple(notes))


def how_to_enable(problem: str, missing: bool = True) -> str:
    """The message for a missing or unusable pg_cron: what is wrong, then exactly how to fix it."""
    if missing:
        return f"pg_cron is not available: {problem}. {ENABLE_PG_CRON}"
    return f"pg_cron cannot be used: {problem}. Or set {MODE_ENV}=skip to upgrade without the job."


# -- install ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CronPlan:
    """What an upgrade will do about pg_cron, decided before anything changes."""

    mode: str
    readiness: CronReadiness | None  # None when skipped
    schedule: str | None  # the cleanup's schedule, validated

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


@dataclass(frozen=True)
class Installation:
    """What :func:`schedule_jobs` did: the jobs, whether it created pg_cron, or why it installed nothing."""

    jobs: list[InstalledJob]
    created_extension: bool = False
    skipped: str | None = None  # why pg_cron turned out unusable (CREATE EXTENSION refused), with the remedy


def prepare(conn: Connection, mode: str | None = None) -> CronPlan:
    """Read-only: mode, readiness and the validated schedule. Raises (nothing changed) on a bad TASKDB_CRON,
    a bad schedule, or ``require`` without a usable pg_cron."""
    mode = mode or cron_mode()
    if mode == "skip":
        return CronPlan(mode, None, None)
    readiness = detect(conn)
    schedule = str(scalar(conn, "SELECT cleanup_schedule FROM task_hygiene_settings"))
    if not readiness.ready:
        if mode == "require":
            message = how_to_enable(str(readiness.problem), readiness.missing)
            raise CronUnavailable(f"{MODE_ENV}=require: {message} Nothing was changed.")
        return CronPlan(mode, readiness, schedule)
    CronJobConfig(CLEANUP_JOB, schedule, cleanup_command(CLEANUP_JOB), readiness.current_database).validate(
        readiness.version
    )
    return CronPlan(mode, readiness, schedule)


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
        "cancelled only when something calls taskdb_cancel_stale_queued_all). %s", CLEANUP_JOB, message,
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
    return InstalledJob(kind, job.name, int(jobid), cron_database, job.database, job.schedule, job.command, changed)


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
        return _schedule_jobs(conn, plan.schedule, cron_db, current)
    except _ExtensionRefused as refused:
        problem = f"CREATE EXTENSION pg_cron in database {cron_db!r} failed: {refused}"
        missing = "shared_preload_libraries" in str(refused) or "control file" in str(refused)
        if not missing:
            problem += (
                f"; pg_cron is not a trusted extension: a superuser (on managed services the admin role, e.g. "
                f"rds_superuser) must run CREATE EXTENSION pg_cron in database {cron_db!r}, then rerun the upgrade"
            )
        message = how_to_enable(problem, missing)
        if plan.mode == "require":
            raise CronUnavailable(f"{MODE_ENV}=require: {message} Nothing was changed.") from None
        return Installation([], skipped=message)


class _ExtensionRefused(Exception):
    """CREATE EXTENSION pg_cron failed (privilege, files, library): pg_cron is not usable here."""


def _schedule_jobs(conn: Connection, schedule: str, cron_db: str, current: str) -> Installation:
    with cron_connection(conn, cron_db) as cconn, transaction(cconn):
        created = False
        if scalar(cconn, "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'") is None:
            try:
                cconn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_cron")
            except DBAPIError as exc:
                raise _ExtensionRefused(str(exc.orig).strip().splitlines()[0]) from None
            created = True
        cconn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": NAMES_LOCK_KEY})
        version = parse_version(scalar(cconn, "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'"))
        cleanup_name = choose_name(cconn, CLEANUP_JOB, current)
        cleanup = CronJobConfig(cleanup_name, schedule, cleanup_command(cleanup_name), current)
        purge = purge_job(cron_db, choose_name(cconn, PURGE_JOB, cron_db))
        for job in (cleanup, purge):
            job.validate(version)
        jobs = [_ensure_job(cconn, cleanup, CLEANUP_JOB, cron_db), _ensure_job(cconn, purge, PURGE_JOB, cron_db)]
    for job in jobs:
        if job.changed:
            log.info("pg_cron job %s scheduled (%s) in %s, runs in %s", job.jobname, job.schedule, cron_db,
                     job.run_database)  # fmt: skip
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
        conn.execute(sa.text(RECORD_SQL), params)
    if installation.created_extension and installation.jobs:
        record_owned(conn, "extension", extension_owner_name(installation.jobs[0].cron_database), revision)


def install(conn: Connection, revision: str, mode: str | None = None) -> list[InstalledJob]:
    """prepare + schedule_jobs + record (taskdb_cron_jobs must exist): for a later ``taskdb cron sync``,
    e.g. after a DBA changed cleanup_schedule. ``conn`` is AUTOCOMMIT."""
    plan = prepare(conn, mode)
    installation = schedule_jobs(conn, plan)
    with transaction(conn):
        record(conn, installation, revision)
    warn_if_missing(plan, installation)
    return installation.jobs


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


def unschedule_jobs(conn: Connection, revision: str, mode: str | None = None) -> None:
    """Remove this database's cleanup job, the purge job when no taskdb cleanup job is left in that cron
    database, and pg_cron itself when taskdb created it and nothing else uses it. ``require`` makes an
    unreachable cron database an error (before anything changes); otherwise it is a warning with the SQL."""
    mode = mode or cron_mode()
    by_cron_db: dict[str, list[dict[str, Any]]] = {}
    for job in recorded_jobs(conn):
        by_cron_db.setdefault(job["cron_database"], []).append(job)
    for cron_db, jobs in by_cron_db.items():
        try:
            with cron_connection(conn, cron_db) as cconn:
                if scalar(cconn, "SELECT to_regclass('cron.job') IS NULL"):
                    log.info("pg_cron is no longer installed in %s: no job to remove", cron_db)
                    continue
                removed = _unschedule_in(cconn, cron_db, jobs)
                _drop_extension_if_ours(cconn, conn, cron_db, removed, revision)
        except (TaskdbError, DBAPIError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            todo = "; ".join(unscheduling_sql(job) for job in jobs)
            if mode == "require":
                raise CronUnavailable(
                    f"{MODE_ENV}=require: cannot remove taskdb's pg_cron jobs in {cron_db!r} ({reason}); "
                    f"nothing was changed. Fix access to that database, or remove them by hand ({todo}) and rerun"
                ) from None
            log.warning("cannot remove taskdb's pg_cron jobs in %s (%s); remove them by hand: %s", cron_db, reason,
                        todo)  # fmt: skip


def _unschedule_in(cconn: Connection, cron_db: str, jobs: list[dict[str, Any]]) -> list[int]:
    """One transaction: unschedule this database's cleanup job, and the purge job if it is the last one."""
    removed: list[int] = []
    with transaction(cconn):
        cconn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": NAMES_LOCK_KEY})
        ours = {job["job"]: job for job in jobs}
        cleanup = ours.get(CLEANUP_JOB)
        if cleanup is not None:
            found = _jobs_named(cconn, [cleanup["jobname"]]).get(cleanup["jobname"])
            if found is not None and found["database"] == cleanup["run_database"]:
                scalar(cconn, "SELECT cron.unschedule(CAST(:id AS bigint))", {"id": found["jobid"]})
                removed.append(int(found["jobid"]))
        purge = ours.get(PURGE_JOB)
        if purge is not None and not rows(cconn, CLEANUP_JOBS_SQL):
            # The purge job serves every taskdb database of this server: it goes with the last cleanup job.
            found = _jobs_named(cconn, [purge["jobname"]]).get(purge["jobname"])
            if found is not None and found["database"] == cron_db:
                scalar(cconn, "SELECT cron.unschedule(CAST(:id AS bigint))", {"id": found["jobid"]})
                removed.append(int(found["jobid"]))
    log.info("removed pg_cron jobs %s from %s", removed, cron_db)
    return removed


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
