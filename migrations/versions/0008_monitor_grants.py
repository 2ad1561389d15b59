"""Monitor grants: taskdb_monitor may read the three columns of tasks that `taskdb metrics` counts.

Revision ID: 0008_monitor_grants
Revises: 0007_log_index
Create Date: 2026-12-08

Why: the exporter counts the Queued rows per run type and the flagged ones among them from tasks itself
(queue_health has neither), so a login role granted taskdb_monitor still needed a manual
GRANT SELECT (status, run_type, legacy_reason) ON tasks, and without it every scrape answered taskdb_up 0.
This grants exactly those columns to the group role (no task's content: params, owner stay unreadable), so
membership of taskdb_monitor is enough. As in 0005, the role is created where the migration role may create
roles; elsewhere the revision warns `... may not create roles: grants skipped` and goes on. The downgrade
revokes the same three column privileges from taskdb_monitor (where the role exists), nothing else.
Locks: none on tasks (GRANT and REVOKE change only the catalog); run under lock_timeout with retries all the
same.
"""

from __future__ import annotations

from collections.abc import Sequence

from taskdb import steps
from taskdb.db import execute_script
from taskdb.locks import run_locked
from taskdb.migration import offline_mode, offline_step, online_step, revision_sql
from taskdb.steps.objects import CreateObjects

revision: str = "0008_monitor_grants"
down_revision: str | None = "0007_log_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL = revision_sql(__file__)
MONITOR = "taskdb_monitor"

STEPS = (
    CreateObjects(
        "grant taskdb_monitor SELECT (status, run_type, legacy_reason) ON tasks",
        SQL,
        (),
        locked=("tasks",),
        roles=(MONITOR,),
        lock="none on tasks (GRANT changes only the catalog), lock_timeout + retries",
    ),
)


def upgrade() -> None:
    """Grant taskdb_monitor SELECT on the columns of tasks the exporter reads."""
    steps.upgrade(revision, STEPS)


def downgrade() -> None:
    """Revoke exactly what the upgrade granted, where taskdb_monitor exists (roles are never dropped) and tasks
    has the columns."""
    if offline_mode():
        with offline_step(revision) as sql, sql.transaction():
            sql.frozen(SQL["revokes"])
        return
    with online_step(revision) as conn:
        run_locked(
            conn,
            lambda locked: execute_script(locked, SQL["revokes"]),
            relations=("tasks",),
            label="revoke taskdb_monitor SELECT (status, run_type, legacy_reason) ON tasks",
        )
