"""Connections and explicit transactions.

The online-safe steps run on a connection in AUTOCOMMIT mode (inside Alembic's ``autocommit_block``)
and open their own short transactions, so that a backfill batch, a DDL statement or a VALIDATE each
commit on their own instead of inside one long migration transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from taskdb import driver
from taskdb.config import driver_of, normalize_url, redact
from taskdb.errors import ConnectError, ReadOnlyTarget
from taskdb.sql import split_statements

APPLICATION_NAME = "taskdb"


def create_engine(url: str, application_name: str = APPLICATION_NAME) -> Engine:
    """An engine without a pool (one upgrade, one connection) that names itself in pg_stat_activity and
    leaves no server-side state behind a transaction pooler (taskdb.driver)."""
    args: dict[str, Any] = {"application_name": application_name, **driver.connect_args(driver_of(url))}
    return driver.make_pooler_safe(sa.create_engine(url, poolclass=NullPool, connect_args=args))


@contextmanager
def autocommit_connection(url: str, application_name: str = APPLICATION_NAME) -> Iterator[Connection]:
    """One AUTOCOMMIT connection to ``url`` (a plain postgresql:// URL means psycopg 3), engine disposed after.

    Every library call on it opens the short transactions it needs. ``application_name`` names it in
    pg_stat_activity (the upgrade lock's holder and the lock watchdog are connections of their own).
    """
    engine = create_engine(normalize_url(url), application_name)
    try:
        with connect(engine).execution_options(isolation_level="AUTOCOMMIT") as conn:
            yield conn
    finally:
        engine.dispose()


def connect(engine: Engine) -> Connection:
    """Connect, turning any driver error into one line that names the server but never the password."""
    url = engine.url.render_as_string(hide_password=False)
    try:
        return engine.connect()
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise ConnectError(
            f"cannot connect to {engine.url.render_as_string(hide_password=True)} "
            f"({driver_of(url)}): {redact(reason, url)}"
        ) from None


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error, for psycopg 3 and pg8000 alike."""
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlstate", None)  # psycopg 3
    if code:
        return str(code)
    for arg in getattr(orig, "args", ()):  # pg8000: the server's error fields as a dict
        if isinstance(arg, dict) and "C" in arg:
            return str(arg["C"])
    return None


def is_autocommit(conn: Connection) -> bool:
    # get_isolation_level() reports the server's level, not the driver's autocommit switch
    return conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"


@contextmanager
def transaction(conn: Connection, begin: str = "BEGIN") -> Iterator[Connection]:
    """A real server-side transaction on an AUTOCOMMIT connection: BEGIN ... COMMIT, or ROLLBACK."""
    if not is_autocommit(conn):
        raise RuntimeError("taskdb steps need a connection in AUTOCOMMIT mode (use autocommit_block)")
    conn.exec_driver_sql(begin)
    try:
        yield conn
    except BaseException:
        with suppress(DBAPIError):  # if the connection is gone, the server rolled back already
            conn.exec_driver_sql("ROLLBACK")
        raise
    conn.exec_driver_sql("COMMIT")


@contextmanager
def read_only_transaction(
    conn: Connection, *, lock_timeout_ms: int, isolation: str = "READ COMMITTED"
) -> Iterator[Connection]:
    """A READ ONLY transaction that waits at most ``lock_timeout_ms`` for a lock (SET LOCAL): what the read-only
    commands run in. Read-only is per transaction, never ``default_transaction_read_only`` for the session:
    behind a transaction pooler that would land on a server connection the application then writes on."""
    with transaction(conn, f"BEGIN ISOLATION LEVEL {isolation} READ ONLY"):
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(lock_timeout_ms)}ms'")
        yield conn


def require_primary(conn: Connection, command: str) -> None:
    """Refuse, before any change, a hot standby or a connection whose transactions are read-only."""
    in_recovery, read_only = conn.exec_driver_sql(
        "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only') = 'on'"
    ).one()
    if in_recovery:
        raise ReadOnlyTarget(
            f"{command}: this server is a standby (pg_is_in_recovery() is true) and taskdb changes only a "
            "primary; nothing was changed. Point --url at the primary."
        )
    if read_only:
        raise ReadOnlyTarget(
            f"{command}: this connection is read-only (default_transaction_read_only = on, from the role, the "
            "database or a read-only endpoint); nothing was changed. Connect as a role that may write, to the primary."
        )


def scalar(conn: Connection, sql: str, params: Mapping[str, Any] | None = None) -> Any:
    return conn.execute(sa.text(sql), dict(params or {})).scalar()


def rows(conn: Connection, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(sa.text(sql), dict(params or {}))]


def execute_script(conn: Connection, script: str) -> None:
    """Run a multi-statement SQL script one statement at a time (pg8000 takes one per call)."""
    # The DBAPI cursor, without parameters: neither driver then treats % as a placeholder.
    cursor = conn.connection.cursor()
    try:
        for statement in split_statements(script):
            cursor.execute(statement)
    finally:
        cursor.close()
