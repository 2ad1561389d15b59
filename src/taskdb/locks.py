"""Lock discipline for DDL on a live table.

Every DDL statement runs under ``SET LOCAL lock_timeout``: if a long transaction holds a conflicting
lock, our ALTER gives up quickly instead of queueing behind it (and making every writer queue behind
*us*). Only SQLSTATE 55P03 (lock_not_available) is retried, with jittered exponential backoff; the
whole transaction is rerun. When the budget is spent the error names the sessions holding locks.

Settings are transaction-local only (``SET LOCAL``): behind a transaction pooler a session ``SET`` lands on
a server connection the application's workers share. A statement that cannot run in a transaction (CREATE /
DROP INDEX CONCURRENTLY) therefore gets no settings at all: a watchdog on a second connection plays its
lock_timeout, cancelling it when it has waited for a lock longer than the timeout (the statement carries a
unique trailing comment, so the watchdog finds its backend whichever server connection the pooler gave it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from taskdb.db import autocommit_connection, rows, scalar, sqlstate, transaction
from taskdb.errors import LockRetriesExhausted, StatementTimedOut
from taskdb.sql import queries

log = logging.getLogger("taskdb.locks")

LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"
WATCH_INTERVAL_S = 0.05


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
    #: every transaction taskdb opens sets its own statement_timeout (0 = none), whatever the role's default is
    statement_timeout_ms: int = 0

    @classmethod
    def from_env(cls) -> LockPolicy:
        return cls(
            lock_timeout_ms=_env_int("TASKDB_LOCK_TIMEOUT_MS", cls.lock_timeout_ms),
            attempts=_env_int("TASKDB_LOCK_ATTEMPTS", cls.attempts),
            statement_timeout_ms=_env_int("TASKDB_STATEMENT_TIMEOUT_MS", cls.statement_timeout_ms),
        )

    def set_local(self, conn: Connection, settings: Mapping[str, str] | None = None) -> None:
        """The transaction's own timeouts (and ``settings``), all transaction-local (``set_config(..., true)``,
        i.e. ``SET LOCAL``), in one round trip: a backfill sets them before every batch."""
        values = {
            "lock_timeout": f"{int(self.lock_timeout_ms)}ms",
            "statement_timeout": f"{int(self.statement_timeout_ms)}ms",
            **(settings or {}),
        }
        calls = ", ".join(f"set_config(:name_{i}, :value_{i}, true)" for i in range(len(values)))
        binds: dict[str, str] = {}
        for i, (name, value) in enumerate(values.items()):
            binds |= {f"name_{i}": name, f"value_{i}": value}
        conn.execute(sa.text(f"SELECT {calls}"), binds)

    def backoff(self, conn: Connection, attempt: int) -> float:
        """The pause after failed attempt ``attempt``: ``backoff`` in sql/locks.sql, the formula the offline
        script's procedures use too (with this policy's base and cap)."""
        params = {"attempt": attempt, "backoff_base_s": self.backoff_base_s, "backoff_max_s": self.backoff_max_s}
        return float(scalar(conn, queries("locks")["backoff"], params))


def find_blockers(
    conn: Connection, relations: Sequence[str], waited_s: float = 0.0, *, snapshots: bool = False
) -> list[dict[str, object]]:
    """The sessions holding locks on ``relations`` whose transactions began at least ``waited_s`` ago; with
    ``snapshots`` (a concurrent index build) also those holding a snapshot, oldest transaction first
    (``blockers`` in sql/locks.sql, which the offline script's procedures run too)."""
    params = {"relations": list(relations), "waited_s": float(waited_s), "snapshots": snapshots}
    found = rows(conn, queries("locks")["blockers"], params)
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
    settings: Mapping[str, str] | None = None,
) -> None:
    """Run DDL (or one batch) with a bounded lock wait, retrying only lock_not_available.

    ``statements`` run together in one transaction under the policy's ``SET LOCAL`` timeouts and
    ``settings`` (or, with ``in_transaction=False``, one statement outside any transaction, for CREATE INDEX
    CONCURRENTLY, under the lock-wait watchdog). A callable gets the connection instead.
    ``label`` is what warnings and a lock failure call the work (default: the statement that waited, when
    it is one line, else the first statement or the callable's name).
    """
    policy = policy or LockPolicy.from_env()
    explicit = label
    label = label or (
        statements[0] if isinstance(statements, Sequence) and statements else getattr(statements, "__name__", "DDL")
    )
    for attempt in range(1, policy.attempts + 1):
        attempt_started = time.monotonic()
        watch = None
        try:
            if in_transaction:
                with transaction(conn):
                    policy.set_local(conn, settings)
                    _run(conn, statements)
            else:
                with lock_watchdog(conn, policy.lock_timeout_ms) as watch:
                    _run(conn, statements)
            return
        except (DBAPIError, conn.dialect.loaded_dbapi.Error) as exc:
            # the driver's own error too: a script run on the raw DBAPI cursor (db.execute_script) raises it
            code = sqlstate(exc)
            # a lock wait that ran out: our lock_timeout, or the watchdog's cancel (which plays it)
            lock_wait = code == LOCK_NOT_AVAILABLE or (code == QUERY_CANCELED and watch is not None and watch.fired)
            if not lock_wait:
                if code != QUERY_CANCELED:
                    raise
                if in_transaction:
                    raise StatementTimedOut(str(label), f"{policy.statement_timeout_ms}ms", ours=True) from None
                raise StatementTimedOut(str(label), _setting(conn, "statement_timeout"), ours=False) from None
            waited = _untagged(str(getattr(exc, "statement", None) or "")).strip()
            if not explicit and waited and "\n" not in waited:
                label = waited
            blockers = find_blockers(
                conn,
                relations,
                waited_s=time.monotonic() - attempt_started,
                snapshots="CONCURRENTLY" in str(label).upper(),
            )
            if attempt == policy.attempts:
                raise LockRetriesExhausted(str(label), attempt, blockers) from None
            pause = policy.backoff(conn, attempt)
            log.warning(
                "lock not available for %r (attempt %d/%d), held by pids %s; retrying in %.1fs",
                str(label).strip().splitlines()[0],
                attempt,
                policy.attempts,
                [b["pid"] for b in blockers],
                pause,
            )
            time.sleep(pause)


