"""pg_cron as taskdb uses it, the pieces every other module of the package shares: ``TASKDB_CRON``, the names
and limits of taskdb's two jobs, the cleanup job's command, the errors, the texts that say how to enable pg_cron,
the connection to the cron database, and the lookups of cron.job and of taskdb's record (``taskdb_cron_jobs``)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from taskdb.catalog import table_exists
from taskdb.cron_schedule import schedule_problem
from taskdb.db import connect, create_engine, pinned_schema, quote_ident, rows, scalar
from taskdb.errors import ConfigError, TaskdbError
from taskdb.sql import queries

# One logger for the package (tests and users filter on this name).
log = logging.getLogger("taskdb.cron")

MODE_ENV = "TASKDB_CRON"
MODES = ("auto", "require", "skip")

CLEANUP_JOB = "taskdb_cancel_stale_queued"
PURGE_JOB = "taskdb_purge_cron_history"
RECORD_TABLE = "taskdb_cron_jobs"
SETTINGS_TABLE = "task_hygiene_settings"
SCHEDULE_SETTING = f"{SETTINGS_TABLE}.cleanup_schedule"
APPLICATION_NAME = "taskdb cron"
# The revision that schedules the jobs and records them; `taskdb cron install` records what it creates under it,
# so that this revision's downgrade still undoes it.
CRON_REVISION = "0006_cron"

# pg_cron 1.4 stores jobname as type name: longer names would be silently truncated.
NAME_MAX_BYTES = 63
NAMED_JOBS_SINCE = (1, 3)
SCHEDULE_IN_DATABASE_SINCE = (1, 4)

# A transaction-scoped advisory lock in the cron database ('taskcron' in ASCII): upgrades of two target
# databases on one server choose job names one after the other, never both the same free name.
NAMES_LOCK_KEY = 0x7461736B63726F6E

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


def first_line(exc: BaseException) -> str:
    """A driver error's message, first line only (as the warnings and notes quote it)."""
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def extension_owner_name(cron_database: str) -> str:
    """How taskdb_owned_objects names a pg_cron extension taskdb created."""
    return f"pg_cron in database {cron_database}"


def cron_sql(name: str) -> str:
    """A query of sql/cron.sql, without its description: a statement the online path runs and the offline
    script inlines (taskdb.offline)."""
    return "\n".join(line for line in queries("cron")[name].splitlines() if not line.startswith("--"))


def jobs_named(cconn: Connection, names: list[str]) -> dict[str, dict[str, Any]]:
    """cron.job's rows (of the jobs this role sees) with these names, by name."""
    found = rows(
        cconn,
        "SELECT jobid, jobname::text AS jobname, schedule, command, database, active FROM cron.job "
        "WHERE jobname::text = ANY(CAST(:names AS text[]))",
        {"names": names},
    )
    return {r["jobname"]: r for r in found}


def recorded_jobs(conn: Connection) -> list[dict[str, Any]]:
    """taskdb_cron_jobs: what an upgrade or `taskdb cron install` installed for this database."""
    if not table_exists(conn, RECORD_TABLE):
        return []
    return rows(conn, f"SELECT * FROM {RECORD_TABLE} ORDER BY job")
