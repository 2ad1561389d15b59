"""Removing: taskdb's jobs unscheduled wherever they live, for a downgrade (:func:`unschedule_jobs`) or
``taskdb cron remove`` (:func:`remove`, which then clears the record). This database's cleanup job goes; the
purge job goes with the server's last taskdb cleanup job; pg_cron itself only when taskdb created it and
nothing else uses it (sql/cron.sql's ``pg_cron_in_use``, which the offline downgrade inlines too)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from taskdb.catalog import forget_owned, owned, table_exists
from taskdb.cron.config import (
    CLEANUP_JOB,
    CLEANUP_JOBS_SQL,
    CRON_REVISION,
    MODE_ENV,
    NAMES_LOCK_KEY,
    PURGE_JOB,
    RECORD_TABLE,
    CronUnavailable,
    cron_connection,
    cron_mode,
    cron_sql,
    extension_owner_name,
    first_line,
    jobs_named,
    log,
    quote_literal,
    recorded_jobs,
)
from taskdb.db import require_primary, rows, scalar, transaction
from taskdb.errors import TaskdbError


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
            reason = first_line(exc)
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
            found = jobs_named(cconn, [cleanup["jobname"]]).get(cleanup["jobname"])
            if found is not None and found["database"] == cleanup["run_database"]:
                scalar(cconn, "SELECT cron.unschedule(CAST(:id AS bigint))", {"id": found["jobid"]})
                outcomes.append({**cleanup, "jobid": int(found["jobid"]), "outcome": "unscheduled"})
            else:
                outcomes.append({**cleanup, "outcome": "absent"})
        purge = ours.pop(PURGE_JOB, None)
        if purge is not None:
            found = jobs_named(cconn, [purge["jobname"]]).get(purge["jobname"])
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
    if not scalar(cconn, cron_sql("sees_every_job")):
        log.info("keeping pg_cron in %s: this role cannot see every user's jobs", cron_db)
        return
    if scalar(cconn, cron_sql("pg_cron_in_use"), {"ours": removed}):
        log.info("keeping pg_cron in %s: other jobs or their history are there", cron_db)
        return
    try:
        cconn.exec_driver_sql("DROP EXTENSION IF EXISTS pg_cron")
    except DBAPIError as exc:  # the jobs are gone already; an extension left behind harms nobody
        log.warning("kept pg_cron in %s: DROP EXTENSION failed: %s", cron_db, first_line(exc))
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
