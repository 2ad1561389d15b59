"""Adopt the tables a revision needs as they are, or create the absent ones; refuse a shape taskdb cannot use
before anything changes (0001; 0005's check of users.credits)."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from taskdb.adopt import TableSpec
from taskdb.catalog import (
    columns,
    ensure_owned_table,
    has_unique_index_on,
    record_owned,
    table_exists,
)
from taskdb.errors import SchemaMismatch
from taskdb.locks import run_locked
from taskdb.offline import captured, jsonb, literal, record_owned_sql
from taskdb.sql import beside, fill
from taskdb.steps.base import NO_LOCK, Facts, Online, Step

if TYPE_CHECKING:
    from taskdb.offline import OfflineScript

log = logging.getLogger("taskdb.adopt")
SQL = beside(__file__)


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


@dataclass(frozen=True)
class CheckShapes(Step):
    """Every existing table has the columns (and types) taskdb needs: a catalog read, nothing written."""

    shares_transaction = True

    specs: Sequence[TableSpec]
    optional: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)  # table: column: types

    def facts(self) -> Iterator[Facts]:
        names = ", ".join(spec.name for spec in self.specs)
        yield Facts(f"check the shape of {names} where they exist (refused before any change)", NO_LOCK, False)

    def online(self, run: Online) -> None:
        for spec in self.specs:
            check_shape(run.conn, spec, self.optional.get(spec.name, {}))

    def offline(self, sql: OfflineScript) -> None:
        specs = [
            {
                "table": spec.name,
                "unique_key": spec.unique_key,
                "columns": [{"name": n, "required": True, "types": list(t)} for n, t in spec.required.items()]
                + [
                    {"name": n, "required": False, "types": list(t)}
                    for n, t in self.optional.get(spec.name, {}).items()
                ],
            }
            for spec in self.specs
        ]
        with sql.transaction():  # one DO block that RAISEs (check_shape's message) before anything changes
            sql.emit(fill(SQL["check_shapes"], "check_shapes", specs=jsonb(specs)))


@dataclass(frozen=True)
class CreateMissingTables(Step):
    """The absent tables, created in the legacy shape and recorded as the revision's (downgrade drops only
    those, and only while empty)."""

    shares_transaction = True

    specs: Sequence[TableSpec]

    def facts(self) -> Iterator[Facts]:
        names = ", ".join(spec.name for spec in self.specs)
        yield Facts(
            f"create the absent ones of {names} (legacy shape)",
            "ACCESS EXCLUSIVE on the tables it creates (new, empty); SHARE ROW EXCLUSIVE on an existing table a new"
            " one references (projects -> users), for milliseconds",
            False,
        )

    def online(self, run: Online) -> None:
        create_missing_tables(run.conn, self.specs, run.revision)

    def offline(self, sql: OfflineScript) -> None:
        with sql.transaction():  # the ownership record's table, then each absent table, in order
            for statement in captured(ensure_owned_table):
                sql.emit(statement)
            for spec in self.specs:
                sql.emit(
                    fill(
                        SQL["create_table"],
                        "create_table",
                        table_literal=literal(spec.name),
                        create_sql=textwrap.indent(spec.create_sql.strip(), " " * 8).lstrip(),
                        record_owned=record_owned_sql("table", spec.name, sql.revision),
                    )
                )
