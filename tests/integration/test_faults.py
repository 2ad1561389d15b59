"""A crashed backfill resumes from its checkpoint; a blocking transaction makes the upgrade give up
within its lock budget and name the blocker; two upgrades at once never interleave."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from alembic.util import CommandError

from taskdb import api
from taskdb.migration import UPGRADE_LOCK_KEY
from tests.helpers import Db, with_driver


def alembic_cmd(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "alembic", "-c", str(api.alembic_ini()), "-x", f"url={url}", *args]


def log_entries(db: Db) -> list[tuple[str, str, str, str]]:
    return sorted(
        (r["task_id"], r["action"], r["previous"], r["applied"])
        for r in db.rows("SELECT task_id::text, action, previous::text, applied::text FROM task_hygiene_log")
    )


def test_killed_backfill_resumes_from_its_checkpoint(db: Db, other_db: Db, caplog) -> None:
    # the same data twice: one database upgraded without interruption, one killed mid-backfill
    reference = other_db
    for target in (db, reference):
        target.load("half_migrated")
        target.execute(
            "INSERT INTO tasks (id, task_type, params, status, created_at) "
            "SELECT md5('bulk-' || n)::uuid, 'bulk', '{}', 'Complete', "
            "timestamptz '2025-08-01' + n * interval '1 minute' "
            "FROM generate_series(1, 400) n"
        )
    reference.upgrade()

    env = os.environ | {"TASKDB_BACKFILL_BATCH_SIZE": "10", "TASKDB_BACKFILL_DELAY_MS": "100"}
    proc = subprocess.Popen(alembic_cmd(db.url, "upgrade", "head"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = db.scalar(
                "SELECT rows_done FROM taskdb_backfill_progress WHERE job = '0003_backfill'"
            ) if db.scalar("SELECT to_regclass('taskdb_backfill_progress') IS NOT NULL") else None
            if done and done >= 100:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the backfill never got going")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    checkpoint = db.rows("SELECT last_id, rows_done, finished_at FROM taskdb_backfill_progress")[0]
    assert checkpoint["last_id"] is not None and checkpoint["finished_at"] is None
    logged_before_resume = db.scalar("SELECT count(*) FROM task_hygiene_log")
    assert logged_before_resume == checkpoint["rows_done"]  # batch and checkpoint commit together

    with caplog.at_level(logging.INFO, logger="taskdb"):
        db.upgrade()
    assert any("resuming sweep 1" in m for m in caplog.messages)
    # ...and ends exactly where the uninterrupted run did (the seeds' created_at is relative to the
    # loading time, so it is left out), with no duplicate log rows
    assert without_created_at(db.snapshot()) == without_created_at(reference.snapshot())
    assert log_entries(db) == log_entries(reference)


def without_created_at(rows: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    return {k: {c: v for c, v in r.items() if c != "created_at"} for k, r in rows.items()}


def test_blocking_transaction_exhausts_retries_and_names_the_blocker(db: Db, monkeypatch) -> None:
    db.load("half_migrated")
    db.upgrade("0003_backfill")
    monkeypatch.setenv("TASKDB_LOCK_TIMEOUT_MS", "100")
    monkeypatch.setenv("TASKDB_LOCK_ATTEMPTS", "3")
    blocker_engine = sa.create_engine(
        with_driver(db.url, "psycopg"), poolclass=sa.NullPool,
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
    assert db.scalar(
        "SELECT bool_and(convalidated) FROM pg_constraint WHERE conrelid = 'tasks'::regclass"
    ) is True


def test_second_upgrade_waits_then_gives_up_while_another_runs(db: Db, monkeypatch) -> None:
    monkeypatch.setenv("TASKDB_UPGRADE_LOCK_WAIT_S", "1")
    holder_engine = sa.create_engine(with_driver(db.url, "psycopg"), poolclass=sa.NullPool)
    with holder_engine.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": UPGRADE_LOCK_KEY})
        pid = holder.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        with pytest.raises(CommandError, match=f"another taskdb upgrade is running on this database \\(pid {pid}\\)"):
            db.upgrade()
        assert db.scalar("SELECT to_regclass('tasks')") is None  # it changed nothing
        holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": UPGRADE_LOCK_KEY})
    holder_engine.dispose()
    db.upgrade()
    assert db.scalar("SELECT to_regclass('tasks')") is not None
