"""Adopt an existing schema or create the missing parts, recording what taskdb created.

An existing database keeps its own tables: taskdb checks their shape first (and changes nothing if a
needed column is missing or of the wrong type), creates only what is absent, and downgrades drop only
what it created, and never a table that holds rows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from taskdb.catalog import (
    OWNED_TABLE,
    columns,
    ensure_owned_table,
    enum_labels,
    forget_owned,
    has_unique_index_on,
    owned,
    record_owned,
    table_exists,
)
from taskdb.db import scalar, transaction
from taskdb.errors import SchemaMismatch
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


def _type_ok(actual_type: str, is_enum: bool, accepted: tuple[str, ...]) -> bool:
    base = actual_type.split("(")[0].strip()
    return base in accepted or (is_enum and "<enum>" in accepted)


def check_shape(conn: Connection, spec: TableSpec, optional: Mapping[str, tuple[str, ...]] = {}) -> None:
    """Raise :class:`SchemaMismatch` naming the table and column if an existing table cannot be adopted."""
    if not table_exists(conn, spec.name):
        return
    found = columns(conn, spec.name)
    for name, accepted in spec.required.items():
        if name not in found:
            raise SchemaMismatch(spec.name, name, "missing (taskdb needs it)")
        col = found[name]
        if not _type_ok(col.type, col.is_enum, accepted):
            raise SchemaMismatch(spec.name, name, f"has type {col.type}, taskdb needs one of {', '.join(accepted)}")
    for name, accepted in optional.items():
        present = found.get(name)
        if present is not None and not _type_ok(present.type, present.is_enum, accepted):
            raise SchemaMismatch(spec.name, name, f"has type {present.type}, taskdb needs one of {', '.join(accepted)}")
    if not has_unique_index_on(conn, spec.name, spec.unique_key):
        raise SchemaMismatch(spec.name, spec.unique_key, "is not a primary key or unique (batches are keyed on it)")


def create_missing_tables(conn: Connection, specs: Sequence[TableSpec], revision: str) -> list[str]:
    """Create the absent tables (in the given order) and the ownership record, in one transaction."""
    created: list[str] = []

    def create(c: Connection) -> None:
        created.clear()
        ensure_owned_table(c)
        for spec in specs:
            if not table_exists(c, spec.name):
                c.execute(sa.text(spec.create_sql))
                record_owned(c, "table", spec.name, revision)
                created.append(spec.name)

    run_locked(conn, create, relations=[s.name for s in specs])
    if created:
        log.info("created tables: %s", ", ".join(created))
    return created


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


def add_missing_columns(
    conn: Connection, table: str, wanted: Mapping[str, str], revision: str, policy: LockPolicy | None = None
) -> list[str]:
    """Add each absent column (nullable, no default: a catalog-only change) in one short transaction."""
    added: list[str] = []

    def add(c: Connection) -> None:
        added.clear()
        present = columns(c, table)
        for name, ddl_type in wanted.items():
            if name not in present:
                c.execute(sa.text(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {ddl_type}'))
                record_owned(c, "column", f"{table}.{name}", revision)
                added.append(name)

    run_locked(conn, add, relations=[table], policy=policy)
    if added:
        log.info("added columns to %s: %s", table, ", ".join(added))
    return added


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


def ensure_enum_labels(conn: Connection, type_name: str, labels: Sequence[str], revision: str) -> list[str]:
    """Add missing labels to an enum, each in a transaction of its own (committed before the run uses it).

    PostgreSQL cannot drop an enum label, so a downgrade leaves these in place (recorded as owned).
    """
    missing = [label for label in labels if label not in enum_labels(conn, type_name)]
    for label in missing:
        run_locked(
            conn,
            [f"ALTER TYPE {type_name} ADD VALUE IF NOT EXISTS '{label}'"],
            relations=["tasks"],
        )
        record_owned(conn, "enum_label", f"{type_name}.{label}", revision)
    return missing
