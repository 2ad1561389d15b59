"""Status: ``taskdb cron status``, read-only. The jobs taskdb recorded, with their state in cron.job and
last runs in cron.job_run_details wherever they live, whether the cleanup follows ``cleanup_schedule``,
queue_health's cron columns, and notes that say what is wrong and what to do."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from taskdb.catalog import table_exists
from taskdb.config import redact
from taskdb.cron.config import (
    CLEANUP_JOB,
    CRON_REVISION,
    MEANWHILE,
    RECORD_TABLE,
    SCHEDULE_SETTING,
    SETTINGS_TABLE,
    cron_connection,
    first_line,
    recorded_jobs,
)
from taskdb.cron.readiness import CronReadiness, detect, how_to_enable
from taskdb.cron.scheduling import stored_schedule
from taskdb.db import rows, scalar
from taskdb.errors import TaskdbError

LAST_RUNS = 5  # runs of each job `taskdb cron status` shows

JOB_STATE_SQL = (
    "SELECT jobid, schedule, command, active FROM cron.job WHERE jobname::text = :jobname AND database = :database"
)
LAST_RUNS_SQL = (
    "SELECT runid, status, start_time, end_time, "
    "round((extract(epoch FROM end_time - start_time) * 1000)::numeric, 1)::float8 AS duration_ms, "
    "return_message FROM cron.job_run_details WHERE jobid = CAST(:jobid AS bigint) "
    f"ORDER BY runid DESC LIMIT {LAST_RUNS}"
)


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
                job["unreadable"] = redact(first_line(exc), url)


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
