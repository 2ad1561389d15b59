"""A batch meets the application's writes: it derives from the row as it locked it, not as its snapshot saw it.

A worker of the old application version claims a legacy Queued row (no user) after the batch's snapshot
was taken but before the batch locked it. The batch then locks the claimed version; deriving from the
snapshot's copy would cancel a task that is In Progress and log 'Queued' as what it replaced.
"""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa

from taskdb import backfill
from tests.helpers import Db

ROW = "00000000-0000-4000-8000-00000000beef"


def test_a_row_claimed_while_the_batch_waits_for_it_keeps_the_claim(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade("0003_backfill")
    # what an old application version still writes: no user, no run type, nothing to derive them from
    db.execute(
        "INSERT INTO tasks (id, task_type, params, status, created_at) "
        "VALUES (CAST(:id AS uuid), 'late', '{}', 'Queued', now())",
        id=ROW,
    )

    worker = db.engine.connect()
    worker.execute(sa.text("UPDATE tasks SET status = 'In Progress' WHERE id = CAST(:id AS uuid)"), {"id": ROW})
    # the worker holds the row; the batch (waiting mode: no SKIP LOCKED) takes its snapshot and queues
    outcome: dict[str, object] = {}

    def run_batch() -> None:
        with db.engine.connect() as conn:
            conn.execute(sa.text("SET application_name = 'batch-under-test'"))
            row = conn.execute(
                sa.text(backfill.render("resolve_batch", lock_clause="")),
                {
                    "after": None,
                    "batch_size": 10_000,
                    "final": True,
                    "actor": "test",
                    "job": "race",
                    "sweep": 1,
                    "mode": "waiting",
                },
            ).one()
            conn.commit()
            outcome["done"] = row.done

    batch = threading.Thread(target=run_batch)
    batch.start()
    deadline = time.monotonic() + 30
    while not db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'batch-under-test' AND wait_event_type = 'Lock'"
    ):
        assert time.monotonic() < deadline, "the batch never waited for the worker's row"
        time.sleep(0.02)
    worker.commit()  # the claim lands after the batch's snapshot
    worker.close()
    batch.join(timeout=30)
    assert not batch.is_alive()

    task = db.rows("SELECT status, legacy_reason FROM tasks WHERE id = CAST(:id AS uuid)", id=ROW)[0]
    assert task == {"status": "In Progress", "legacy_reason": "missing_user_id,missing_run_type"}
    log = db.rows(
        "SELECT previous, applied FROM task_hygiene_log WHERE task_id = CAST(:id AS uuid) AND actor = 'test'", id=ROW
    )
    assert log == [
        {"previous": {"legacy_reason": None}, "applied": {"legacy_reason": "missing_user_id,missing_run_type"}}
    ]
