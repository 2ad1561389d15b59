"""What makes each driver safe behind a transaction pooler (PgBouncer ``pool_mode = transaction``, Supabase's
port 6543): no server-side state outlives the transaction that made it.

Behind such a pooler each transaction (and, in autocommit, each protocol exchange up to a Sync) may run on a
different server connection, which other clients then share. So:

- psycopg 3 prepares a statement after five executions (``prepare_threshold``): a named prepared statement
  lives on one server connection and is missing on the next ("prepared statement "_pg3_1" does not exist").
  ``prepare_threshold=None`` never prepares; each statement goes as one Parse/Bind/Execute/Sync exchange.
- pg8000 sends a statement with parameters as Parse+Sync, then Describe+Sync, then Bind/Execute+Sync: outside
  a transaction the pooler may hand each exchange to another server, which has no unnamed statement. Its
  simple-query path (a statement without parameters) is one message. So taskdb's pg8000 engines render the
  parameters as SQL literals on the client (as psycopg's ClientCursor does) and send one simple query; COMMIT
  and ROLLBACK go the same way (pg8000 sends them in three exchanges, even outside a transaction).
- SQLAlchemy's pg8000 dialect leaves autocommit with ``SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION
  LEVEL ...``: session state. taskdb only ever uses the server's default level (READ COMMITTED) or asks for
  another one in ``BEGIN``, so leaving autocommit only flips the driver's switch.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

# SQLAlchemy compiles pg8000 statements in the "format" paramstyle: every literal % doubled, %s per value.
_FORMAT_TOKEN = re.compile(r"%(%|s)")


def connect_args(driver: str) -> dict[str, Any]:
    """Driver options for a pooler-safe connection."""
    return {"prepare_threshold": None} if driver == "psycopg" else {}


def make_pooler_safe(engine: Engine) -> Engine:
    """Install the pg8000 adjustments on ``engine`` (psycopg needs only :func:`connect_args`)."""
    if engine.dialect.driver != "pg8000":
        return engine
    event.listen(engine, "before_cursor_execute", _inline_parameters, retval=True)
    event.listen(engine, "connect", _simple_commit)
    dialect = engine.dialect
    original = dialect.set_isolation_level

    def set_isolation_level(dbapi_connection: Any, level: str) -> None:
        if level.replace("_", " ") in ("READ COMMITTED", dialect.default_isolation_level):
            dbapi_connection.autocommit = False  # the server's default: no SET SESSION needed
        else:
            original(dbapi_connection, level)  # type: ignore[arg-type]  # the dialect's own level names

    dialect.set_isolation_level = set_isolation_level  # type: ignore[method-assign]
    return engine


def _simple_commit(dbapi_connection: Any, _record: Any) -> None:
    """pg8000 sends COMMIT in three exchanges even outside a transaction (SQLAlchemy commits an autocommit
    connection too): one simple query, and nothing at all when no transaction is open."""

    def end(statement: str) -> None:
        if dbapi_connection._in_transaction:
            dbapi_connection.execute_simple(statement)

    dbapi_connection.commit = lambda: end("commit")
    dbapi_connection.rollback = lambda: end("rollback")


def _inline_parameters(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> tuple[str, Any]:
    if executemany or not parameters or not isinstance(parameters, Sequence):
        return statement, parameters
    values = iter(parameters)
    rendered = _FORMAT_TOKEN.sub(lambda m: "%" if m.group(1) == "%" else literal(next(values)), statement)
    return rendered, ()


def literal(value: Any) -> str:
    """``value`` as a PostgreSQL literal; strings go in standard-conforming quotes (``'it''s'``)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, float):
        return f"'{value!r}'::float8"  # repr round-trips; also 'NaN' and 'Infinity'
    if isinstance(value, bytes | bytearray | memoryview):
        return f"'\\x{bytes(value).hex()}'::bytea"
    if isinstance(value, dt.timedelta):
        return f"'{value.total_seconds()!r} seconds'::interval"
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return _quote(value.isoformat())
    if isinstance(value, uuid.UUID):
        return _quote(str(value))
    if isinstance(value, dict):
        return _quote(json.dumps(value))
    if isinstance(value, list | tuple):
        return _quote("{" + ",".join(_array_element(v) for v in value) + "}")
    return _quote(str(value))


def _array_element(value: Any) -> str:
    if value is None:
        return "NULL"
    text = value.isoformat() if isinstance(value, dt.date | dt.time) else str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quote(text: str) -> str:
    if "\x00" in text:
        raise ValueError("a NUL character cannot be sent to PostgreSQL")
    return "'" + text.replace("'", "''") + "'"
