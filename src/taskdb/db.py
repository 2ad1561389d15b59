"""Connections and explicit transactions.

The online-safe steps run on a connection in AUTOCOMMIT mode (inside Alembic's ``autocommit_block``)
and open their own short transactions, so that a backfill batch, a DDL statement or a VALIDATE each
commit on their own instead of inside one long migration transaction.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from taskdb import driver
from taskdb.config import driver_of, normalize_url, redact
from taskdb.errors import ConnectError, ReadOnlyTarget
from taskdb.sql import SCHEMA_TOKEN, split_statements

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


def in_server_transaction(conn: Connection) -> bool:
    """Whether the server has a transaction open on this connection (the driver's own view of it)."""
    raw = conn.connection.dbapi_connection
    status = getattr(getattr(raw, "info", None), "transaction_status", None)  # psycopg 3: IDLE is 0
    if status is not None:
        return int(status) != 0
    return bool(getattr(raw, "_in_transaction", False))  # pg8000


# -- the schema a connection works in -----------------------------------------------------------------------
# taskdb's SQL names its objects unqualified. A connection is pinned to the queue's schema (taskdb.target picks
# it): every transaction taskdb opens on it starts with SET LOCAL search_path = <schema>, pg_temp, so the names
# resolve there whatever the session's own search_path is (behind a transaction pooler it may not even be this
# session's), and nothing is left on the session. A statement sent on its own (AUTOCOMMIT, no transaction open)
# is given that transaction too: BEGIN, the search_path, the statement, COMMIT, which is what autocommit means
# anyway. Only the statements that cannot run in a transaction go as they are, and they name the schema
# themselves (db.schema_qualified).
# The pin belongs to the Connection object (its listeners do too), not to the driver connection under it,
# which a pool hands to the next checkout and a reconnect replaces.
_PINS: weakref.WeakKeyDictionary[Connection, str] = weakref.WeakKeyDictionary()
_WRAPPED: weakref.WeakSet[Connection] = weakref.WeakSet()
_OUTSIDE_TRANSACTION = re.compile(
    r"^\s*(BEGIN|START TRANSACTION|COMMIT|ROLLBACK|END|CALL|VACUUM|ALTER SYSTEM|CREATE DATABASE|DROP DATABASE"
    r"|CREATE (UNIQUE )?INDEX CONCURRENTLY|DROP INDEX CONCURRENTLY|REINDEX .*CONCURRENTLY)\b",
    re.IGNORECASE | re.DOTALL,
)


def quote_ident(name: str) -> str:
    """``name`` as a PostgreSQL identifier, always double-quoted (``"app"``, ``"My Schema"``): no keyword list
    to keep in step with the server's (taskdb.target refuses ``$`` and NUL, which no quoting makes safe inside a
    dollar-quoted function body)."""
    return '"' + name.replace('"', '""') + '"'


def search_path_sql(schema: str) -> str:
    """Where taskdb's unqualified names resolve: the schema, then temporary objects last (never first)."""
    return f"SET LOCAL search_path = {quote_ident(schema)}, pg_temp"


def pin_schema(conn: Connection, schema: str) -> None:
    """Pin ``conn`` to ``schema`` (see above); :func:`unpin_schema` undoes it on a connection handed in."""
    if conn not in _PINS:
        for name, listener in _PIN_LISTENERS:
            event.listen(conn, name, listener)
    _PINS[conn] = schema


def unpin_schema(conn: Connection) -> None:
    if _PINS.pop(conn, None) is not None:
        for name, listener in _PIN_LISTENERS:
            event.remove(conn, name, listener)


def pinned_schema(conn: Connection) -> str | None:
    return _PINS.get(conn)


def schema_qualified(conn: Connection, name: str) -> str:
    """``name`` in the pinned schema, for the statements that run outside a transaction."""
    schema = pinned_schema(conn)
    return name if schema is None else f"{quote_ident(schema)}.{name}"


def in_schema(conn: Connection, sql: str) -> str:
    """``sql`` with its schema placeholder (``@schema@``, as extension scripts say ``@extschema@``) filled in."""
    if SCHEMA_TOKEN not in sql:
        return sql
    schema = pinned_schema(conn)
    if schema is None:
        raise RuntimeError("taskdb: SQL naming taskdb's schema on a connection pinned to none (db.pin_schema)")
    return sql.replace(SCHEMA_TOKEN, quote_ident(schema))


def _raw(conn: Connection, statement: str) -> None:
    """A statement on the driver's connection, under SQLAlchemy (no events): one simple query."""
    raw: Any = conn.connection.dbapi_connection
    if hasattr(raw, "execute_simple"):
        raw.execute_simple(statement)  # pg8000
    else:
        raw.execute(statement)  # psycopg 3


def _pin_begin(conn: Connection) -> None:
    # Alembic's own transactions (the version table) on the migration connection; db.transaction pins its own
    schema = pinned_schema(conn)
    if schema is not None and not is_autocommit(conn):
        conn.exec_driver_sql(search_path_sql(schema))


def _wrap_standalone(
    conn: Connection, _cursor: Any, statement: str, _parameters: Any, _context: Any, _many: bool
) -> None:
    _end_failed_wrap(conn)
    schema = pinned_schema(conn)
    if (
        schema is not None
        and is_autocommit(conn)
        and not in_server_transaction(conn)
        and not (_OUTSIDE_TRANSACTION.match(_without_comments(statement)))
    ):
        _raw(conn, "BEGIN")
        _WRAPPED.add(conn)
        _raw(conn, search_path_sql(schema))


def _end_wrapped(conn: Connection, *_: Any) -> None:
    if conn in _WRAPPED:
        _WRAPPED.discard(conn)
        _raw(conn, "COMMIT")


def _end_failed_wrap(conn: Connection) -> None:
    """The last standalone statement failed, so its transaction is aborted (SQLAlchemy may have rolled it
    back already): end it before anything else runs."""
    if conn in _WRAPPED:
        _WRAPPED.discard(conn)
        if not conn.closed and not conn.invalidated and in_server_transaction(conn):
            with suppress(Exception):  # a connection that is gone has rolled back already
                _raw(conn, "ROLLBACK")


_PIN_LISTENERS: tuple[tuple[str, Any], ...] = (
    ("begin", _pin_begin),
    ("before_cursor_execute", _wrap_standalone),
    ("after_cursor_execute", _end_wrapped),
)


_LEADING_COMMENTS = re.compile(r"^(\s*(--[^\n]*(\n|$)|/\*.*?\*/))*", re.DOTALL)


def _without_comments(statement: str) -> str:
    """The statement from its first keyword (``--`` and ``/* */`` comments before it dropped)."""
    return _LEADING_COMMENTS.sub("", statement, count=1)


@contextmanager
def transaction(conn: Connection, begin: str = "BEGIN") -> Iterator[Connection]:
    """A real server-side transaction on an AUTOCOMMIT connection: BEGIN ... COMMIT, or ROLLBACK.

    On a pinned connection it first sets the search_path to the schema (transaction-local)."""
    if not is_autocommit(conn):
        raise RuntimeError("taskdb steps need a connection in AUTOCOMMIT mode (use autocommit_block)")
    conn.exec_driver_sql(begin)
    try:
        schema = pinned_schema(conn)
        if schema is not None:
            conn.exec_driver_sql(search_path_sql(schema))
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
    """Run a multi-statement SQL script one statement at a time (pg8000 takes one per call), its schema
    placeholder filled in (:func:`in_schema`)."""
    script = in_schema(conn, script)
    _end_failed_wrap(conn)
    if pinned_schema(conn) is not None and is_autocommit(conn) and not in_server_transaction(conn):
        raise RuntimeError("taskdb: a SQL script outside a transaction on a pinned connection (use db.transaction)")
    # The DBAPI cursor, without parameters: neither driver then treats % as a placeholder.
    cursor = conn.connection.cursor()
    try:
        for statement in split_statements(script):
            cursor.execute(statement)
    finally:
        cursor.close()
