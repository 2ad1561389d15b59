"""A managed service's role defaults: a short ``idle_in_transaction_session_timeout`` and ``statement_timeout``
on the database. The upgrade lock's transaction stays idle for the whole run (it switches the idle timeout off
for itself, SET LOCAL), every batch sets its own statement_timeout, and the upgrade ends like one without them."""

from __future__ import annotations

from tests.end_state import assert_same_end_state
from tests.faults.test_killed_connections import load_bulk, run
from tests.helpers import Db


def test_upgrade_under_short_role_timeouts(db: Db, other_db: Db) -> None:
    load_bulk(db, other_db)
    other_db.upgrade()
    name = db.url.rsplit("/", 1)[1]
    db.execute(f"ALTER DATABASE {name} SET idle_in_transaction_session_timeout = '1s'")
    db.execute(f"ALTER DATABASE {name} SET statement_timeout = '5s'")
    # about 40 batches 100 ms apart: the lock's transaction is idle for several times the idle timeout
    result = run("taskdb", db, TASKDB_BACKFILL_BATCH_SIZE="10", TASKDB_BACKFILL_DELAY_MS="100")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "upgrade lock's session" not in result.stderr
    db.execute(f"ALTER DATABASE {name} RESET idle_in_transaction_session_timeout")
    db.execute(f"ALTER DATABASE {name} RESET statement_timeout")
    assert_same_end_state(db, other_db)
