"""The toy application's first schema: users, projects, and tasks in the queue's old shape.

Revision ID: toy_0001
Revises:
Create Date: 2026-01-05

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "toy_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create users, projects and tasks (no owner or run type on a task yet)."""
    op.create_table(
        "users",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("email", sa.Text),
        sa.Column("credits", sa.Numeric, nullable=False, server_default="0"),
    )
    op.create_table(
        "projects",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("user_id", UUID, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("name", sa.Text),
    )
    op.create_table(
        "tasks",
        sa.Column("id", UUID, primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column("task_type", sa.Text, nullable=False),
        sa.Column("params", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("status", sa.Text, nullable=False, server_default="Queued"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
        sa.Column("error_message", sa.Text),
        sa.Column("project_id", UUID, sa.ForeignKey("projects.id")),
        sa.Column("dependant_on", UUID),
        sa.Column("worker_id", sa.Text),
        sa.Column("output_location", sa.Text),
    )


def downgrade() -> None:
    """Drop them."""
    op.drop_table("tasks")
    op.drop_table("projects")
    op.drop_table("users")
