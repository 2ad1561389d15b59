"""Columns: add user_id, run_type and legacy_reason to tasks where missing (and the other used ones).

Revision ID: 0002_columns
Revises: 0001_baseline
Create Date: 2026-11-28

Why: the incident's rows predate user_id and run_type; legacy_reason records why a row that cannot be
repaired was flagged instead. Columns are added nullable and without a default, a catalog-only change,
and each is recorded so that downgrade drops only the columns this revision added. A status enum gets
any canonical label it lacks (PostgreSQL cannot drop enum labels, so downgrade leaves them).
Locks: ACCESS EXCLUSIVE on tasks for a moment, under lock_timeout with retries; no scan.
"""

from __future__ import annotations

from collections.abc import Sequence

from taskdb import steps
from taskdb.adopt import drop_added_columns
from taskdb.migration import offline_mode, offline_step, online_step
from taskdb.steps.columns import AddColumns, EnumLabels

revision: str = "0002_columns"
down_revision: str | None = "0001_baseline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = {
    "user_id": "uuid",
    "run_type": "text",
    "legacy_reason": "text",
    "updated_at": "timestamptz",
    "error_message": "text",
    "project_id": "uuid",
    "dependant_on": "uuid",
    "worker_id": "text",
}

STATUSES = ("Queued", "In Progress", "Complete", "Failed", "Cancelled")


STEPS = (
    AddColumns("tasks", COLUMNS),
    EnumLabels(STATUSES),
)


def upgrade() -> None:
    """Add the missing columns; give a status enum the canonical labels it lacks."""
    steps.upgrade(revision, STEPS)


def downgrade() -> None:
    """Drop the columns this revision added (enum labels stay: PostgreSQL cannot drop them)."""
    if offline_mode():
        with offline_step(revision) as sql:
            sql.drop_owned(revision, ("column",))
        return
    with online_step(revision) as conn:
        drop_added_columns(conn, "tasks", revision)
