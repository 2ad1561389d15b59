"""Add the columns and enum labels taskdb needs where missing: catalog-only changes (0002)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from taskdb.catalog import (
    columns,
    enum_labels,
    record_owned,
)
from taskdb.locks import LockPolicy, run_locked
from taskdb.offline import literal, record_owned_sql, text_array
from taskdb.sql import beside, fill
from taskdb.steps.base import BRIEF_EXCLUSIVE, Facts, Online, Step

if TYPE_CHECKING:
    from taskdb.offline import OfflineScript

log = logging.getLogger("taskdb.adopt")
SQL = beside(__file__)


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


@dataclass(frozen=True)
class AddColumns(Step):
    """Each absent column, nullable and without a default (no table rewrite), recorded as the revision's."""

    shares_transaction = True

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

    shares_transaction = True

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
