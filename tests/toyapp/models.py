"""The toy application's SQLAlchemy model, as of its release that adds ``tasks.priority`` (revision toy_0003).

It declares what the application reads and writes: its users, projects and tasks, ``user_id`` and ``run_type``
included (the application writes them; taskdb only adds them where they are missing). It knows nothing of
taskdb's tables, of ``tasks.legacy_reason`` or of taskdb's indexes and constraints: its env.py hides those from
autogenerate with taskdb.autogenerate.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    email: Mapped[str | None] = mapped_column(sa.Text)
    credits: Mapped[Decimal] = mapped_column(sa.Numeric, server_default="0")


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(UUID, sa.ForeignKey("users.id"))
    name: Mapped[str | None] = mapped_column(sa.Text)


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, server_default=sa.text("gen_random_uuid()"))
    task_type: Mapped[str] = mapped_column(sa.Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    status: Mapped[str] = mapped_column(sa.Text, server_default="Queued")
    attempts: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
    updated_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    project_id: Mapped[uuid.UUID | None] = mapped_column(UUID, sa.ForeignKey("projects.id"))
    dependant_on: Mapped[uuid.UUID | None] = mapped_column(UUID)
    user_id: Mapped[uuid.UUID | None] = mapped_column(UUID)  # toy_0002: added nullable, never backfilled
    run_type: Mapped[str | None] = mapped_column(sa.Text)  # toy_0002
    worker_id: Mapped[str | None] = mapped_column(sa.Text)
    output_location: Mapped[str | None] = mapped_column(sa.Text)
    priority: Mapped[int] = mapped_column(sa.Integer, server_default="0")  # toy_0003, this release
