"""Adopt the tables a revision needs as they are, or create the absent ones; refuse a shape taskdb cannot use
before anything changes (0001; 0005's check of users.credits)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from taskdb.adopt import TableSpec, check_shape, create_missing_tables
from taskdb.catalog import ensure_owned_table
from taskdb.offline import captured, jsonb, literal, record_owned_sql
from taskdb.sql import beside, fill
from taskdb.steps.base import NO_LOCK, Facts, Online, Step

if TYPE_CHECKING:
    from taskdb.offline import OfflineScript

SQL = beside(__file__)


@dataclass(frozen=True)
class CheckShapes(Step):
    """Every existing table has the columns (and types) taskdb needs: a catalog read, nothing written."""

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

    specs: Sequence[TableSpec]

    def facts(self) -> Iterator[Facts]:
        names = ", ".join(spec.name for spec in self.specs)
        yield Facts(
            f"create the absent ones of {names} (legacy shape)",
            "none on existing tables; ACCESS EXCLUSIVE on tables it creates (new, empty)",
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
