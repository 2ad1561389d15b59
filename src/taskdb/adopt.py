"""The tables taskdb adopts or creates (TableSpec, the accepted column types) and how a downgrade drops only
what taskdb created: tables while they hold no rows, columns it added.

Checking and creating them are steps: taskdb.steps.tables, taskdb.steps.columns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from taskdb.catalog import (
    OWNED_TABLE,
    columns,
    forget_owned,
    owned,
    table_exists,
)
from taskdb.db import scalar, transaction
from taskdb.locks import LockPolicy, run_locked

log = logging.getLogger("taskdb.adopt")

# Families of acceptable column types (format_type() spellings), so that a varchar status or a
# timestamp without time zone in an adopted table is accepted as it is.
TEXT = ("text", "character varying")
UUID = ("uuid",)
JSON = ("jsonb", "json")
INTEGER = ("integer", "smallint", "bigint")
TIMESTAMP = ("timestamp with time zone", "timestamp without time zone")
ENUM = ("<enum>",)


@dataclass(frozen=True)
class TableSpec:
    """A table taskdb needs: the columns (and accepted types) it relies on, and how to create it."""

    name: str
    create_sql: str
    required: Mapping[str, tuple[str, ...]]
    unique_key: str = "id"


def drop_created_tables(conn: Connection, revision: str) -> list[str]:
    """Drop, in reverse creation order, the tables ``revision`` created that hold no rows.

    A created table that holds rows (the application wrote to it) is kept, with a warning: its rows are
    not the package's to delete. Returns the names kept.
    """
    kept: list[str] = []
    for name in reversed(owned(conn, "table", revision)):
        if not table_exists(conn, name):
            continue
        if scalar(conn, f'SELECT EXISTS (SELECT 1 FROM "{name}")'):
            log.warning("keeping table %s: it holds rows taskdb did not create; drop it by hand if you mean to", name)
            kept.append(name)
            continue
        run_locked(conn, [f'DROP TABLE "{name}"'], relations=[name])
    if table_exists(conn, OWNED_TABLE):
        with transaction(conn):
            for name in owned(conn, "table", revision):
                forget_owned(conn, "table", name)
    return kept


def drop_owned_table_if_empty(conn: Connection) -> None:
    if table_exists(conn, OWNED_TABLE) and not scalar(conn, f"SELECT EXISTS (SELECT 1 FROM {OWNED_TABLE})"):
        run_locked(conn, [f"DROP TABLE {OWNED_TABLE}"], relations=[OWNED_TABLE])


def drop_added_columns(conn: Connection, table: str, revision: str, policy: LockPolicy | None = None) -> None:
    """Drop the columns ``revision`` added to ``table`` (and only those)."""
    names = [n.split(".", 1)[1] for n in owned(conn, "column", revision) if n.startswith(f"{table}.")]

    def drop(c: Connection) -> None:
        present = columns(c, table)
        for name in names:
            if name in present:
                c.execute(sa.text(f'ALTER TABLE "{table}" DROP COLUMN "{name}"'))
            forget_owned(c, "column", f"{table}.{name}")

    if names:
        run_locked(conn, drop, relations=[table], policy=policy)
