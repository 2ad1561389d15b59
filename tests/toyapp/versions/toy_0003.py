"""This release: tasks get a priority.

Revision ID: toy_0003
Revises: toy_0002
Create Date: 2026-12-01

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "toy_0003"
down_revision: str | Sequence[str] | None = "toy_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add tasks.priority, NOT NULL with a default (a catalog-only change on PostgreSQL 11+)."""
    op.add_column("tasks", sa.Column("priority", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    """Drop it."""
    op.drop_column("tasks", "priority")
