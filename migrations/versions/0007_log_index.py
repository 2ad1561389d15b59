"""Log index: queue_health reads the last day's cancellations from an index, not the whole log.

Revision ID: 0007_log_index
Revises: 0006_cron
Create Date: 2026-12-05

Why: queue_health.cancelled_last_24h counted the cancellations of the last 24 hours by reading every row of
task_hygiene_log, which keeps every value taskdb ever changed (a 1,000,000-row upgrade leaves some 600,000
rows): the dashboard's and doctor's query cost grew with the history (116 ms with that log, 35 ms with an
empty one). A partial index on the cancellations' time makes it read only the last day's cancellations.
Locks: CREATE INDEX CONCURRENTLY on task_hygiene_log, SHARE UPDATE EXCLUSIVE (writes go on); none on tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

from taskdb import steps
from taskdb.constraints import Index, drop_owned
from taskdb.migration import offline_mode, offline_step, online_step
from taskdb.steps.indexes import BuildIndex

revision: str = "0007_log_index"
down_revision: str | None = "0006_cron"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    Index(
        "task_hygiene_log_cancelled_at_idx",
        "task_hygiene_log",
        "(acted_at) WHERE action = 'cancel'",
        "queue_health counts the last day's cancellations without reading the whole log.",
    ),
)
STEPS = tuple(BuildIndex(index) for index in INDEXES)


def upgrade() -> None:
    """Index the cancellations by time, CONCURRENTLY."""
    steps.upgrade(revision, STEPS)


def downgrade() -> None:
    """Drop the index this revision built (never one of that name the database already had)."""
    if offline_mode():
        with offline_step(revision) as sql:
            sql.drop_indexes(revision, INDEXES)
        return
    with online_step(revision) as conn:
        drop_owned(conn, revision)
