"""The upgrade's own database session is killed (``pg_terminate_backend``, as an administrator, a failover
or a pooler would) mid-backfill, mid-VALIDATE CONSTRAINT and mid-CREATE INDEX CONCURRENTLY.

Each time the real command (``taskdb upgrade``, and ``alembic upgrade head`` for the backfill) must exit
non-zero with one line saying the connection was lost, where, and to rerun (no traceback, no password);
the rerun must exit 0 and end exactly where an uninterrupted run on the same data ends: the same row
checksum per task, no INVALID index, no NOT VALID constraint, the same log without duplicates.

The session is found the way an operator finds it: while taskdb's upgrade lock is held (``pg_locks``), the
backend named ``taskdb`` in ``pg_stat_activity`` (the lock's own session is named ``taskdb upgrade …``).
A VALIDATE or an index build only lasts milliseconds on test data, so another session holds a lock (or a
snapshot) that makes the statement visibly wait, then the upgrade's session is killed while it is
*inside* that statement.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from taskdb import api
from taskdb.upgrade_lock import UPGRADE_LOCK_KEY
from tests.end_state import assert_same_end_state
from tests.helpers import Db, with_driver

URL_VARS = ("TASKDB_DATABASE_URL", "DATABASE_URL")
TERMINATED = "terminating connection due to administrator command"


# -- running the real commands ------------------------------------------------------------------------


def command(front_end: str) -> list[str]:
    """``taskdb upgrade`` or ``alembic upgrade head``; the URL (with its password) only in the environment."""
    if front_end == "taskdb":
        return [sys.executable, "-m", "taskdb.cli", "upgrade"]
    return [sys.executable, "-m", "alembic", "-c", str(api.alembic_ini()), "upgrade", "head"]


def environment(db: Db, **settings: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in URL_VARS and not k.startswith("TASKDB_")}
    return base | {"TASKDB_DATABASE_URL": db.url, "PYTHONUNBUFFERED": "1"} | settings


def run(front_end: str, db: Db, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(front_end), env=environment(db, **settings), capture_output=True, text=True, timeout=180
    )


@contextmanager
def started(front_end: str, db: Db, **settings: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        command(front_end),
        env=environment(db, **settings),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)


def wait_for(what: str, probe: Callable[[], Any], proc: subprocess.Popen[str], timeout: float = 60) -> Any:
    """Poll ``probe`` until it returns something truthy; fail early if the upgrade ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the upgrade ended (exit {proc.returncode}) before {what}:\n{err[-3000:]}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def upgrade_session(db: Db) -> dict[str, Any] | None:
    """The backend running the upgrade's steps (application_name taskdb; the upgrade lock's own session is
    named ``taskdb upgrade <host>:<pid>`` while it holds the lock)."""
    found = db.rows(
        """
        SELECT a.pid, a.application_name, a.state, a.wait_event_type, a.wait_event, a.query
        FROM pg_stat_activity a
        WHERE a.datname = current_database() AND a.application_name = 'taskdb'
          AND EXISTS (SELECT FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
                      AND ((l.classid::bigint << 32) | l.objid::bigint) = :k)
        """,
        k=UPGRADE_LOCK_KEY,
    )
    return found[0] if len(found) == 1 else None


def terminate(db: Db, pid: int) -> None:
    assert db.scalar("SELECT pg_terminate_backend(:pid)", pid=pid) is True


# A busy loop on the server: terminates the upgrade's backend (application_name taskdb) as soon as it runs a
# statement matching the pattern, and says what it was doing. Python polling would miss a 5 ms statement.
KILL_WHEN_RUNNING = """
CREATE FUNCTION pg_temp.kill_when_running(p_pattern text, p_timeout interval)
RETURNS TABLE (pid integer, state text, wait_event_type text, query text)
LANGUAGE plpgsql AS $$
DECLARE
    v_deadline timestamptz := clock_timestamp() + p_timeout;
BEGIN
    LOOP
        PERFORM pg_stat_clear_snapshot();  -- pg_stat_activity is read once per transaction otherwise
        RETURN QUERY
            SELECT a.pid, a.state, a.wait_event_type, a.query FROM pg_stat_activity a
            WHERE a.datname = current_database() AND a.application_name = 'taskdb'
              AND a.state = 'active' AND a.query LIKE p_pattern AND pg_terminate_backend(a.pid);
        IF FOUND THEN
            RETURN;
        END IF;
        IF clock_timestamp() > v_deadline THEN
            RAISE EXCEPTION 'no statement like % ran within %', p_pattern, p_timeout;
        END IF;
    END LOOP;
END
$$
"""


