"""Readiness: is pg_cron usable here, and if not, what is wrong and how to fix it.

:func:`detect` reads (never changes) the library, ``cron.database_name``, the extension and this role's
privileges, connecting to the cron database when it is another. The texts that say what is wrong are functions
of the values they name (:func:`not_loaded`, :func:`unknown_cron_database`, ...), so that the offline script
(:mod:`taskdb.offline`) raises, at run time, the very words of the online upgrade's warning
(:func:`upgrade_warning`) or failure (:func:`require_failure`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from taskdb.cron.config import (
    CLEANUP_JOB,
    ENABLE_PG_CRON,
    ENABLE_STEPS,
    MEANWHILE,
    MODE_ENV,
    NAMED_JOBS_SINCE,
    PURGE_JOB,
    SCHEDULE_IN_DATABASE,
    SCHEDULE_IN_DATABASE_SINCE,
    WITHOUT_THE_JOB,
    CronNotInstallable,
    CronUnavailable,
    cron_connection,
    first_line,
)
from taskdb.cron_schedule import SECONDS_SINCE
from taskdb.db import scalar, sqlstate
from taskdb.errors import TaskdbError

INSUFFICIENT_PRIVILEGE = "42501"


# -- what is wrong: one function per problem, of the values it names -----------------------------------------

EXTENSION_FILES_MISSING = (
    "the pg_cron library is loaded but the extension's files are missing "
    "(install the pg_cron package matching the server, e.g. postgresql-<major>-cron)"
)


def not_loaded(files_missing: bool) -> str:
    why = "the pg_cron library is not loaded (shared_preload_libraries does not list it)"
    if files_missing:
        why += "; its extension files are not installed either (e.g. apt-get install postgresql-<major>-cron)"
    return why


def settings_denied(user: str, denied: str) -> str:
    return (
        f"role {user} may not read shared_preload_libraries / cron.database_name ({denied}), so taskdb "
        f"cannot tell whether or where pg_cron runs: GRANT pg_read_all_settings TO {user}"
    )


def cron_database_unset(denied: str | None) -> str:
    return f"cron.database_name cannot be read ({denied})" if denied else "cron.database_name is not set"


def unknown_cron_database(cron_db: str) -> str:
    return (
        f"cron.database_name = {cron_db!r} names no database: CREATE DATABASE {cron_db} (pg_cron's scheduler "
        "waits for it), or point cron.database_name at an existing database and restart"
    )


def too_old(version: str, cron_db: str) -> str:
    return f"pg_cron {version} is too old (named jobs need 1.3): ALTER EXTENSION pg_cron UPDATE in database {cron_db!r}"


def no_cron_schema_usage(user: str, cron_db: str) -> str:
    return f"role {user} may not use the cron schema: GRANT USAGE ON SCHEMA cron TO {user} (in {cron_db!r})"


# Words in CREATE EXTENSION's error that mean pg_cron itself is missing (library, files), not a privilege.
MISSING_MARKERS = ("shared_preload_libraries", "control file")


def extension_refused(cron_db: str, error: str, requested_by: str | None = None) -> tuple[str, bool]:
    """(problem, missing) when ``CREATE EXTENSION pg_cron`` failed with ``error``: pg_cron itself is missing
    (library, files), or this role may not create it (the remedy names who may)."""
    missing = any(marker in error for marker in MISSING_MARKERS)
    return refused_problem(cron_db, error, missing, requested_by), missing


def refused_problem(cron_db: str, error: str, missing: bool, requested_by: str | None = None) -> str:
    problem = f"CREATE EXTENSION pg_cron in database {cron_db!r} failed: {error}"
    if not missing:
        rerun = "the upgrade" if requested_by is None else f"`{requested_by}`"
        problem += (
            f"; pg_cron is not a trusted extension: a superuser (on managed services the admin role, e.g. "
            f"rds_superuser) must run CREATE EXTENSION pg_cron in database {cron_db!r}, then rerun {rerun}"
        )
    return problem


def out_of_reach(cron_db: str, required: bool = False) -> str:
    """The offline script's message (a whole sentence) where the online upgrade would connect to another cron
    database; ``required``: the script was generated with TASKDB_CRON=require, and stops there."""
    where = (
        f"pg_cron keeps its jobs in database {cron_db!r} (cron.database_name), which a script run in this database "
        "cannot reach: "
    )
    if required:
        return where + (
            "generate the script with TASKDB_CRON=auto and run `taskdb cron install` on this database after it "
            "(it connects there and schedules the jobs with cron.schedule_in_database), or upgrade online."
        )
    return where + (
        "run `taskdb cron install` on this database after the script (it connects there and "
        "schedules the jobs with cron.schedule_in_database, as the online upgrade does), or upgrade online."
    )


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
        return CronReadiness(**base, problem=not_loaded(available is None), missing=True)
    cron_db, denied_db = _try(conn, "SELECT current_setting('cron.database_name', true)")
    if loaded is None:
        # This role may not read settings: the cron schema in this database still proves pg_cron works here.
        if scalar(conn, "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'") is None:
            return CronReadiness(**base, problem=settings_denied(user, str(denied)))
        cron_db = current
    base["library_loaded"] = True
    if not cron_db:
        return CronReadiness(**base, problem=cron_database_unset(denied_db))
    base["cron_database"] = cron_db
    base["timezone"] = _try(conn, "SELECT current_setting('cron.timezone', true)")[0]
    if not scalar(conn, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = :d)", {"d": cron_db}):
        return CronReadiness(**base, problem=unknown_cron_database(cron_db))
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
            return CronReadiness(**base, missing=True, problem=EXTENSION_FILES_MISSING)
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
            problem=too_old(str(installed or base["available_version"]), cron_db),
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
                problem=no_cron_schema_usage(user, cron_db),
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


def _try(conn: Connection, sql: str, params: Mapping[str, Any] | None = None) -> tuple[Any, str | None]:
    """(value, None), or (None, reason) when this role may not read it. The connection is AUTOCOMMIT."""
    try:
        return scalar(conn, sql, params), None
    except DBAPIError as exc:
        if sqlstate(exc) != INSUFFICIENT_PRIVILEGE:
            raise
        return None, first_line(exc)


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


def unavailable(requested_by: str | None, message: str) -> CronUnavailable:
    """``TASKDB_CRON=require`` during an upgrade (exit 1), or a ``taskdb cron`` command (exit 2)."""
    if requested_by is None:
        return CronUnavailable(require_failure(message))
    return CronNotInstallable(require_failure(message, requested_by))


def require_failure(message: str, requested_by: str | None = None) -> str:
    """The error of ``TASKDB_CRON=require`` (an upgrade) or of a ``taskdb cron`` command (``requested_by``)."""
    return (
        f"{MODE_ENV}=require: {message} Nothing was changed."
        if requested_by is None
        else (f"{requested_by}: {message} Nothing was changed.")
    )


def upgrade_warning(message: str) -> str:
    """The one warning of a ``TASKDB_CRON=auto`` upgrade that goes on without the job."""
    return (
        f"upgrading without the pg_cron job {CLEANUP_JOB} (queue_health.cron_job_installed is false; stale Queued "
        f"tasks are cancelled only when something calls taskdb_cancel_stale_queued_all). {message}"
    )
