"""The upgrade lock: one `taskdb upgrade` / `downgrade` at a time per database, through any pooler.

A transaction-scoped advisory lock, held by a connection of its own in a transaction that stays open for the
whole run and runs nothing after taking it:

- through a transaction pooler (PgBouncer, Supabase's port 6543) an open transaction keeps its server
  connection, so the lock is really held, and it is released with that transaction: it can never land on
  another client's server session, and never outlives its holder (a killed process ends its connection; the
  pooler then closes the server side, which rolls back);
- the holding transaction has no transaction id and, between statements, no snapshot, so it neither holds
  back vacuum nor makes a CREATE INDEX CONCURRENTLY of the upgrade wait for it (the build waits only for
  transactions holding a snapshot; that is why the holder runs no statement after the one that locked);
- ``idle_in_transaction_session_timeout`` is switched off for that transaction only (SET LOCAL): a managed
  service's role default must not end the lock mid-upgrade.

A waiter holds no transaction or snapshot while it waits: each attempt is BEGIN, ``pg_try_advisory_xact_lock``,
ROLLBACK, with jittered backoff, up to ``TASKDB_UPGRADE_LOCK_WAIT_S``; it then runs the chain, which finds the
work done. Offline scripts (``taskdb sql``) take the same key as a session lock, so the two exclude each other.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from contextlib import ExitStack
from types import TracebackType
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from taskdb.db import autocommit_connection, rows, scalar
from taskdb.errors import UpgradeInProgress, UpgradeLockLost

log = logging.getLogger("taskdb.upgrade_lock")

# The advisory lock key ('taskdb' in ASCII, recognisable in pg_locks as classid 0x7461, objid 0x736b6462).
UPGRADE_LOCK_KEY = 0x7461736B6462
UPGRADE_LOCK_WAIT_S = 60.0
POLL_FIRST_S, POLL_MAX_S = 0.25, 5.0

HOLDER_SQL = """
SELECT a.pid, a.application_name, coalesce(host(a.client_addr), 'local socket') AS client,
       date_trunc('second', now() - a.xact_start)::text AS held_for
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND ((l.classid::bigint << 32) | l.objid::bigint) = :k
"""

HELD_SQL = """
SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = :pid
                 AND ((classid::bigint << 32) | objid::bigint) = :k)
"""


def lock_wait_s() -> float:
    return float(os.environ.get("TASKDB_UPGRADE_LOCK_WAIT_S") or UPGRADE_LOCK_WAIT_S)


def holder_name(command: str) -> str:
    """What pg_stat_activity shows for the holding connection: the command, this host and process."""
    return f"taskdb {command} {socket.gethostname()}:{os.getpid()}"[:63]  # application_name is 63 bytes


class UpgradeLock:
    """``with UpgradeLock(engine, "upgrade"):`` waits for the lock, holds it, releases it."""

    def __init__(self, engine: Engine, command: str, *, wait_s: float | None = None) -> None:
        self.engine, self.command = engine, command
        self.wait_s = lock_wait_s() if wait_s is None else wait_s
        self.conn: Connection | None = None
        self._stack = ExitStack()  # the connection and its engine
        self.backend_pid: int | None = None

    def __enter__(self) -> UpgradeLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        # a connection of its own, named for pg_stat_activity: the holder an operator (or a waiting pod) sees
        url = self.engine.url.render_as_string(hide_password=False)
        conn = self._stack.enter_context(autocommit_connection(url, application_name=holder_name(self.command)))
        self.conn = conn
        deadline = time.monotonic() + self.wait_s
        announced = False
        pause = POLL_FIRST_S
        while True:
            conn.exec_driver_sql("BEGIN")
            conn.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
            got = conn.exec_driver_sql(f"SELECT pg_try_advisory_xact_lock({UPGRADE_LOCK_KEY}), pg_backend_pid()").one()
            if got[0]:
                self.backend_pid = int(got[1])
                return  # the transaction stays open: it is the lock
            holders = rows(conn, HOLDER_SQL, {"k": UPGRADE_LOCK_KEY})
            conn.exec_driver_sql("ROLLBACK")
            who = describe(holders)
            if time.monotonic() >= deadline:
                self.release()
                raise UpgradeInProgress(
                    f"another taskdb upgrade holds the upgrade lock on this database ({who}); waited "
                    f"{self.wait_s:.0f}s (TASKDB_UPGRADE_LOCK_WAIT_S). Let it finish, then rerun: the upgrade is "
                    "idempotent."
                )
            if not announced:
                log.warning("another taskdb upgrade holds the upgrade lock (%s): waiting up to %.0fs", who, self.wait_s)
                announced = True
            time.sleep(min(random.uniform(pause / 2, pause), max(0.0, deadline - time.monotonic())))
            pause = min(POLL_MAX_S, pause * 2)

    def check(self, conn: Connection) -> None:
        """Raise :class:`UpgradeLockLost` when the holding session is gone (read on ``conn``, any connection)."""
        if self.backend_pid is None:
            return
        if not scalar(conn, HELD_SQL, {"pid": self.backend_pid, "k": UPGRADE_LOCK_KEY}):
            raise UpgradeLockLost(
                f"the upgrade lock's session (server pid {self.backend_pid}) ended while the upgrade ran (an "
                "administrator, a pooler or a timeout closed it): stopped before the next revision. Rerun the "
                "same command: it resumes where it stopped."
            )

    def release(self) -> None:
        conn, self.conn, self.backend_pid = self.conn, None, None
        if conn is None:
            return
        try:
            conn.exec_driver_sql("ROLLBACK")  # the lock's transaction, opened with a bare BEGIN
        except DBAPIError:
            pass  # the session is gone, and the lock with it
        finally:
            self._stack.close()


def describe(holders: list[dict[str, Any]]) -> str:
    if not holders:
        return "its holder just released it"
    return "; ".join(
        f"{h['application_name'] or 'no application_name'}, server pid {h['pid']} from {h['client']}, "
        f"held for {h['held_for']}"
        for h in holders
    )
