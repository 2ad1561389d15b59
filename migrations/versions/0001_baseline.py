"""Baseline: adopt users, projects and tasks, or create the absent ones in the legacy shape.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-11-28

Why: taskdb must work on an empty database, on a legacy one (no alembic_version) and on the
half-migrated one of the incident. Existing tables are adopted untouched; their shape is checked
first, so a missing or mistyped column fails the upgrade before anything changes. Created tables are
recorded in taskdb_owned_objects: downgrade drops only those, and only while they hold no rows.
Locks: none on existing tables (catalog reads only).
"""

from __future__ import annotations

from collections.abc import Sequence

from taskdb import steps
from taskdb.adopt import (
    ENUM,
    INTEGER,
    JSON,
    TEXT,
    TIMESTAMP,
    UUID,
    TableSpec,
    drop_created_tables,
    drop_owned_table_if_empty,
)
from taskdb.migration import offline_mode, offline_step, online_step, revision_sql
from taskdb.steps.tables import CheckShapes, CreateMissingTables

revision: str = "0001_baseline"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL = revision_sql(__file__)

TABLES = [
    TableSpec("users", SQL["users"], {"id": UUID}),
    TableSpec("projects", SQL["projects"], {"id": UUID, "user_id": UUID}),
    TableSpec(
        "tasks",
        SQL["tasks"],
        {
            "id": UUID,
            "task_type": TEXT,
            "params": JSON,
            "status": TEXT + ENUM,
            "attempts": INTEGER,
            "created_at": TIMESTAMP,
        },
    ),
]

# Columns taskdb uses that an adopted tasks table may lack (0002 adds them); if present, of these types.
TASKS_OPTIONAL = {
    "updated_at": TIMESTAMP,
    "error_message": TEXT,
    "project_id": UUID,
    "dependant_on": UUID,
    "worker_id": TEXT,
    "user_id": UUID,
    "run_type": TEXT,
    "legacy_reason": TEXT,
}


STEPS = (
    CheckShapes(TABLES, {"tasks": TASKS_OPTIONAL}),
    CreateMissingTables(TABLES),
)


def upgrade() -> None:
    """Check the shape of every existing table, then create the absent ones."""
    steps.upgrade(revision, STEPS)


def downgrade() -> None:
    """Drop the tables this revision created that hold no rows; keep (and warn about) the others."""
    if offline_mode():
        with offline_step(revision) as sql:
            sql.drop_owned(revision, ("table",))
        return
    with online_step(revision) as conn:
        drop_created_tables(conn, revision)
        drop_owned_table_if_empty(conn)
