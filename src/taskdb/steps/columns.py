"""Add the columns and enum labels taskdb needs where missing: catalog-only changes (0002)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskdb.adopt import add_missing_columns, ensure_enum_labels
from taskdb.catalog import columns
from taskdb.offline import literal, record_owned_sql, text_array
from taskdb.sql import beside, fill
from taskdb.steps.base import BRIEF_EXCLUSIVE, Facts, Online, Step

if TYPE_CHECKING:
    from taskdb.offline import OfflineScript

SQL = beside(__file__)


@dataclass(frozen=True)
class AddColumns(Step):
    """Each absent column, nullable and without a default (no table rewrite), recorded as the revision's."""

    table: str
    wanted: Mapping[str, str]  # column: type

    def facts(self) -> Iterator[Facts]:
        yield Facts(
            f"ADD COLUMN where missing: {', '.join(self.wanted)} (nullable, no default: catalog only)",
            BRIEF_EXCLUSIVE.format(table=self.table),
            False,
        )

    def online(self, run: Online) -> None:
        add_missing_columns(run.conn, self.table, self.wanted, run.revision)

    def offline(self, sql: OfflineScript) -> None:
        with sql.transaction():
            for column, ddl_type in self.wanted.items():
                sql.emit(
                    fill(
                        SQL["add_column"],
                        "add_column",
                        table=self.table,
                        table_literal=literal(self.table),
                        column=column,
                        column_literal=literal(column),
                        type=ddl_type,
                        record_owned=record_owned_sql("column", f"{self.table}.{column}", sql.revision),
                    )
                )


@dataclass(frozen=True)
class EnumLabels(Step):
    """Where ``status`` is an enum, the labels it lacks (PostgreSQL cannot drop them: a downgrade keeps them)."""

    labels: Sequence[str]

    def facts(self) -> Iterator[Facts]:
        yield Facts("ALTER TYPE ... ADD VALUE for the status enum's missing labels", "the enum type only", False)

    def online(self, run: Online) -> None:
        status = columns(run.conn, "tasks")["status"]
        if status.is_enum:
            ensure_enum_labels(run.conn, status.type, self.labels, run.revision)

    def offline(self, sql: OfflineScript) -> None:
        with sql.transaction():
            sql.emit(
                fill(SQL["enum_labels"], "enum_labels", labels=text_array(self.labels), revision=literal(sql.revision))
            )