@contextmanager
def watcher(db: Db, pattern: str) -> Iterator[Future[dict[str, Any]]]:
    """Run the server-side watcher in a thread while the body runs the upgrade; yields its result."""
    engine = sa.create_engine(
        with_driver(db.url, "psycopg"), poolclass=sa.NullPool, connect_args={"application_name": "watcher"}
    )
    conn = engine.connect()
    conn.execute(sa.text(KILL_WHEN_RUNNING))

    def watch() -> dict[str, Any]:
        found = conn.execute(
            sa.text("SELECT * FROM pg_temp.kill_when_running(:p, interval '120 seconds')"), {"p": pattern}
        )
        return dict(found.one()._mapping)

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        running = pool.submit(watch)
        time.sleep(0.2)  # the watcher is looping before the upgrade starts
        yield running
    finally:
        if not running.done():
            conn.connection.dbapi_connection.cancel()  # type: ignore[union-attr]
        pool.shutdown(wait=True)
        conn.close()
        engine.dispose()


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# -- what the failed run must say ---------------------------------------------------------------------


def assert_clear_failure(db: Db, result: subprocess.CompletedProcess[str], revision: str, *more: str) -> str:
    """Non-zero, no traceback, no password, and exactly one line that says what happened, where, what to do."""
    output = result.stdout + result.stderr
    assert result.returncode not in (0, None), output[-3000:]
    assert "Traceback" not in output, output[-5000:]
    password = make_url(db.url).password
    assert password and password not in output and quote(password, safe="") not in output
    # taskdb prints it once on stderr; Alembic's CLI prints "FAILED: ..." on stdout and logs it as an ERROR
    prefix = r"^(taskdb: |FAILED: |ERROR \[alembic\.util\.messaging\] )(?=the database connection was lost )"
    lines = [line for line in output.splitlines() if "connection was lost" in line]
    assert lines and all(re.match(prefix, line) for line in lines), output[-3000:]
    messages = {re.sub(prefix, "", line) for line in lines}
    assert len(messages) == 1, lines
    line = messages.pop()
    for needed in (TERMINATED, f"in revision {revision}", "Rerun the same command", *more):
        assert needed in line, f"{needed!r} not in {line!r}"
    return line


def load_bulk(*targets: Db, rows: int = 400) -> None:
    """The incident plus ``rows`` old Complete rows without an owner (each one is flagged and logged)."""
    for target in targets:
        target.load("half_migrated")
        target.execute(
            "INSERT INTO tasks (id, task_type, params, status, created_at) "
            "SELECT md5('bulk-' || n)::uuid, 'bulk', '{}', 'Complete', "
            "timestamptz '2025-08-01' + n * interval '1 minute' FROM generate_series(1, :rows) n",
            rows=rows,
        )


@pytest.fixture
def reference(other_db: Db) -> Db:
    return other_db


# -- the scenarios ------------------------------------------------------------------------------------


@pytest.mark.parametrize("front_end", ["taskdb", "alembic"])
def test_session_killed_mid_backfill(db: Db, reference: Db, front_end: str) -> None:
    load_bulk(db, reference)
    reference.upgrade()

    slow = {"TASKDB_BACKFILL_BATCH_SIZE": "10", "TASKDB_BACKFILL_DELAY_MS": "100"}
    with started(front_end, db, **slow) as proc:
        wait_for(
            "50 rows backfilled",
            lambda: (
                db.scalar("SELECT to_regclass('taskdb_backfill_progress') IS NOT NULL")
                and db.scalar("SELECT rows_done >= 50 FROM taskdb_backfill_progress WHERE job = '0003_backfill'")
            ),
            proc,
        )
        session = upgrade_session(db)
        assert session is not None and session["application_name"] == "taskdb"
        terminate(db, session["pid"])
        failed = finish(proc)
    checkpoint = db.rows("SELECT rows_done, finished_at FROM taskdb_backfill_progress")[0]
    assert checkpoint["finished_at"] is None and 50 <= checkpoint["rows_done"] < 450  # killed mid-backfill
    assert db.scalar("SELECT version_num FROM taskdb_alembic_version") == "0002_columns"
    assert_clear_failure(db, failed, "0003_backfill", "step backfill / flag the rows that need it")

    rerun = run(front_end, db)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "backfill 0003_backfill: resuming sweep 1" in rerun.stderr  # from the checkpoint, not from scratch
    assert_same_end_state(db, reference)


