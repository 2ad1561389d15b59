"""Queue hygiene from Python: the same functions the autoscaler, the workers and pg_cron call."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from taskdb.db import rows, scalar
from taskdb.errors import TaskdbError

log = logging.getLogger("taskdb.hygiene")


def cancel_stale_queued(conn: Connection, *, actor: str, max_batches: int = 1_000_000) -> int:
    """Call cancel_stale_queued_tasks() until it returns 0; each call commits on its own (AUTOCOMMIT).

    ``actor`` is recorded in task_hygiene_log and task_hygiene_runs.
    """
    require_hygiene(conn)
    conn.execute(sa.text("SELECT set_config('taskdb.actor', :actor, false)"), {"actor": actor})
    total = 0
    try:
        for _ in range(max_batches):
            cancelled = int(scalar(conn, "SELECT cancel_stale_queued_tasks()"))
            total += cancelled
            if cancelled == 0:
                break
    finally:
        conn.execute(sa.text("SELECT set_config('taskdb.actor', '', false)"))
    if total:
        log.info("cancelled %d stale Queued tasks", total)
    return total


def claimable_task_count(conn: Connection, run_type: str = "cloud", include_active: bool = False) -> int:
    return int(scalar(conn, "SELECT claimable_task_count(:r, :a)", {"r": run_type, "a": include_active}))


def claim_next_task(conn: Connection, worker_id: str, run_type: str = "cloud") -> str | None:
    """Claim one task; returns its id, or None when nothing is claimable."""
    claimed = scalar(conn, "SELECT id::text FROM claim_next_task(:w, :r)", {"w": worker_id, "r": run_type})
    return str(claimed) if claimed else None


def require_hygiene(conn: Connection) -> None:
    """Fail clearly on a database the hygiene revision has not reached yet."""
    if not scalar(conn, "SELECT to_regprocedure('cancel_stale_queued_tasks(interval, integer)') IS NOT NULL"):
        raise TaskdbError(
            "this database has no taskdb hygiene objects (cancel_stale_queued_tasks): run `taskdb upgrade` first"
        )


def due_for_cleanup(conn: Connection) -> list[dict[str, Any]]:
    """What the cleanup would cancel now (with the settings' queued_ttl), oldest first."""
    require_hygiene(conn)
    return rows(
        conn,
        "SELECT id::text AS id, task_type, user_id::text AS user_id, run_type, created_at::text AS created_at, "
        "age::text AS age FROM stale_queued_tasks WHERE cancel_due_at < now() ORDER BY created_at, id",
    )
