"""A managed service's role defaults: a short ``idle_in_transaction_session_timeout`` and ``statement_timeout``
on the database. The upgrade lock's transaction stays idle for the whole run (it switches the idle timeout off
for itself, SET LOCAL), every batch sets its own statement_timeout, and the upgrade ends like one without them."""

from __future__ import annotations

import sqlalchemy as sa

from tests.end_state import assert_same_end_state
from tests.faults.test_killed_connections import load_bulk, run
from tests.helpers import Db, with_driver


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


def test_a_role_statement_timeout_shorter_than_an_index_build_is_one_line_that_names_it(db: Db, other_db: Db) -> None:
    """CREATE INDEX CONCURRENTLY runs outside a transaction, so only the role's statement_timeout applies to it:
    held back (here by an older snapshot, which a build must wait out) beyond that limit, it is cancelled. The
    run stops with one line naming the build, the limit and the setting to lift; lifted, the rerun finishes."""
    load_bulk(db, other_db)
    other_db.upgrade()
    name = db.url.rsplit("/", 1)[1]
    db.execute("CREATE TABLE app_report (n int)")
    db.execute(f"ALTER DATABASE {name} SET statement_timeout = '1s'")
    engine = sa.create_engine(with_driver(db.url, "psycopg"), poolclass=sa.NullPool)
    try:
        with engine.connect() as reporting:  # a report's long transaction: its snapshot outlives the 1 s
            reporting.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            reporting.exec_driver_sql("SELECT count(*) FROM app_report").scalar()
            result = run("taskdb", db, TASKDB_LOCK_TIMEOUT_MS="30000")
            reporting.rollback()
    finally:
        engine.dispose()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("taskdb:")]
    assert len(lines) == 1, result.stderr[-3000:]
    print(f"\n{lines[0]}")
    assert "CREATE INDEX CONCURRENTLY" in lines[0] and "statement_timeout = 1s" in lines[0], lines[0]
    assert "ALTER ROLE ... SET statement_timeout = 0" in lines[0], lines[0]
    db.execute(f"ALTER DATABASE {name} RESET statement_timeout")
    rerun = run("taskdb", db)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_end_state(db, other_db)