def test_session_killed_mid_validate_constraint(db: Db, reference: Db) -> None:
    # 100,000 healthy rows: each VALIDATE scans them for tens of milliseconds, long enough for a watcher on
    # the server, which terminates the upgrade's backend the moment it starts one (20,000 rows, a few ms each,
    # let a busy machine's watcher miss every one of them)
    for target in (db, reference):
        target.load("half_migrated")
        target.execute(
            "INSERT INTO tasks (id, task_type, params, status, created_at, user_id, run_type) "
            "SELECT md5('healthy-' || n)::uuid, 'bulk', '{}', 'Complete', "
            "timestamptz '2025-09-01' + n * interval '1 second', md5('user-alice')::uuid, 'cloud' "
            "FROM generate_series(1, 100000) n"
        )
    reference.upgrade()
    # 0003 ends with a CREATE INDEX CONCURRENTLY, which waits for every older transaction: the watcher's too
    db.upgrade("0003_backfill")

    with watcher(db, "ALTER TABLE tasks VALIDATE CONSTRAINT %") as killed:
        failed = run("taskdb", db)
    victim = killed.result(timeout=60)
    assert victim["state"] == "active"  # inside the statement, not between two
    name = victim["query"].split("VALIDATE CONSTRAINT")[1].split()[0]
    # the VALIDATE was rolled back with the session: the constraint is left NOT VALID for the rerun
    assert db.scalar("SELECT convalidated FROM pg_constraint WHERE conname = :n", n=name) is False
    assert_clear_failure(
        db,
        failed,
        "0004_constraints",
        f"step VALIDATE CONSTRAINT {name} running",
        f"`ALTER TABLE tasks VALIDATE CONSTRAINT {name}`",
    )

    rerun = run("taskdb", db)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_end_state(db, reference)


def test_session_killed_mid_create_index_concurrently(db: Db, reference: Db) -> None:
    for target in (db, reference):
        target.load("half_migrated")
    reference.upgrade()

    # An open REPEATABLE READ transaction (a report, a forgotten psql) holds a snapshot: CREATE INDEX
    # CONCURRENTLY builds the index, then waits for that snapshot to go before marking the index valid.
    holder_engine = sa.create_engine(
        with_driver(db.url, "psycopg"), poolclass=sa.NullPool, connect_args={"application_name": "report"}
    )
    try:
        with holder_engine.connect() as holder:
            holder.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            holder.execute(sa.text("SELECT 1"))
            with started("taskdb", db, TASKDB_LOCK_TIMEOUT_MS="60000") as proc:
                session = wait_for(
                    "CREATE INDEX CONCURRENTLY waiting",
                    lambda: (
                        (s := upgrade_session(db))
                        and s["wait_event_type"] == "Lock"
                        and s["query"].startswith("CREATE INDEX CONCURRENTLY")
                        and s
                    ),
                    proc,
                )
                name = session["query"].split("IF NOT EXISTS")[1].split()[0]
                phase = db.scalar("SELECT phase FROM pg_stat_progress_create_index WHERE pid = :p", p=session["pid"])
                assert phase and phase.startswith("waiting for")
                terminate(db, session["pid"])
                failed = finish(proc)
            holder.rollback()
    finally:
        holder_engine.dispose()
    # the killed build left its index behind INVALID
    assert db.scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:n)", n=name) is False
    # the first index build on the way: 0003's index of the log by task, once its backfill is done
    assert name == "task_hygiene_log_task_id_idx"
    assert_clear_failure(
        db,
        failed,
        "0003_backfill",
        f"step CREATE INDEX CONCURRENTLY {name} ON task_hygiene_log",
        "`CREATE INDEX CONCURRENTLY",
    )

    rerun = run("taskdb", db)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"index {name} is INVALID (an earlier build was interrupted): rebuilding it" in rerun.stderr
    assert_same_end_state(db, reference)


def test_the_upgrade_lock_session_killed_mid_backfill(db: Db, reference: Db) -> None:
    """An administrator (or a pooler) ends the session that holds the upgrade lock: the upgrade notices at the
    end of the revision it is running, stops before the next one (another upgrade could have the lock by
    then), and says so in one line; the rerun finishes."""
    load_bulk(db, reference)
    reference.upgrade()
    slow = {"TASKDB_BACKFILL_BATCH_SIZE": "10", "TASKDB_BACKFILL_DELAY_MS": "50"}
    with started("taskdb", db, **slow) as proc:
        holder = wait_for(
            "the backfill under the upgrade lock",
            lambda: (
                db.scalar("SELECT to_regclass('taskdb_backfill_progress') IS NOT NULL")
                and db.scalar("SELECT rows_done >= 20 FROM taskdb_backfill_progress WHERE job = '0003_backfill'")
                and db.scalar(
                    "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE 'taskdb upgrade %' "
                    "AND ((l.classid::bigint << 32) | l.objid::bigint) = :k",
                    k=UPGRADE_LOCK_KEY,
                )
            ),
            proc,
        )
        terminate(db, holder)
        failed = finish(proc)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr
    assert "the upgrade lock's session" in failed.stderr and "Rerun the same command" in failed.stderr
    assert db.scalar("SELECT version_num FROM taskdb_alembic_version") == "0002_columns"  # stopped before moving on
    rerun = run("taskdb", db)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_end_state(db, reference)
