"""A blocking transaction makes the upgrade give up within its lock budget and name the blocker; two
upgrades at once never interleave. (A killed upgrade resuming from its checkpoint:
tests/faults/test_crash_resume.py.)"""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from alembic.util import CommandError

from taskdb.upgrade_lock import UPGRADE_LOCK_KEY
from tests.helpers import Db, with_driver


def test_blocking_transaction_exhausts_retries_and_names_the_blocker(db: Db, monkeypatch) -> None:
    db.load("half_migrated")
    db.upgrade("0003_backfill")
    monkeypatch.setenv("TASKDB_LOCK_TIMEOUT_MS", "100")
    monkeypatch.setenv("TASKDB_LOCK_ATTEMPTS", "3")
    blocker_engine = sa.create_engine(
        with_driver(db.url, "psycopg"),
        poolclass=sa.NullPool,
        connect_args={"application_name": "forgotten-psql"},
    )
    with blocker_engine.connect() as blocker:
        blocker.execute(sa.text("UPDATE tasks SET attempts = attempts WHERE false"))
        blocker.execute(sa.text("LOCK TABLE tasks IN ACCESS SHARE MODE"))
        pid = blocker.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        started = time.monotonic()
        with pytest.raises(CommandError) as failure:
            db.upgrade()
        elapsed = time.monotonic() - started
        message = str(failure.value)
        assert "Failed after 3 attempts" in message
        assert f"pid {pid} (forgotten-psql, idle in transaction" in message
        assert elapsed < 30  # bounded: three 100 ms waits plus jittered backoff, not forever
        blocker.rollback()
    blocker_engine.dispose()
    # the leftover NOT VALID constraints are finished by the rerun
    db.upgrade()
    assert db.scalar("SELECT bool_and(convalidated) FROM pg_constraint WHERE conrelid = 'tasks'::regclass") is True


def test_second_upgrade_waits_then_gives_up_while_another_runs(db: Db, monkeypatch) -> None:
    monkeypatch.setenv("TASKDB_UPGRADE_LOCK_WAIT_S", "1")
    holder_engine = sa.create_engine(with_driver(db.url, "psycopg"), poolclass=sa.NullPool)
    with holder_engine.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": UPGRADE_LOCK_KEY})
        pid = holder.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        with pytest.raises(CommandError, match=f"holds the upgrade lock on this database \\(.*server pid {pid} "):
            db.upgrade()
        assert db.scalar("SELECT to_regclass('tasks')") is None  # it changed nothing
        holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": UPGRADE_LOCK_KEY})
    holder_engine.dispose()
    db.upgrade()
    assert db.scalar("SELECT to_regclass('tasks')") is not None
