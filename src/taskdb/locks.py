"""Lock discipline for DDL on a live table.

Every DDL statement runs under ``SET LOCAL lock_timeout``: if a long transaction holds a conflicting
lock, our ALTER gives up quickly instead of queueing behind it (and making every writer queue behind
*us*). Only SQLSTATE 55P03 (lock_not_available) is retried, with jittered exponential backoff; the
whole transaction is rerun. When the budget is spent the error names the sessions holding locks.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from taskdb.db import rows, sqlstate, transaction
from taskdb.errors import LockRetriesExhausted

log = logging.getLogger("taskdb.locks")

LOCK_NOT_AVAILABLE = "55P03"

# Sessions that hold a lock on one of the relations we need, oldest transaction first. Only transactions
# older than our wait (:waited_s seconds) can have made us wait: the writers that had queued behind our
# request got their locks the moment it gave up, and must not be named instead of the real blocker.
# pg_locks is read live and pg_stat_activity from a snapshot, so a writer seen between two transactions
# (idle, no xact_start) can still show the lock of the transaction it began a moment later: a session
# outside a transaction holds no relation lock, and that fresh one did not make us wait.
BLOCKERS_SQL = """
SELECT pid, application_name, state, mode, relation, xact_age, query, xact_start
FROM (
    SELECT DISTINCT ON (a.pid)
           a.pid, a.application_name, a.state, l.mode, l.relation::regclass::text AS relation,
           date_trunc('second', now() - a.xact_start)::text AS xact_age,
           left(a.query, 120) AS query, a.xact_start
    FROM pg_locks l
    JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid()
      AND l.relation = ANY (SELECT to_regclass(r)::oid FROM unnest(CAST(:relations AS text[])) AS r)
      AND a.xact_start <= clock_timestamp() - make_interval(secs => :waited_s)
    ORDER BY a.pid, a.xact_start
) b
ORDER BY xact_start, pid
"""

# CREATE INDEX CONCURRENTLY also waits for every older transaction of this database, whatever it touched
# (its wait for old snapshots): those are named too, and when no session holds a lock on the relations.
OPEN_TRANSACTIONS_SQL = """
SELECT a.pid, a.application_name, a.state, 'a snapshot' AS mode, 'this database' AS relation,
       date_trunc('second', now() - a.xact_start)::text AS xact_age,
       left(a.query, 120) AS query, a.xact_start
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
  AND a.xact_start IS NOT NULL AND (a.backend_xid IS NOT NULL OR a.backend_xmin IS NOT NULL)
  AND a.xact_start <= clock_timestamp() - make_interval(secs => :waited_s)
ORDER BY a.xact_start
LIMIT 5
"""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass(frozen=True)
class LockPolicy:
    """How long one attempt may wait for a lock, and how many attempts a statement gets."""

    lock_timeout_ms: int = 2000
    attempts: int = 8
    backoff_base_s: float = 0.5
    backoff_max_s: float = 10.0

    @classmethod
    def from_env(cls) -> LockPolicy:
        return cls(
            lock_timeout_ms=_env_int("TASKDB_LOCK_TIMEOUT_MS", cls.lock_timeout_ms),
            attempts=_env_int("TASKDB_LOCK_ATTEMPTS", cls.attempts),
        )

    def backoff(self, attempt: int) -> float:
        """Full jitter: several pods retrying at once do not retry in step."""
        return random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)))


def find_blockers(
    conn: Connection, relations: Sequence[str], waited_s: float = 0.0, *, snapshots: bool = False
) -> list[dict[str, object]]:
    """The sessions holding locks on ``relations`` whose transactions began at least ``waited_s`` ago; with
    ``snapshots`` (a concurrent index build) also those holding a snapshot, oldest transaction first."""
    params = {"relations": list(relations), "waited_s": float(waited_s)}
    found = rows(conn, BLOCKERS_SQL, params)
    if snapshots or (waited_s and not found):  # after a wait nobody's lock explains: the snapshots did
        listed = {b["pid"] for b in found}
        older = [b for b in rows(conn, OPEN_TRANSACTIONS_SQL, params) if b["pid"] not in listed]
        found = sorted(found + older, key=lambda b: b["xact_start"])  # both queries name transactions only
    for b in found:
        b.pop("xact_start", None)
    return found


def run_locked(
    conn: Connection,
    statements: Sequence[str] | Callable[[Connection], None],
    *,
    relations: Sequence[str] = ("tasks",),
    policy: LockPolicy | None = None,
    in_transaction: bool = True,
    label: str | None = None,
) -> None:
    """Run DDL (or one batch) with a bounded lock wait, retrying only lock_not_available.

    ``statements`` run together in one transaction (or, with ``in_transaction=False``, one statement
    outside any transaction, for CREATE INDEX CONCURRENTLY). A callable gets the connection instead.
    ``label`` is what warnings and a lock failure call the work (default: the statement that waited, when
    it is one line, else the first statement or the callable's name).
    """
    policy = policy or LockPolicy.from_env()
    explicit = label
    label = label or (statements[0] if isinstance(statements, Sequence) and statements else getattr(
        statements, "__name__", "DDL"
    ))
    for attempt in range(1, policy.attempts + 1):
        attempt_started = time.monotonic()
        try:
            if in_transaction:
                with transaction(conn):
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(policy.lock_timeout_ms)}ms'")
                    _run(conn, statements)
            else:
                conn.exec_driver_sql(f"SET lock_timeout = '{int(policy.lock_timeout_ms)}ms'")
                try:
                    _run(conn, statements)
                finally:
                    if not conn.invalidated:  # a dead session took the setting with it
                        conn.exec_driver_sql("RESET lock_timeout")
            return
        except (DBAPIError, conn.dialect.loaded_dbapi.Error) as exc:
            # the driver's own error too: a script run on the raw DBAPI cursor (db.execute_script) raises it
            if sqlstate(exc) != LOCK_NOT_AVAILABLE:
                raise
            waited = str(getattr(exc, "statement", None) or "").strip()
            if not explicit and waited and "\n" not in waited:
                label = waited
            blockers = find_blockers(
                conn, relations, waited_s=time.monotonic() - attempt_started,
                snapshots="CONCURRENTLY" in str(label).upper(),
            )
            if attempt == policy.attempts:
                raise LockRetriesExhausted(str(label), attempt, blockers) from None
            pause = policy.backoff(attempt)
            log.warning(
                "lock not available for %r (attempt %d/%d), held by pids %s; retrying in %.1fs",
                str(label).strip().splitlines()[0], attempt, policy.attempts,
                [b["pid"] for b in blockers], pause,
            )
            time.sleep(pause)


def _run(conn: Connection, statements: Sequence[str] | Callable[[Connection], None]) -> None:
    if callable(statements):
        statements(conn)
    else:
        for statement in statements:
            conn.execute(sa.text(statement))
