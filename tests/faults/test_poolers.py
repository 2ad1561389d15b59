"""taskdb behind Debian's PgBouncer, as our users connect (Supabase's port 6543 is transaction pooling), and two
pods upgrading at the same moment.

Application workers share the pool with taskdb: in each of their transactions they write a row and probe the
server session they landed on for anything taskdb left there: a session-level setting (``pg_settings.source =
'session'``, other than the few PgBouncer itself sets for each client), a read-only default, an advisory lock,
a prepared statement, a temporary object. With ``pool_mode = transaction`` and a pool of 3 for four workers and
taskdb, every server connection passes between taskdb and the workers many times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from taskdb.testing.base import PostgresServer
from taskdb.testing.pgbouncer import PgBouncer, pgbouncer_available
from taskdb.upgrade_lock import UPGRADE_LOCK_KEY
from tests.end_state import assert_same_end_state, row_checksums
from tests.helpers import DRIVERS, HEAD, Db, schema_db, with_driver

pytestmark = pytest.mark.skipif(not pgbouncer_available(), reason="needs Debian's pgbouncer (scripts/setup)")

URL_VARS = ("TASKDB_DATABASE_URL", "DATABASE_URL")
# What PgBouncer sets on a server connection for each client it links (its tracked startup parameters).
POOLER_OWN = ("application_name", "client_encoding", "DateStyle", "TimeZone", "standard_conforming_strings")

PROBE = f"""
SELECT pg_backend_pid() AS pid,
       current_setting('transaction_read_only') AS read_only,
       (SELECT string_agg(name || '=' || setting, ', ') FROM pg_settings
        WHERE source = 'session' AND name NOT IN ({", ".join(f"'{n}'" for n in POOLER_OWN)})) AS session_settings,
       (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory_locks,
       (SELECT count(*) FROM pg_prepared_statements) AS prepared_statements,
       (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) AS temp_objects
"""


@dataclass
class Workers:
    """``count`` application workers writing through ``conninfo``, each transaction probed."""

    conninfo: str
    count: int = 4
    table: str = "app_events"  # schema-qualified where the queue is not in the workers' search_path
    writes: int = 0
    backends: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    leaks: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def work(self, number: int) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self.stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.conninfo, prepare_threshold=None, application_name=f"worker {number}")
                with conn.transaction():
                    found = conn.execute(PROBE).fetchone()
                    assert found is not None
                    pid, read_only, settings, advisory, prepared, temp = found
                    self.backends.add(pid)
                    if read_only != "off" or settings or advisory or prepared or temp:
                        self.leaks.append(
                            {
                                "pid": pid,
                                "read_only": read_only,
                                "settings": settings,
                                "advisory_locks": advisory,
                                "prepared": prepared,
                                "temp": temp,
                            }
                        )
                    conn.execute(f"INSERT INTO {self.table} (worker) VALUES (%s)", (number,))
                self.writes += 1
            except psycopg.Error as exc:
                self.errors.append(f"worker {number}: {str(exc).strip().splitlines()[0]}")
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(0.005)
        if conn is not None:
            conn.close()

    @contextmanager
    def running(self) -> Iterator[Workers]:
        threads = [threading.Thread(target=self.work, args=(n,), daemon=True) for n in range(self.count)]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(30)

    def assert_untouched(self, minimum_writes: int = 20) -> None:
        assert self.errors == [], self.errors[:5]
        assert self.leaks == [], self.leaks[:5]
        assert self.writes >= minimum_writes


def taskdb(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in URL_VARS and not k.startswith("TASKDB_")}
    return subprocess.run(
        [sys.executable, "-m", "taskdb.cli", *args],
        env=base | {"TASKDB_DATABASE_URL": url} | env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def ok(result: subprocess.CompletedProcess[str], *codes: int) -> subprocess.CompletedProcess[str]:
    assert result.returncode in (codes or (0,)), result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def prepare(db: Db, bulk: int = 400) -> None:
    db.load("half_migrated")
    db.execute(
        "INSERT INTO tasks (id, task_type, params, status, created_at) "
        "SELECT md5('bulk-' || n)::uuid, 'bulk', '{}', 'Complete', "
        "timestamptz '2025-08-01' + n * interval '1 minute' FROM generate_series(1, :rows) n",
        rows=bulk,
    )
    db.execute("CREATE TABLE app_events (id bigserial PRIMARY KEY, worker int NOT NULL, at timestamptz DEFAULT now())")


def database_of(db: Db) -> str:
    return db.url.rsplit("/", 1)[1].split("?")[0]


def upgrade_locks_left(server: PostgresServer) -> int:
    return int(
        server.fetch_value(
            f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            f"AND ((classid::bigint << 32) | objid::bigint) = {UPGRADE_LOCK_KEY}"
        )
    )


@pytest.fixture(scope="module")
def transaction_pooler(taskdb_pg_server: PostgresServer) -> Iterator[PgBouncer]:
    with PgBouncer(taskdb_pg_server, mode="transaction", pool_size=3) as pooler:
        yield pooler


@pytest.fixture(scope="module")
def session_pooler(taskdb_pg_server: PostgresServer) -> Iterator[PgBouncer]:
    with PgBouncer(taskdb_pg_server, mode="session", pool_size=10) as pooler:
        yield pooler


@pytest.mark.parametrize("driver", DRIVERS)
def test_every_command_through_a_transaction_pooler_leaves_the_workers_nothing(
    db: Db, other_db: Db, taskdb_pg_server: PostgresServer, transaction_pooler: PgBouncer, driver: str
) -> None:
    for target in (db, other_db):
        prepare(target)
    other_db.upgrade()  # the reference: a direct connection, no one else on it
    url = transaction_pooler.url(database_of(db), driver)
    workers = Workers(transaction_pooler.conninfo(database_of(db)))
    with workers.running():
        plan = json.loads(ok(taskdb(url, "plan", "--json")).stdout)
        assert plan["rows"] is not None
        # small batches: many transactions, so the server connections change hands between taskdb and workers
        up = json.loads(ok(taskdb(url, "upgrade", "--json", TASKDB_BACKFILL_BATCH_SIZE="25")).stdout)
        assert up["to_revision"] == HEAD and up["constraints_not_valid"] == up["invalid_indexes"] == []
        assert HEAD in ok(taskdb(url, "current")).stdout
        doctor = json.loads(ok(taskdb(url, "doctor", "--json"), 0, 1).stdout)
        assert not [f for f in doctor["findings"] if "cannot" in f["message"]], doctor["findings"]
        json.loads(ok(taskdb(url, "cleanup", "--json")).stdout)
        json.loads(ok(taskdb(url, "cron", "status", "--json")).stdout)
        time.sleep(0.5)  # the workers' last transactions land on the connections taskdb used last
    print(
        f"\ntransaction pooler, {driver}: {workers.writes} worker transactions on {len(workers.backends)} server "
        f"connections, {len(workers.errors)} errors, {len(workers.leaks)} leaks"
    )
    workers.assert_untouched()
    assert len(workers.backends) >= 2  # the pool really rotated the workers over several server connections
    assert upgrade_locks_left(taskdb_pg_server) == 0
    assert_same_end_state(db, other_db)


@pytest.mark.parametrize("db", ["app"], indirect=True)  # beside another application's public.tasks (conftest)
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_queue_in_another_schema_through_a_transaction_pooler(
    db: Db, other_db: Db, taskdb_pg_server: PostgresServer, transaction_pooler: PgBouncer, driver: str
) -> None:
    """TASKDB_SCHEMA=app where the pooler gives every transaction a session whose search_path is the default
    one (PgBouncer passes no startup options): each taskdb transaction names the schema itself."""
    reference = schema_db(other_db.url, "app")
    try:
        for target in (db, reference):
            prepare(target)
        reference.upgrade()
        url = transaction_pooler.url(database_of(db), driver)
        workers = Workers(transaction_pooler.conninfo(database_of(db)), table="app.app_events")
        with workers.running():
            for command in (("plan",), ("upgrade",), ("current",), ("cleanup",), ("cron", "status")):
                ok(taskdb(url, *command, TASKDB_SCHEMA="app", TASKDB_BACKFILL_BATCH_SIZE="25"))
            ok(taskdb(url, "doctor", TASKDB_SCHEMA="app"), 0, 1)
            time.sleep(0.5)
        workers.assert_untouched()
        assert upgrade_locks_left(taskdb_pg_server) == 0
        assert_same_end_state(db, reference)
    finally:
        reference.engine.dispose()


@pytest.mark.parametrize("driver", DRIVERS)
def test_upgrade_through_a_session_pooler(
    db: Db, other_db: Db, taskdb_pg_server: PostgresServer, session_pooler: PgBouncer, driver: str
) -> None:
    for target in (db, other_db):
        prepare(target)
    other_db.upgrade()
    url = session_pooler.url(database_of(db), driver)
    workers = Workers(session_pooler.conninfo(database_of(db)), count=2)
    with workers.running():
        ok(taskdb(url, "upgrade"))
        ok(taskdb(url, "plan"))
    workers.assert_untouched()
    assert upgrade_locks_left(taskdb_pg_server) == 0
    assert_same_end_state(db, other_db)


PAIRS = 5


@pytest.mark.parametrize("path", ["direct", "transaction pooler", "session pooler"])
def test_two_pods_upgrade_at_once(
    db: Db,
    other_db: Db,
    taskdb_pg_server: PostgresServer,
    transaction_pooler: PgBouncer,
    session_pooler: PgBouncer,
    taskdb_pg_database_factory,
    path: str,
) -> None:
    """Five pairs of `taskdb upgrade` started together under writer traffic: both exit 0 every time (the
    second waits for the first, then finds the work done), and the end is that of one uninterrupted run."""
    prepare(other_db, bulk=3000)
    other_db.upgrade()
    reference = row_checksums(other_db)
    waited = 0
    for pair in range(PAIRS):
        name = taskdb_pg_database_factory()
        engine = sa.create_engine(with_driver(taskdb_pg_server.url(name), "psycopg"), poolclass=sa.NullPool)
        target = Db(taskdb_pg_server.url(name), engine)
        try:
            prepare(target, bulk=3000)
            pooler = {"transaction pooler": transaction_pooler, "session pooler": session_pooler}.get(path)
            url = pooler.url(name) if pooler else taskdb_pg_server.url(name)
            conninfo = pooler.conninfo(name) if pooler else taskdb_pg_server.url(name)
            workers = Workers(conninfo, count=2)
            with workers.running():
                env = {k: v for k, v in os.environ.items() if k not in URL_VARS and not k.startswith("TASKDB_")}
                env |= {"TASKDB_DATABASE_URL": url, "TASKDB_BACKFILL_BATCH_SIZE": "200"}
                command = [sys.executable, "-m", "taskdb.cli", "upgrade"]
                pods = [
                    subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                    for _ in range(2)
                ]
                started = time.monotonic()
                results = [(p.wait(300), *p.communicate()) for p in pods]
                print(
                    f"\n{path} pair {pair}: both done in {time.monotonic() - started:.1f}s, exits "
                    f"{[r[0] for r in results]}, waited {['holds the upgrade lock' in r[2] for r in results]}, "
                    f"{workers.writes} worker transactions"
                )
            for code, _out, err in results:
                assert code == 0, f"pair {pair}: {err[-3000:]}"
                assert "Traceback" not in err
            waited += sum("holds the upgrade lock" in err for _, _, err in results)
            workers.assert_untouched(minimum_writes=5)
            assert upgrade_locks_left(taskdb_pg_server) == 0
            assert row_checksums(target) == reference
            assert_same_end_state(target, other_db)
        finally:
            target.engine.dispose()
    assert waited >= PAIRS - 1  # (nearly) every pair overlapped: one pod really waited for the other
