"""Read-only questions about the database's catalog, and the record of what taskdb created.

Downgrades must never drop what the package did not create, so every table, column, NOT NULL and
enum label that an upgrade adds is written to ``taskdb_owned_objects`` in the same transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from taskdb.db import rows, scalar

OWNED_TABLE = "taskdb_owned_objects"

log = logging.getLogger("taskdb.catalog")


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(), e.g. 'uuid', 'text', 'task_status', 'timestamp with time zone'
    not_null: bool
    is_enum: bool


def table_exists(conn: Connection, table: str) -> bool:
    return scalar(conn, "SELECT to_regclass(:t) IS NOT NULL", {"t": table}) is True


def columns(conn: Connection, table: str) -> dict[str, Column]:
    found = rows(
        conn,
        """
        SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null,
               t.typtype = 'e' AS is_enum
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = to_regclass(:t) AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        {"t": table},
    )
    return {r["name"]: Column(**r) for r in found}


def has_unique_index_on(conn: Connection, table: str, column: str) -> bool:
    return (
        scalar(
            conn,
            """
        SELECT EXISTS (
            SELECT 1 FROM pg_index i
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = to_regclass(:t) AND i.indisunique AND i.indisvalid
              AND i.indnatts = 1 AND i.indpred IS NULL AND a.attname = :c)
        """,
            {"t": table, "c": column},
        )
        is True
    )


def enum_labels(conn: Connection, type_name: str) -> list[str]:
    return [
        r["enumlabel"]
        for r in rows(
            conn,
            "SELECT enumlabel FROM pg_enum WHERE enumtypid = to_regtype(:t) ORDER BY enumsortorder",
            {"t": type_name},
        )
    ]


@dataclass(frozen=True)
class ConstraintState:
    name: str
    kind: str  # pg_constraint.contype: c (check), f (foreign key), ...
    validated: bool
    definition: str


def constraint(conn: Connection, table: str, name: str) -> ConstraintState | None:
    found = rows(
        conn,
        """
        SELECT conname AS name, contype::text AS kind, convalidated AS validated,
               pg_get_constraintdef(oid) AS definition
        FROM pg_constraint WHERE conrelid = to_regclass(:t) AND conname = :n
        """,
        {"t": table, "n": name},
    )
    return ConstraintState(**found[0]) if found else None


def index_is_valid(conn: Connection, name: str) -> bool | None:
    """True/False for an existing index's ``indisvalid``; None when there is no such index."""
    return scalar(
        conn,
        "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(:n)",
        {"n": name},
    )


# -- what taskdb created ------------------------------------------------------------------------------


def ensure_owned_table(conn: Connection) -> None:
    conn.exec_driver_sql(
        f"""
        CREATE TABLE IF NOT EXISTS {OWNED_TABLE} (
            seq bigint GENERATED ALWAYS AS IDENTITY,  -- creation order: downgrades undo in reverse
            kind text NOT NULL,           -- table | column | not_null | enum_label
            name text NOT NULL,           -- e.g. tasks, tasks.user_id, task_status.Cancelled
            revision text NOT NULL,       -- the Alembic revision that created it
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (kind, name)
        )
        """
    )
    conn.exec_driver_sql(
        f"COMMENT ON TABLE {OWNED_TABLE} IS 'Objects taskdb created (not adopted): downgrades drop only these.'"
    )


def record_owned(conn: Connection, kind: str, name: str, revision: str) -> None:
    conn.execute(
        sa.text(
            f"INSERT INTO {OWNED_TABLE} (kind, name, revision) VALUES (:k, :n, :r) ON CONFLICT (kind, name) DO NOTHING"
        ),
        {"k": kind, "n": name, "r": revision},
    )


def owned(conn: Connection, kind: str, revision: str | None = None) -> list[str]:
    if not table_exists(conn, OWNED_TABLE):
        return []
    return [
        r["name"]
        for r in rows(
            conn,
            f"SELECT name FROM {OWNED_TABLE} WHERE kind = :k AND (CAST(:r AS text) IS NULL OR revision = :r) "
            "ORDER BY seq",
            {"k": kind, "r": revision},
        )
    ]


def forget_owned(conn: Connection, kind: str, name: str) -> None:
    conn.execute(sa.text(f"DELETE FROM {OWNED_TABLE} WHERE kind = :k AND name = :n"), {"k": kind, "n": name})


def ensure_roles(conn: Connection, roles: tuple[str, ...], revision: str) -> bool:
    """Create the missing NOLOGIN group roles where this role may; True when all of them exist.

    Roles are cluster-wide: the record in taskdb_owned_objects says this database's migration made
    them, but no downgrade drops them (another database may grant to them).
    """
    may_create = scalar(conn, "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
    for role in roles:
        if scalar(conn, "SELECT 1 FROM pg_roles WHERE rolname = :r", {"r": role}):
            continue
        if not may_create:
            who = scalar(conn, "SELECT current_user")
            log.warning("role %s does not exist and %s may not create roles: grants skipped", role, who)
            return False
        conn.exec_driver_sql(f'CREATE ROLE "{role}" NOLOGIN')
        record_owned(conn, "role", role, revision)
    return True
