"""A forgotten transaction holds a lock on ``tasks`` while ``taskdb upgrade`` runs and the application writes.

The blocker is another session left idle in transaction: (a) after UPDATEing one row (ROW EXCLUSIVE),
(b) after ``LOCK TABLE tasks IN ACCESS SHARE MODE``. It meets the upgrade at three steps: 0002's ADD COLUMN
and 0004's ADD CONSTRAINT (ACCESS EXCLUSIVE) and 0005's CREATE TRIGGER (SHARE ROW EXCLUSIVE). Meanwhile
application writers (threads, each its own connection, autocommit) loop over insert a healthy task, claim
one (``FOR UPDATE SKIP LOCKED``), complete it, timing every statement.

A DDL statement waiting for its lock makes every later conflicting request queue behind it: without a
lock_timeout the writers would wait as long as the blocker holds (15 s here). The upgrade (the real CLI,
lock_timeout 300 ms, 3 attempts) must keep the writers' worst wait near its lock_timeout, retry, then exit 3
naming the blocker's pid, application_name, state and how long its transaction has been open; after the
blocker rolls back, the rerun exits 0 and the data ends as an uninterrupted run's. A control (a plain DDL
with a 3 s lock_timeout) shows the writers' timing does see queueing when it happens.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from tests.end_state import assert_same_end_state
from tests.faults.test_killed_connections import run
from tests.helpers import Db, task_id, user_id, with_driver

LOCK_TIMEOUT_MS = 300
ATTEMPTS = 3
HOLD_S = 15.0  # how long the blocker keeps its transaction open
MARGIN_S = 1.0  # the writers' worst wait may exceed the lock_timeout by this much (a loaded 2-core machine)
CONTROL_TIMEOUT_S = 3.0
WRITER_TASK_TYPE = "app-writer"


# -- the application's writers ------------------------------------------------------------------------

INSERT = (
    "INSERT INTO tasks (id, task_type, params, status, created_at, user_id, run_type) "
    f"VALUES (gen_random_uuid(), '{WRITER_TASK_TYPE}', '{{}}', 'Queued', now(), %s, 'cloud')"
)
CLAIM = (
    "UPDATE tasks SET status = 'In Progress', worker_id = %s, attempts = attempts + 1, updated_at = now() "
    "WHERE id = (SELECT id FROM tasks WHERE task_type = %s AND status = 'Queued' "
    "ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id"
)
COMPLETE = "UPDATE tasks SET status = 'Complete', updated_at = now() WHERE id = %s"


@dataclass
class Timing:
    started: float  # time.monotonic()
    seconds: float
    kind: str


@dataclass
class Writers:
    """``count`` threads doing what the application does, each statement in its own transaction, timed."""

    url: str
    count: int = 3
    timings: list[Timing] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Writers:
        for n in range(self.count):
            thread = threading.Thread(target=self.write, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)
            assert not thread.is_alive(), "a writer is stuck"

    def write(self, n: int) -> None:
        owner = user_id("alice")
        try:
            with psycopg.connect(self.url, autocommit=True, application_name=f"app-writer-{n}") as conn:
                conn.execute("SET statement_timeout = '120s'")  # a broken test must not hang forever
                while not self.stop.is_set():
                    if n == 0:  # the three in one transaction that does a little more work: locks held 50 ms
                        with conn.transaction():
                            self.iteration(conn, n, owner)
                            conn.execute("SELECT pg_sleep(0.05)")
                    else:
                        self.iteration(conn, n, owner)
                    time.sleep(0.02)
        except Exception as exc:  # the test asserts there are none
            self.errors.append(f"writer {n}: {type(exc).__name__}: {exc}")

    def iteration(self, conn: psycopg.Connection[Any], n: int, owner: str) -> None:
        self.timed(conn, "insert", INSERT, (owner,))
        claimed = self.timed(conn, "claim", CLAIM, (f"worker-{n}", WRITER_TASK_TYPE))
        if claimed:
            self.timed(conn, "complete", COMPLETE, (claimed[0],))

    def timed(self, conn: psycopg.Connection[Any], kind: str, sql: str, params: tuple[Any, ...]) -> Any:
        started = time.monotonic()
        cursor = conn.execute(sql, params)
        row = cursor.fetchone() if cursor.description else None
        self.timings.append(Timing(started, time.monotonic() - started, kind))
        return row

    def worst(self, start: float, end: float) -> Timing:
        """The slowest statement that was running at some moment of [start, end]."""
        during = [t for t in self.timings if t.started <= end and t.started + t.seconds >= start]
        assert during, "no writer statement ran in the window"
        return max(during, key=lambda t: t.seconds)

    def count_in(self, start: float, end: float) -> int:
        return sum(1 for t in self.timings if start <= t.started <= end)


# -- the scenarios ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    start_at: str  # the revision the database is at when the blocker arrives
    blocker_sql: tuple[str, ...]  # what the blocker runs before it stays idle in transaction
    holds: str  # what the message must say it holds
    waited_for: str  # what the upgrade could not get its lock for
    queues_writers: bool = True  # the step's lock conflicts with the writers' (CREATE INDEX CONCURRENTLY: no)
    control: bool = False


UPDATE_ONE_ROW = ("UPDATE tasks SET attempts = attempts WHERE id = :id",)
CASES = {
    "row-update-vs-0002-add-column": Case(
        "0001_baseline",
        UPDATE_ONE_ROW,
        "RowExclusiveLock on tasks",
        'ALTER TABLE "tasks" ADD COLUMN',
        control=True,
    ),
    "lock-access-share-vs-0004-add-constraint": Case(
        "0003_backfill",
        ("LOCK TABLE tasks IN ACCESS SHARE MODE",),
        "AccessShareLock on tasks",
        "ALTER TABLE tasks ADD CONSTRAINT tasks_status_valid CHECK",
    ),
    # 0005 builds its indexes before it creates the functions and the trigger: a writer's open transaction
    # makes the first concurrent build wait (for the lockers of tasks), which queues no other writer.
    "row-update-vs-0005-create-index-concurrently": Case(
        "0004_constraints",
        UPDATE_ONE_ROW,
        "RowExclusiveLock on tasks",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_queued_run_type_created_at_idx",
        queues_writers=False,
    ),
    # A report in REPEATABLE READ holds no lock on tasks, only a snapshot: CREATE INDEX CONCURRENTLY waits for
    # it after building the index, and its lock_timeout leaves the index INVALID. Each retry must rebuild it
    # (IF NOT EXISTS alone would skip it and "succeed" with an INVALID index: a bug this found).
    "snapshot-vs-0004-create-index-concurrently": Case(
        "0003_backfill",
        ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "SELECT count(*) FROM users"),
        "a snapshot on this database",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_user_id_idx",
        queues_writers=False,
    ),
}


def plain(url: str) -> str:
    return with_driver(url, "psycopg").replace("postgresql+psycopg://", "postgresql://", 1)


def seconds(interval: str) -> int:
    hours, minutes, secs = (int(part) for part in interval.split(":"))
    return hours * 3600 + minutes * 60 + secs


@pytest.mark.slow
@pytest.mark.parametrize("case_id", list(CASES))
def test_blocking_transaction_with_writers(db: Db, other_db: Db, case_id: str, record_property) -> None:
    case = CASES[case_id]
    reference = other_db
    for target in (db, reference):
        target.load("half_migrated")
    reference.upgrade()
    db.upgrade(case.start_at)

    writers = Writers(plain(db.url)).start()
    blocker_engine = sa.create_engine(
        with_driver(db.url, "psycopg"), poolclass=sa.NullPool, connect_args={"application_name": "forgotten-psql"}
    )
    control: dict[str, float] = {}
    try:
        time.sleep(0.5)  # the writers are in their loop
        with blocker_engine.connect() as blocker:
            for statement in case.blocker_sql:
                blocker.execute(sa.text(statement), {"id": task_id("healthy-1")})
            held_since = time.monotonic()
            pid = blocker.execute(sa.text("SELECT pg_backend_pid()")).scalar()

            upgrade_started = time.monotonic()
            failed = run("taskdb", db, TASKDB_LOCK_TIMEOUT_MS=str(LOCK_TIMEOUT_MS), TASKDB_LOCK_ATTEMPTS=str(ATTEMPTS))
            upgrade_ended = time.monotonic()

            if case.control:
                control = run_control(db, writers)
            assert time.monotonic() - held_since < HOLD_S, "the upgrade outlived the blocker: nothing was shown"
            time.sleep(max(0.0, HOLD_S - (time.monotonic() - held_since)))
            blocker.rollback()
            held = time.monotonic() - held_since
        time.sleep(0.3)
    finally:
        writers.finish()
        blocker_engine.dispose()

    # --- the writers never queued behind the upgrade for much longer than its lock_timeout
    assert writers.errors == []
    during_upgrade = writers.worst(upgrade_started, upgrade_ended)
    outside_control = [
        t
        for t in writers.timings
        if not control or t.started + t.seconds < control["start"] or t.started > control["end"]
    ]
    worst_while_held = max(t.seconds for t in outside_control if held_since <= t.started <= held_since + held)
    figures = {
        "lock_timeout_s": LOCK_TIMEOUT_MS / 1000,
        "blocker_held_s": round(held, 1),
        "upgrade_s": round(upgrade_ended - upgrade_started, 1),
        "writer_statements_during_upgrade": writers.count_in(upgrade_started, upgrade_ended),
        "writer_worst_wait_during_upgrade_s": round(during_upgrade.seconds, 3),
        "writer_worst_wait_while_held_s": round(worst_while_held, 3),
        "writer_worst_wait_behind_control_ddl_s": round(control.get("worst", 0.0), 3),
    }
    record_property("writer_waits", figures)
    print(f"\n{case_id}: {figures}")
    assert figures["writer_statements_during_upgrade"] >= 10  # they kept working throughout
    # they did queue behind the upgrade's lock request (the timing sees it), for no longer than its timeout
    if case.queues_writers:
        assert during_upgrade.seconds >= LOCK_TIMEOUT_MS / 1000 / 2, figures
    assert worst_while_held < LOCK_TIMEOUT_MS / 1000 + MARGIN_S < HOLD_S, figures
    if case.control:  # the same writers behind a DDL that waits 3 s: the timing would have caught it
        assert control["worst"] >= CONTROL_TIMEOUT_S - 0.5, figures

    # --- it retried within its bounds, then exit 3 naming the blocker
    output = failed.stdout + failed.stderr
    assert failed.returncode == 3, output[-3000:]
    assert "Traceback" not in output
    for attempt in range(1, ATTEMPTS):  # the blocker first (oldest transaction first)
        assert re.search(rf"\(attempt {attempt}/{ATTEMPTS}\), held by pids \[{pid}[,\]]", failed.stderr), failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith(f"taskdb: Failed after {ATTEMPTS} attempts to take the lock for: {case.waited_for}"), line
    named = re.search(
        rf" -- blocked by: pid {pid} \(forgotten-psql, idle in transaction, transaction open (\d\d:\d\d:\d\d), "
        rf"holds {case.holds}\)",
        line,
    )
    assert named, line
    assert 1 <= seconds(named.group(1)) <= upgrade_ended - held_since + 1  # how long it has been open
    # the writers that had queued behind the upgrade's request hold their locks the moment it gives up: they
    # are not what blocked it, and naming them would send the DBA after the wrong sessions
    assert "app-writer" not in line, line
    assert "rerun when the blocker is gone" in line
    if not case.queues_writers:  # the last attempt's index is left INVALID, for the rerun to rebuild
        index = case.waited_for.split()[-1]
        assert db.scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:i)", i=index) is False

    # --- the blocker is gone: the rerun finishes, and the data is what an uninterrupted run gives
    rerun = run("taskdb", db)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_end_state(db, reference, besides_task_type=WRITER_TASK_TYPE)
    assert (
        db.scalar(
            "SELECT count(*) FROM tasks WHERE task_type = :tt AND (legacy_reason IS NOT NULL OR user_id IS NULL "
            "OR run_type IS DISTINCT FROM 'cloud' OR status NOT IN ('Queued', 'In Progress', 'Complete'))",
            tt=WRITER_TASK_TYPE,
        )
        == 0
    )
    assert (
        db.scalar(
            "SELECT count(*) FROM task_hygiene_log l JOIN tasks t ON t.id = l.task_id WHERE t.task_type = :tt",
            tt=WRITER_TASK_TYPE,
        )
        == 0
    )


def run_control(db: Db, writers: Writers) -> dict[str, float]:
    """A DDL statement as a naive migration runs it: waiting (3 s here) behind the blocker. The writers queue
    behind it for all that time: proof that the timing above would show it if the upgrade did the same."""
    engine = sa.create_engine(with_driver(db.url, "psycopg"), poolclass=sa.NullPool)
    try:
        with engine.connect() as naive:
            naive.execute(sa.text(f"SET lock_timeout = '{int(CONTROL_TIMEOUT_S * 1000)}ms'"))
            start = time.monotonic()
            with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                naive.execute(sa.text("ALTER TABLE tasks ADD COLUMN naive_probe integer"))
            end = time.monotonic()
            naive.rollback()
    finally:
        engine.dispose()
    time.sleep(0.2)  # the statements that queued behind it have finished
    return {"start": start, "end": end, "worst": writers.worst(start, end).seconds}
