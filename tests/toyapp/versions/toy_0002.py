"""Give tasks an owner and a run type: added nullable and never backfilled (the incident's half-migration).

Revision ID: toy_0002
Revises: toy_0001
Create Date: 2026-03-02

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "toy_0002"
down_revision: str | Sequence[str] | None = "toy_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add tasks.user_id and tasks.run_type, nullable: old rows keep NULL (taskdb repairs them)."""
    op.add_column("tasks", sa.Column("user_id", UUID))
    op.add_column("tasks", sa.Column("run_type", sa.Text))


def downgrade() -> None:
    """Drop them."""
    op.drop_column("tasks", "run_type")
    op.drop_column("tasks", "user_id")
