"""pg_cron: schedule the stale-queue cleanup (taskdb_cancel_stale_queued) and the purge of its run history.

Revision ID: 0006_cron
Revises: 0005_hygiene
Create Date: 2026-11-28

Why: cancel_stale_queued_tasks only helps if something calls it; the incident's queue rotted because
nothing ever did. Where pg_cron is available this schedules taskdb_cancel_stale_queued_all daily
(task_hygiene_settings.cleanup_schedule, default 03:15 UTC) in this database: with cron.schedule when
cron.database_name is this database, else from the cron database with cron.schedule_in_database; plus
taskdb_purge_cron_history, which keeps 14 days of cron.job_run_details for taskdb's jobs. What was
installed goes to taskdb_cron_jobs, and taskdb_cron_job_state (queue_health's cron columns) reads it
when cron.job is in another database. TASKDB_CRON=auto|require|skip decides what happens without pg_cron.
Locks: none on tasks. In the cron database: CREATE EXTENSION pg_cron if absent and allowed, and inserts
into cron.job, in one short transaction under a transaction-scoped advisory lock.
"""

from __future__ import annotations

from collections.abc import Sequence

from taskdb import cron
from taskdb.db import execute_script, scalar, transaction
from taskdb.migration import offline_mode, offline_step, online_step, revision_sql

revision: str = "0006_cron"
down_revision: str | None = "0005_hygiene"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL = revision_sql(__file__)


def upgrade() -> None:
    """Check pg_cron (require fails here, before any change), schedule the jobs, then record them."""
    if offline_mode():
        upgrade_offline()
        return
    with online_step(revision) as conn:
        plan = cron.prepare(conn)
        # The cron database first, in one transaction: if it fails, nothing anywhere has changed.
        installation = cron.schedule_jobs(conn, plan)
        with transaction(conn):
            execute_script(conn, SQL["taskdb_cron_jobs"])
            execute_script(conn, SQL["taskdb_cron_job_state"])
            if scalar(conn, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'taskdb_monitor')"):
                execute_script(conn, SQL["grants"])
            cron.record(conn, installation, revision)
        cron.warn_if_missing(plan, installation)


def upgrade_offline() -> None:
    """The same as static SQL: the record and the state function, then what the online upgrade does about pg_cron,
    decided when the script runs (OfflineScript.schedule_cron_jobs): where pg_cron keeps its jobs in this very
    database, create it if absent and schedule and record both jobs; where pg_cron cannot be used, the online
    warning (NOTICE) or, under require, its error; a cron database elsewhere: a NOTICE to run taskdb cron install."""
    mode = cron.cron_mode()
    with offline_step(revision) as sql, sql.transaction():
        sql.frozen(SQL["taskdb_cron_jobs"])
        sql.frozen(SQL["taskdb_cron_job_state"])
        sql.grants_if_role("taskdb_monitor", SQL["grants"])
        if mode == "skip":
            sql.comment("TASKDB_CRON=skip when this script was generated: no pg_cron job is installed.")
        else:
            sql.schedule_cron_jobs(mode)


def downgrade() -> None:
    """Unschedule the jobs wherever they live, drop pg_cron only if this revision created it and nothing
    else uses it, restore 0005's taskdb_cron_job_state and drop the record."""
    if offline_mode():
        downgrade_offline()
        return
    with online_step(revision) as conn:
        cron.unschedule_jobs(conn, revision)
        with transaction(conn):
            execute_script(conn, SQL["taskdb_cron_job_state_0005"])
            execute_script(conn, SQL["drop_objects"])


def downgrade_offline() -> None:
    """The same as static SQL: the jobs unscheduled where pg_cron keeps them in this database (elsewhere a NOTICE
    with the SQL to run there), then 0005's taskdb_cron_job_state and the record's drop."""
    with offline_step(revision) as sql:
        sql.unschedule_cron_jobs(revision)
        with sql.transaction():
            sql.frozen(SQL["taskdb_cron_job_state_0005"])
            sql.frozen(SQL["drop_objects"])
