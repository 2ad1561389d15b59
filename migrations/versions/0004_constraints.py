"""Constraints: make bad rows unrepresentable, added NOT VALID then validated, and NOT NULLs set.

Revision ID: 0004_constraints
Revises: 0003_backfill
Create Date: 2026-11-28

Why: after the backfill every row is healthy or flagged; these constraints keep it that way whatever
the application writes next. Order: every CHECK and the foreign key NOT VALID (new writes are checked
from here on), a catch-up backfill of rows written since 0003, then VALIDATE each in its own
transaction, then NOT NULL via a validated CHECK, then the index on user_id CONCURRENTLY.
Locks: ACCESS EXCLUSIVE (CHECK, SET NOT NULL) and SHARE ROW EXCLUSIVE (foreign key, on tasks and users)
for a moment each under lock_timeout with retries; VALIDATE scans under SHARE UPDATE EXCLUSIVE, which
does not block reads or writes. Rerunning after a failure validates leftovers and rebuilds an INVALID index.
"""

from __future__ import annotations

from collections.abc import Sequence

from taskdb.backfill import restore, run_backfill
from taskdb.catalog import table_exists
from taskdb.constraints import (
    Check,
    ForeignKey,
    Index,
    add_not_valid,
    drop_constraint,
    drop_owned,
    ensure_index,
    ensure_not_null,
    not_null_check_name,
    validate,
)
from taskdb.migration import actor, offline_mode, offline_step, online_step

revision: str = "0004_constraints"
down_revision: str | None = "0003_backfill"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEGACY_REASONS = (
    "missing_user_id", "unknown_user", "missing_run_type", "invalid_run_type", "missing_status", "invalid_status",
)
_REASON = "(" + "|".join(LEGACY_REASONS) + ")"

CHECKS = (
    Check(
        "tasks_status_valid", "tasks",
        "status::text IN ('Queued', 'In Progress', 'Complete', 'Failed', 'Cancelled')",
        "The five states workers, the claim and the autoscaler's count understand.",
    ),
    Check(
        "tasks_attempts_nonnegative", "tasks", "attempts >= 0",
        "attempts counts tries; a negative count is a bug upstream.",
    ),
    Check(
        "tasks_legacy_reason_known", "tasks",
        f"legacy_reason IS NULL OR legacy_reason ~ '^{_REASON}(,{_REASON})*$'",
        "legacy_reason is a comma-separated list from a documented vocabulary (README).",
    ),
    Check(
        "tasks_healthy_has_owner_and_run_type", "tasks",
        # "run_type IS NOT NULL" matters: NULL IN (...) is NULL, and a CHECK lets NULL through
        "legacy_reason IS NOT NULL"
        " OR (user_id IS NOT NULL AND run_type IS NOT NULL AND run_type IN ('cloud', 'local'))",
        "A row nobody owns or no worker kind can run must be flagged, never counted as work.",
    ),
    Check(
        "tasks_flagged_not_queued", "tasks",
        "legacy_reason IS NULL OR status::text <> 'Queued'",
        "A flagged row is never Queued: the autoscaler must not start workers for it.",
    ),
)
USER_FK = ForeignKey(
    "tasks_user_id_fkey", "tasks", "user_id", "users(id)", "Every task's owner exists (credits, limits)."
)
NOT_NULL = ("task_type", "params", "status", "attempts", "created_at")
USER_INDEX = Index(
    "tasks_user_id_idx", "tasks", "(user_id)",
    "Per-user counts, and deleting a user without scanning tasks for the foreign key.",
)


def upgrade() -> None:
    """Add the constraints NOT VALID, catch up rows written meanwhile, validate, set NOT NULLs, index."""
    if offline_mode():
        upgrade_offline()
        return
    with online_step(revision) as conn:
        for item in (*CHECKS, USER_FK):
            add_not_valid(conn, item, revision)
        # Rows written between 0003 and the NOT VALID constraints above are backfilled now; from here
        # on the constraints refuse new bad rows, so VALIDATE finds none.
        run_backfill(conn, job=revision, actor=actor(revision))
        for item in (*CHECKS, USER_FK):
            validate(conn, item.table, item.name)
        for column in NOT_NULL:
            ensure_not_null(conn, "tasks", column, revision)
        ensure_index(conn, USER_INDEX, revision)


def upgrade_offline() -> None:
    """The same as static SQL, each step in its own transaction; the catch-up backfill is a CALL."""
    with offline_step(revision) as sql:
        for item in (*CHECKS, USER_FK):
            sql.add_not_valid(item)
        sql.backfill(revision, actor(revision))
        for item in (*CHECKS, USER_FK):
            sql.validate(item)
        for column in NOT_NULL:
            sql.ensure_not_null("tasks", column)
        sql.ensure_index(USER_INDEX)


def downgrade() -> None:
    """Drop the index, constraints and NOT NULLs this revision added; undo its catch-up backfill."""
    with online_step(revision) as conn:
        drop_owned(conn, revision)
        for column in NOT_NULL:  # a temporary NOT NULL check left by an interrupted upgrade
            drop_constraint(conn, "tasks", not_null_check_name("tasks", column))
        if table_exists(conn, "task_hygiene_log"):
            restore(conn, actor=actor(revision))
