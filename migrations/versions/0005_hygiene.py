"""Hygiene: one definition of claimable work, the count and the claim, stale-queue cleanup, health views.

Revision ID: 0005_hygiene
Revises: 0004_constraints
Create Date: 2026-11-28

Why: the incident's count lived in application code and drifted from the claim; nothing ever retired
ancient Queued tasks. This puts the definition in the database (view taskdb_ready_tasks, used by both
claimable_task_count and claim_next_task), adds task_hygiene_settings for DBAs to tune, the batched
cancel_stale_queued_tasks with its run record, the stale_queued_tasks and queue_health views, and runs
the cleanup once so that right after the upgrade no Queued task is older than queued_ttl.
The trigger tasks_cancel_children cancels the Queued descendants of a task that becomes Failed or
Cancelled. Functions that need more rights than their callers are SECURITY DEFINER with a pinned
search_path; EXECUTE goes to the group roles taskdb_autoscaler, taskdb_worker, taskdb_monitor (created
where the migration role may create roles; never dropped by a downgrade, since roles are cluster-wide).
Locks: five partial indexes CONCURRENTLY, first (the functions and the trigger use them from the start);
CREATE TRIGGER, alone in its transaction, takes SHARE ROW EXCLUSIVE on tasks for a moment (under
lock_timeout, with retries); the cleanup locks only the rows it cancels,
one batch (one short transaction) at a time, SKIP LOCKED.
"""

from __future__ import annotations

from collections.abc import Sequence

from taskdb import steps
from taskdb.adopt import TableSpec
from taskdb.backfill import restore
from taskdb.catalog import table_exists
from taskdb.constraints import Index, drop_owned
from taskdb.db import execute_script, transaction
from taskdb.migration import actor, offline_mode, offline_step, online_step, revision_sql
from taskdb.steps.base import BRIEF_SHARE_ROW
from taskdb.steps.cleanup import CancelStale
from taskdb.steps.indexes import BuildIndex
from taskdb.steps.objects import CreateObjects
from taskdb.steps.tables import CheckShapes

revision: str = "0005_hygiene"
down_revision: str | None = "0004_constraints"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL = revision_sql(__file__)
# Whose logged changes the downgrade puts back: this revision's cleanup. Cancellations by the pg_cron job or
# `taskdb cleanup` after the upgrade stay (they are the queue's ordinary life, not the migration's).
RESTORES = (revision,)
OBJECTS = (
    "task_hygiene_settings",
    "task_hygiene_runs",
    "taskdb_run_type_arg",
    "taskdb_ready_tasks",
    "claimable_task_count",
    "claim_next_task",
    "cancel_stale_queued_tasks",
    "taskdb_cancel_stale_queued_all",
    "stale_queued_tasks",
    "taskdb_cron_job_state",
    "queue_health",
    "taskdb_cancel_children",
    "revokes",
)
TRIGGER = "tasks_cancel_children"  # its own transaction, after the objects (see the .sql)
# credits decides whose work is claimable: an adopted users table must have it (taskdb will not
# invent a balance of 0 for everyone, which would make nothing claimable).
USERS_WITH_CREDITS = TableSpec("users", "", {"id": ("uuid",), "credits": ("numeric", "integer", "bigint")})
INDEXES = (
    Index(
        "tasks_queued_run_type_created_at_idx",
        "tasks",
        "(run_type, created_at) WHERE status = 'Queued'",
        "Ready work, the count, the claim and the stale scan read only Queued rows: a small index.",
    ),
    Index(
        "tasks_in_progress_user_id_idx",
        "tasks",
        "(user_id) WHERE status = 'In Progress'",
        "The per-user concurrency limit counts In Progress rows per user.",
    ),
    Index(
        "tasks_flagged_idx",
        "tasks",
        "(legacy_reason) WHERE legacy_reason IS NOT NULL",
        "queue_health and doctor count flagged rows without scanning the table.",
    ),
    Index(
        "tasks_queued_dependant_on_idx",
        "tasks",
        "(dependant_on) WHERE status = 'Queued'",
        "tasks_cancel_children finds the Queued dependants of a failed task.",
    ),
    Index(
        "tasks_queued_orchestrator_ref_idx",
        "tasks",
        "(@schema@.taskdb_try_uuid(params ->> 'orchestrator_task_id_ref')) WHERE status = 'Queued'",
        "tasks_cancel_children finds the Queued children of a failed orchestrator task.",
    ),
)
# Group roles for least privilege (README "Roles"): the autoscaler may only count, a worker may only
# claim, a monitor may read the health views.
ROLES = ("taskdb_autoscaler", "taskdb_worker", "taskdb_monitor")


# The indexes come first: the count, the claim and the trigger use them from the moment they exist (created
# after them, claims took up to 4.8 s while the builds ran). Objects, roles and grants in one transaction
# (views and functions take ACCESS SHARE on tasks); the trigger alone in its own.
STEPS = (
    CheckShapes((USERS_WITH_CREDITS,)),
    *(BuildIndex(index) for index in INDEXES),
    CreateObjects(
        "create settings, views, the count / claim / cleanup functions, roles and grants",
        SQL,
        OBJECTS,
        locked=("tasks", "users"),
        roles=ROLES,
        lock="ACCESS SHARE on tasks and users (views, functions read them), lock_timeout + retries",
    ),
    CreateObjects(
        f"CREATE TRIGGER {TRIGGER} ON tasks",
        SQL,
        (TRIGGER,),
        locked=("tasks",),
        lock=BRIEF_SHARE_ROW.format(tables="tasks"),
        before="hygiene.before_trigger",  # the objects are committed, the trigger is not there yet
    ),
    CancelStale(),
)


def upgrade() -> None:
    """Index Queued and In Progress rows, create the hygiene objects and the trigger, then cancel what is
    already stale."""
    steps.upgrade(revision, STEPS)


def downgrade() -> None:
    """Un-cancel what this revision's cleanup cancelled, drop the indexes and the hygiene objects."""
    if offline_mode():
        downgrade_offline()
        return
    with online_step(revision) as conn:
        if table_exists(conn, "task_hygiene_log"):
            for author in RESTORES:
                restore(conn, actor=actor(author))
        drop_owned(conn, revision)
        with transaction(conn):
            execute_script(conn, SQL["drop_objects"])


def downgrade_offline() -> None:
    """The same as static SQL: the restore procedure's batches, the indexes dropped CONCURRENTLY, the objects."""
    with offline_step(revision) as sql:
        sql.restore([actor(author) for author in RESTORES])
        sql.drop_indexes(revision, INDEXES)
        sql.drop_owned(revision, ("not_null", "constraint"))
        with sql.transaction():
            sql.frozen(SQL["drop_objects"])
