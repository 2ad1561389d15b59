"""Queue hygiene from Python: the cleanup the pg_cron job runs, called by the revision and `taskdb cleanup`."""

from __future__ import annotations

import logging
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from taskdb.backfill import BackfillConfig
from taskdb.db import require_primary, rows, scalar, transaction
from taskdb.errors import TaskdbError
from taskdb.failpoints import failpoint
from taskdb.locks import LockPolicy

log = logging.getLogger("taskdb.hygiene")


def cancel_stale_queued(
    conn: Connection, *, actor: str, max_batches: int = 1_000_000, pacing: BackfillConfig | None = None
) -> int:
    """Call cancel_stale_queued_tasks() until it returns 0; each call commits on its own (AUTOCOMMIT).

    ``actor`` is recorded in task_hygiene_log and task_hygiene_runs. Paced as the backfill is (``pacing``,
    default from the environment: ``TASKDB_BACKFILL_TARGET_MS`` / ``_DELAY_MS`` / ``_BATCH_SIZE``): each batch
    sized towards the target duration, at most the settings' cleanup_batch_size, with the delay between batches,
    each waiting while a replica replays too far behind (taskdb.throttle).
    A batch cancels its rows, logs them and fires the lifecycle trigger for each, so a fixed 10,000-row batch
    was what the application's writers waited behind during the upgrade (docs/benchmarks.md).
    """
    require_primary(conn, "taskdb cleanup")
    require_hygiene(conn)
    policy = LockPolicy.from_env()
    pacing = pacing or BackfillConfig.from_env()
    most = int(scalar(conn, "SELECT cleanup_batch_size FROM task_hygiene_settings"))
    size = min(pacing.batch_size, most)
    total = 0
    for _ in range(max_batches):
        pacing.throttle.wait(conn, f"a cleanup batch ({actor})")
        started = time.monotonic()
        with transaction(conn):  # the actor is transaction-local: nothing stays on a pooled server session
            # its own statement_timeout, not the role's (managed services set short ones)
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = '{policy.statement_timeout_ms}ms'")
            conn.execute(sa.text("SELECT set_config('taskdb.actor', :actor, true)"), {"actor": actor})
            cancelled = int(scalar(conn, "SELECT cancel_stale_queued_tasks(NULL, :size)", {"size": size}))
        total += cancelled
        failpoint("hygiene.after_cleanup_batch")  # this batch is committed
        if cancelled == 0:
            break
        size = min(pacing.next_size(conn, size, (time.monotonic() - started) * 1000), most)
        if pacing.batch_delay_s:
            time.sleep(pacing.batch_delay_s)
    if total:
        log.info("cancelled %d stale Queued tasks", total)
    return total


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