def _setting(conn: Connection, name: str) -> str:
    try:
        return str(scalar(conn, f"SELECT current_setting('{name}')"))
    except DBAPIError:
        return "?"


class _Watch:
    """What the watchdog saw: ``fired`` once it cancelled the statement for waiting too long on a lock."""

    def __init__(self, tag: str) -> None:
        self.tag, self.fired = tag, False
        self.stop = threading.Event()


_TAG = "/* taskdb lock watch "


def _untagged(statement: str) -> str:
    return statement.split(f"\n{_TAG}", 1)[0]


@contextmanager
def lock_watchdog(conn: Connection, lock_timeout_ms: int) -> Iterator[_Watch]:
    """While the block runs, statements on ``conn`` carry a unique comment, and a thread on a connection of
    its own cancels the backend running one when it has waited on a lock for ``lock_timeout_ms``."""
    watch = _Watch(uuid.uuid4().hex)

    def tag(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> tuple:
        # at the end: pg_stat_activity still shows the statement first (operators and tests look for it there)
        return f"{statement}\n{_TAG}{watch.tag} */", parameters

    event.listen(conn, "before_cursor_execute", tag, retval=True)
    watcher = threading.Thread(target=_watch, args=(conn.engine, watch, lock_timeout_ms / 1000), daemon=True)
    watcher.start()
    try:
        yield watch
    finally:
        event.remove(conn, "before_cursor_execute", tag)
        watch.stop.set()
        watcher.join()


WATCH_SQL = """
SELECT pid, wait_event_type = 'Lock' AS waiting FROM pg_stat_activity
WHERE pid <> pg_backend_pid() AND datname = current_database() AND strpos(query, :tag) > 0 AND state = 'active'
"""
CANCEL_SQL = """
SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = :pid AND wait_event_type = 'Lock'
"""


def _watch(engine: Engine, watch: _Watch, timeout_s: float) -> None:
    tag = f"{_TAG}{watch.tag} */"
    waiting_since: dict[int, float] = {}
    url = engine.url.render_as_string(hide_password=False)
    try:
        with autocommit_connection(url, application_name="taskdb lock watchdog") as conn:
            while not watch.stop.wait(WATCH_INTERVAL_S):
                now = time.monotonic()
                seen = {int(r["pid"]): bool(r["waiting"]) for r in rows(conn, WATCH_SQL, {"tag": tag})}
                waiting_since = {pid: waiting_since.get(pid, now) for pid, waiting in seen.items() if waiting}
                for pid, since in waiting_since.items():
                    if now - since >= timeout_s and scalar(conn, CANCEL_SQL, {"pid": pid}):
                        watch.fired = True
    except Exception as exc:  # the statement goes on without a lock_timeout; the run must not die of it
        log.warning("lock watchdog stopped (%s): the running statement has no lock timeout", exc)


def _run(conn: Connection, statements: Sequence[str] | Callable[[Connection], None]) -> None:
    if callable(statements):
        statements(conn)
    else:
        for statement in statements:
            conn.execute(sa.text(statement))
