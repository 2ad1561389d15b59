"""Backfill and flag: give every task its user and run type, or flag it and never leave it Queued.

Revision ID: 0003_backfill
Revises: 0002_columns
Create Date: 2026-11-28

Why: constraints can only be validated once every row satisfies them, and the autoscaler must stop
counting rows no worker can process. The rules (README "Backfill rules"): user_id from the row itself
if it references a user, else the project's owner, else params.user_id, else the healthy orchestrator
task's; run_type normalised ('gpu' = 'cloud') from the row, else params.run_type, else the orchestrator
task's; a row still lacking either is flagged in legacy_reason, and Cancelled if it was Queued. Every
changed value is logged in task_hygiene_log with its previous value; downgrade restores them.
Locks: row locks only, one keyset batch (one short transaction) at a time, SKIP LOCKED; resumable. The
log's index by task is built after the backfill (CONCURRENTLY, SHARE UPDATE EXCLUSIVE on task_hygiene_log
only): kept up to date row by row it cost ~7 % of the backfill.
"""

from __future__ import annotations

from collections.abc import Sequence

from taskdb import steps
from taskdb.backfill import restore
from taskdb.catalog import table_exists
from taskdb.constraints import (
    Index,
    drop_constraint,
    drop_owned,
    drop_write_guard,
    drop_write_guard_sql,
    not_null_check_name,
)
from taskdb.db import execute_script, transaction
from taskdb.migration import actor, offline_mode, offline_step, online_step, revision_module, revision_sql
from taskdb.steps.backfill import Backfill
from taskdb.steps.indexes import BuildIndex
from taskdb.steps.objects import CreateObjects

revision: str = "0003_backfill"
down_revision: str | None = "0002_columns"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL = revision_sql(__file__)
# Whose logged changes the downgrade puts back (taskdb.downgrade_plan reads this too): an interrupted 0004's
# catch-up backfill, then this revision's backfill.
RESTORES = ("0004_constraints", revision)
OBJECTS = (
    "task_hygiene_log",
    "taskdb_backfill_progress",
    "taskdb_canonical_status",
    "taskdb_canonical_run_type",
    "taskdb_try_uuid",
)
# Built once the backfill has written its log rows: one sort instead of an index insert per row.
INDEXES = (
    Index(
        "task_hygiene_log_task_id_idx",
        "task_hygiene_log",
        "(task_id)",
        "What taskdb changed in one task, and when (SELECT ... FROM task_hygiene_log WHERE task_id = ...).",
    ),
)

STEPS = (
    CreateObjects("create task_hygiene_log, taskdb_backfill_progress and the helper functions", SQL, OBJECTS),
    Backfill(),
    *(BuildIndex(index) for index in INDEXES),
)


def upgrade() -> None:
    """Create the log, the checkpoint table and the helper functions, then run the backfill."""
    steps.upgrade(revision, STEPS)


def downgrade() -> None:
    """Restore every value the backfill changed, then drop the log, checkpoint and helper functions."""
    if offline_mode():
        downgrade_offline()
        return
    leftover = revision_module("0004_constraints")  # what an interrupted 0004 may have left: its definitions
    with online_step(revision) as conn:
        # 0004's write guard, if an interrupted 0004 left it: it would refuse restoring legacy values
        drop_write_guard(conn, leftover.WRITE_GUARD)
        # The rest of what an interrupted 0004 left (0004 is not applied, so all it owns is a leftover; a row
        # with attempts < 0 stops 0004 at VALIDATE): its NOT VALID CHECKs and temporary NOT NULL checks refused
        # the restore below (a NOT VALID CHECK still checks UPDATEs, and 'queued' is no valid status), and its
        # catch-up backfill's changes are logged under its own actor. Found by tests/faults/test_fuzz_legacy.py.
        drop_owned(conn, "0004_constraints")
        for column in leftover.NOT_NULL:
            drop_constraint(conn, "tasks", not_null_check_name("tasks", column))
        if table_exists(conn, "task_hygiene_log"):
            for author in RESTORES:
                restore(conn, actor=actor(author))
        drop_owned(conn, revision)  # the log's index (a record only: the table goes below)
        with transaction(conn):
            execute_script(conn, SQL["drop_objects"])


def downgrade_offline() -> None:
    """The same as static SQL: what an interrupted 0004 left, the restore procedure's batches, the objects."""
    leftover = revision_module("0004_constraints")
    with offline_step(revision) as sql:
        with sql.transaction():
            sql.frozen(drop_write_guard_sql(leftover.WRITE_GUARD))
        sql.drop_indexes("0004_constraints", leftover.INDEXES)
        sql.drop_owned("0004_constraints", ("not_null", "constraint"))
        sql.drop_constraints("tasks", [not_null_check_name("tasks", column) for column in leftover.NOT_NULL])
        sql.restore([actor(author) for author in RESTORES])
        sql.drop_indexes(revision, INDEXES)
        with sql.transaction():
            sql.frozen(SQL["drop_objects"])
