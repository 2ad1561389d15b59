"""Constraints the online-safe way (taskdb.constraints): added NOT VALID (a brief lock, no scan), validated
in a transaction of their own (writers go on), NOT NULL through a validated CHECK, and the write guard that
leaves no moment in which a legacy row cannot be updated."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from taskdb.catalog import (
    columns,
    constraint,
    record_owned,
)
from taskdb.constraints import (
    Check,
    ForeignKey,
    WriteGuard,
    drop_write_guard,
    drop_write_guard_sql,
    install_write_guard,
    not_null_check_name,
    write_guard_sql,
)
from taskdb.db import rows, scalar, sqlstate
from taskdb.errors import ConstraintViolated
from taskdb.failpoints import failpoint
from taskdb.locks import LockPolicy, run_locked
from taskdb.offline import literal, record_owned_sql
from taskdb.sql import beside, fill
from taskdb.steps.base import BRIEF_EXCLUSIVE, BRIEF_SHARE_ROW, SHARE_UPDATE, Facts, Online, Step, note, write

if TYPE_CHECKING:
    from taskdb.offline import OfflineScript

log = logging.getLogger("taskdb.constraints")
SQL = beside(__file__)


def comment_sql(kind: str, name: str, table: str, why: str) -> str:
    return f"COMMENT ON {kind} {name} ON {table} IS {literal(why)}"


def add_sql(item: Check | ForeignKey) -> str:
    """ALTER TABLE ... ADD CONSTRAINT ... NOT VALID."""
    if isinstance(item, Check):
        return f"ALTER TABLE {item.table} ADD CONSTRAINT {item.name} CHECK ({item.expression}) NOT VALID"
    return (
        f"ALTER TABLE {item.table} ADD CONSTRAINT {item.name} FOREIGN KEY ({item.column}) "
        f"REFERENCES {item.references} NOT VALID"
    )


def add_not_valid_sql(
    sql: OfflineScript, item: Check | ForeignKey, *, owned: bool = True, only_if_nullable: str | None = None
) -> None:
    """ADD ... NOT VALID where absent, in a transaction of its own (recorded as the revision's unless ``owned``
    is false); with ``only_if_nullable``, only while that column still accepts NULL (the NOT NULL route)."""
    also = ""
    if only_if_nullable:
        also = (
            f"\n       AND EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = {literal(item.table)}::regclass"
            f" AND attname = {literal(only_if_nullable)} AND NOT attnotnull)"
        )
    record = record_owned_sql("constraint", f"{item.table}.{item.name}", sql.revision) if owned else "NULL"
    with sql.transaction():
        sql.emit(
            fill(
                SQL["add_constraint"],
                "add_constraint",
                table_literal=literal(item.table),
                name_literal=literal(item.name),
                also=also,
                add_sql=add_sql(item),
                comment_sql=comment_sql("CONSTRAINT", item.name, item.table, item.why),
                record_owned=record,
            )
        )


CHECK_VIOLATION = "23514"

FOREIGN_KEY_VIOLATION = "23503"


def add_not_valid(
    conn: Connection, item: Check | ForeignKey, revision: str | None, policy: LockPolicy | None = None
) -> None:
    """Add the constraint without scanning: from now on every insert and update must satisfy it.

    A constraint of that name that already exists is adopted as it is (and not recorded as taskdb's).
    """
    if constraint(conn, item.table, item.name) is not None:
        return
    relations = [item.table]
    if isinstance(item, ForeignKey):
        relations.append(item.references.split("(")[0])

    def add(c: Connection) -> None:
        c.execute(sa.text(add_sql(item)))
        c.execute(sa.text(comment_sql("CONSTRAINT", item.name, item.table, item.why)))
        if revision:
            record_owned(c, "constraint", f"{item.table}.{item.name}", revision)

    run_locked(conn, add, relations=relations, policy=policy, label=add_sql(item))
    failpoint("constraints.after_add_not_valid")


def validate(conn: Connection, table: str, name: str, policy: LockPolicy | None = None) -> None:
    """VALIDATE a NOT VALID constraint; a violation becomes an error naming up to 10 offending rows."""
    state = constraint(conn, table, name)
    if state is None or state.validated:
        return
    try:
        run_locked(conn, [f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}"], relations=[table], policy=policy)
    except DBAPIError as exc:
        if sqlstate(exc) not in (CHECK_VIOLATION, FOREIGN_KEY_VIOLATION) or state.kind != "c":
            raise
        expression = state.definition.removeprefix("CHECK ").removesuffix(" NOT VALID")
        bad = rows(conn, f"SELECT id::text AS id FROM {table} WHERE NOT {expression} LIMIT 10")
        raise ConstraintViolated(table, name, [r["id"] for r in bad]) from None
    failpoint("constraints.after_validate")


def ensure_not_null(conn: Connection, table: str, column: str, revision: str, policy: LockPolicy | None = None) -> bool:
    """Make ``column`` NOT NULL without a long ACCESS EXCLUSIVE scan. False (and a warning) if rows are NULL.

    A column that some rows leave NULL keeps accepting NULL: taskdb invents no values.
    """
    if columns(conn, table)[column].not_null:
        return True
    check = Check(not_null_check_name(table, column), table, f"{column} IS NOT NULL", "temporary: taskdb NOT NULL")
    add_not_valid(conn, check, None, policy)
    try:
        validate(conn, table, check.name, policy)
    except ConstraintViolated:
        nulls = scalar(conn, f"SELECT count(*) FROM {table} WHERE {column} IS NULL")
        run_locked(conn, [f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {check.name}"], relations=[table])
        log.warning("%s.%s stays nullable: %s rows hold NULL and taskdb invents no values", table, column, nulls)
        return False

    def set_not_null(c: Connection) -> None:
        c.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL")
        c.exec_driver_sql(f"ALTER TABLE {table} DROP CONSTRAINT {check.name}")
        record_owned(c, "not_null", f"{table}.{column}", revision)
        failpoint("constraints.set_not_null_uncommitted")  # the transaction is still open

    failpoint("constraints.before_set_not_null")
    run_locked(conn, set_not_null, relations=[table], policy=policy)
    return True


def _referenced(item: ForeignKey) -> str:
    return item.references.split("(")[0]


@dataclass(frozen=True)
class AddNotValid(Step):
    """ADD CONSTRAINT ... NOT VALID where absent: from then on every write is checked, no row is scanned. A
    constraint of that name the database already has is adopted as it is."""

    item: Check | ForeignKey

    def facts(self) -> Iterator[Facts]:
        if isinstance(self.item, ForeignKey):
            tables = f"{self.item.table} and {_referenced(self.item)}"
            yield Facts(f"ADD FOREIGN KEY {self.item.name} NOT VALID", BRIEF_SHARE_ROW.format(tables=tables), False)
        else:
            yield Facts(f"ADD CHECK {self.item.name} NOT VALID", BRIEF_EXCLUSIVE.format(table=self.item.table), False)

    def online(self, run: Online) -> None:
        add_not_valid(run.conn, self.item, run.revision)

    def offline(self, sql: OfflineScript) -> None:
        add_not_valid_sql(sql, self.item)


@dataclass(frozen=True)
class Validate(Step):
    """VALIDATE CONSTRAINT in its own transaction: it scans under SHARE UPDATE EXCLUSIVE."""

    item: Check | ForeignKey

    def facts(self) -> Iterator[Facts]:
        yield Facts(f"VALIDATE CONSTRAINT {self.item.name}", SHARE_UPDATE.format(table=self.item.table), True)

    def online(self, run: Online) -> None:
        validate(run.conn, self.item.table, self.item.name)

    def offline(self, sql: OfflineScript) -> None:
        with sql.transaction(statement_timeout="0"):  # it scans: no statement_timeout
            sql.emit(f"ALTER TABLE {self.item.table} VALIDATE CONSTRAINT {self.item.name}")


@dataclass(frozen=True)
class SetNotNull(Step):
    """SET NOT NULL without a scan under ACCESS EXCLUSIVE: CHECK (col IS NOT NULL) NOT VALID, VALIDATE it,
    SET NOT NULL (PostgreSQL uses the validated CHECK), drop the CHECK."""

    table: str
    column: str

    def facts(self) -> Iterator[Facts]:
        yield Facts(
            f"SET NOT NULL on {self.table}.{self.column} via a validated CHECK",
            f"{BRIEF_EXCLUSIVE.format(table=self.table)} to add the CHECK NOT VALID; "
            f"{SHARE_UPDATE.format(table=self.table)} to validate it; then "
            + BRIEF_EXCLUSIVE.format(table=self.table).replace(" for milliseconds", " for milliseconds (no scan)"),
            True,
        )

    def online(self, run: Online) -> None:
        ensure_not_null(run.conn, self.table, self.column, run.revision)

    def offline(self, sql: OfflineScript) -> None:
        table, column = self.table, self.column
        name = not_null_check_name(table, column)
        check = Check(name, table, f"{column} IS NOT NULL", "temporary: taskdb NOT NULL")
        add_not_valid_sql(sql, check, owned=False, only_if_nullable=column)
        values = {
            "table": table,
            "table_literal": literal(table),
            "column": column,
            "column_literal": literal(column),
            "name": name,
            "name_literal": literal(name),
        }
        with sql.transaction(statement_timeout="0"):
            sql.emit(fill(SQL["not_null_validate"], "not_null_validate", **values))
        with sql.transaction():
            record = record_owned_sql("not_null", f"{table}.{column}", sql.revision)
            sql.emit(fill(SQL["not_null_set"], "not_null_set", **values, record_owned=record))


@dataclass(frozen=True)
class Guarded(Step):
    """``steps`` behind a write guard (taskdb.constraints.WriteGuard): the trigger goes in first, refusing new
    rows and updates that would break its checks, and is dropped after them. Online, a failure inside drops
    the guard before it is raised (a downgrade's restore must not meet it); the rerun installs it again."""

    guard: WriteGuard
    steps: Sequence[Step]

    def _install(self) -> Facts:
        return Facts(
            f"CREATE TRIGGER {self.guard.trigger}: the checks below enforced on new row versions meanwhile",
            BRIEF_SHARE_ROW.format(tables=self.guard.table),
            False,
        )

    def _drop(self) -> Facts:
        return Facts(f"DROP TRIGGER {self.guard.trigger}", BRIEF_EXCLUSIVE.format(table=self.guard.table), False)

    def facts(self) -> Iterator[Facts]:
        yield self._install()
        for step in self.steps:
            yield from step.facts()
        yield self._drop()

    def online(self, run: Online) -> None:
        install_write_guard(run.conn, self.guard)
        try:
            for step in self.steps:
                run.run(step)
        except Exception:
            with suppress(Exception):
                drop_write_guard(run.conn, self.guard)
            raise
        run.announce(self._drop())
        drop_write_guard(run.conn, self.guard)

    def offline(self, sql: OfflineScript) -> None:
        with sql.transaction():
            sql.frozen(write_guard_sql(self.guard))
        for step in self.steps:
            write(sql, step)
        note(sql, self._drop())
        with sql.transaction():
            sql.frozen(drop_write_guard_sql(self.guard))
