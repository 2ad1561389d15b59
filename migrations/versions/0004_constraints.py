"""Constraints: make bad rows unrepresentable, added NOT VALID then validated, and NOT NULLs set.

Revision ID: 0004_constraints
Revises: 0003_backfill
Create Date: 2026-11-28

Why: after the backfill every row is healthy or flagged; these constraints keep it that way whatever
the application writes next. Order: a temporary write guard (trigger tasks_taskdb_write_guard) that
refuses new rows and updates breaking a CHECK below, exactly as the CHECK will, but never the update of a
row that already breaks it; the foreign key NOT VALID; a catch-up backfill of rows written since 0003
(after it no row breaks a CHECK, and the guard lets no new one appear); every CHECK NOT VALID; the guard
dropped; VALIDATE each in its own transaction; NOT NULL via a validated CHECK; the index on user_id
CONCURRENTLY. A NOT VALID CHECK refuses every UPDATE of a row that breaks it (GitLab's incident): with the
guard, no legacy row an old application version still writes is ever refused an update.
Locks: ACCESS EXCLUSIVE (CHECK, SET NOT NULL, dropping the guard) and SHARE ROW EXCLUSIVE (the guard's
CREATE TRIGGER; the foreign key, on tasks and users) for a moment each under lock_timeout with retries;
VALIDATE scans under SHARE UPDATE EXCLUSIVE, which does not block reads or writes. Rerunning after a
failure validates leftovers, drops a leftover guard and rebuilds an INVALID index.
"""

from __future__ import annotations

from collections.abc import Sequence

from taskdb import steps
from taskdb.backfill import restore
from taskdb.catalog import table_exists
from taskdb.constraints import (
    Check,
    ForeignKey,
    Index,
    WriteGuard,
    drop_constraint,
    drop_owned,
    drop_write_guard,
    drop_write_guard_sql,
    not_null_check_name,
)
from taskdb.migration import actor, offline_mode, offline_step, online_step
from taskdb.steps.backfill import Backfill
from taskdb.steps.constraints import AddNotValid, Guarded, SetNotNull, Validate
from taskdb.steps.indexes import BuildIndex

revision: str = "0004_constraints"
down_revision: str | None = "0003_backfill"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RESTORES = (revision,)  # whose logged changes the downgrade puts back: the catch-up backfill's

LEGACY_REASONS = (
    "missing_user_id",
    "unknown_user",
    "missing_run_type",
    "invalid_run_type",
    "missing_status",
    "invalid_status",
)
_REASON = "(" + "|".join(LEGACY_REASONS) + ")"

CHECKS = (
    Check(
        "tasks_status_valid",
        "tasks",
        "status::text IN ('Queued', 'In Progress', 'Complete', 'Failed', 'Cancelled')",
        "The five states workers, the claim and the autoscaler's count understand.",
    ),
    Check(
        "tasks_attempts_nonnegative",
        "tasks",
        "attempts >= 0",
        "attempts counts tries; a negative count is a bug upstream.",
    ),
    Check(
        "tasks_legacy_reason_known",
        "tasks",
        f"legacy_reason IS NULL OR legacy_reason ~ '^{_REASON}(,{_REASON})*$'",
        "legacy_reason is a comma-separated list from a documented vocabulary (README).",
    ),
    Check(
        "tasks_healthy_has_owner_and_run_type",
        "tasks",
        # "run_type IS NOT NULL" matters: NULL IN (...) is NULL, and a CHECK lets NULL through
        "legacy_reason IS NOT NULL"
        " OR (user_id IS NOT NULL AND run_type IS NOT NULL AND run_type IN ('cloud', 'local'))",
        "A row nobody owns or no worker kind can run must be flagged, never counted as work.",
    ),
    Check(
        "tasks_flagged_not_queued",
        "tasks",
        "legacy_reason IS NULL OR status::text <> 'Queued'",
        "A flagged row is never Queued: the autoscaler must not start workers for it.",
    ),
)
USER_FK = ForeignKey(
    "tasks_user_id_fkey", "tasks", "user_id", "users(id)", "Every task's owner exists (credits, limits)."
)
# Enforces the CHECKs on new row versions while they are added (see WriteGuard): no NOT VALID window.
WRITE_GUARD = WriteGuard("tasks_taskdb_write_guard", "taskdb_write_guard_tasks", "tasks", CHECKS)
NOT_NULL = ("task_type", "params", "status", "attempts", "created_at")
USER_INDEX = Index(
    "tasks_user_id_idx",
    "tasks",
    "(user_id)",
    "Per-user counts, and deleting a user without scanning tasks for the foreign key.",
)
INDEXES = (USER_INDEX,)  # what the downgrade drops (and 0003's, after an interrupted 0004)


STEPS = (
    # From the guard on, no write adds a row breaking a CHECK; updates of rows that already do go through.
    Guarded(
        WRITE_GUARD,
        (
            AddNotValid(USER_FK),  # a NOT VALID foreign key checks updates only of user_id
            # Rows written between 0003 and the guard are backfilled now: then no row breaks a CHECK, so adding
            # them refuses no update of a legacy row, and VALIDATE finds nothing.
            Backfill("catch-up backfill of rows written since 0003_backfill"),
            *(AddNotValid(item) for item in CHECKS),
        ),
    ),
    *(Validate(item) for item in (*CHECKS, USER_FK)),
    *(SetNotNull("tasks", column) for column in NOT_NULL),
    *(BuildIndex(index) for index in INDEXES),
)


def upgrade() -> None:
    """Add the constraints NOT VALID behind the write guard, catch up rows written meanwhile, validate, set
    NOT NULLs, index."""
    steps.upgrade(revision, STEPS)


def downgrade() -> None:
    """Drop the index, constraints and NOT NULLs this revision added; undo its catch-up backfill."""
    if offline_mode():
        downgrade_offline()
        return
    with online_step(revision) as conn:
        drop_write_guard(conn, WRITE_GUARD)  # left by an interrupted upgrade
        drop_owned(conn, revision)
        for column in NOT_NULL:  # a temporary NOT NULL check left by an interrupted upgrade
            drop_constraint(conn, "tasks", not_null_check_name("tasks", column))
        if table_exists(conn, "task_hygiene_log"):
            for author in RESTORES:
                restore(conn, actor=actor(author))


def downgrade_offline() -> None:
    """The same as static SQL: the guard, the index CONCURRENTLY, constraints and NOT NULLs, the restore."""
    with offline_step(revision) as sql:
        with sql.transaction():
            sql.frozen(drop_write_guard_sql(WRITE_GUARD))
        sql.drop_indexes(revision, INDEXES)
        sql.drop_owned(revision, ("not_null", "constraint"))
        sql.drop_constraints("tasks", [not_null_check_name("tasks", column) for column in NOT_NULL])
        sql.restore([actor(author) for author in RESTORES])
