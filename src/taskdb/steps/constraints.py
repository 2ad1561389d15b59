"""Constraints the online-safe way (taskdb.constraints): added NOT VALID (a brief lock, no scan), validated
in a transaction of their own (writers go on), NOT NULL through a validated CHECK, and the write guard that
leaves no moment in which a legacy row cannot be updated."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskdb.constraints import (
    Check,
    ForeignKey,
    WriteGuard,
    add_not_valid,
    drop_write_guard,
    drop_write_guard_sql,
    ensure_not_null,
    install_write_guard,
    validate,
    write_guard_sql,
)
from taskdb.steps.base import BRIEF_EXCLUSIVE, BRIEF_SHARE_ROW, SHARE_UPDATE, Facts, Online, Step, note, write

if TYPE_CHECKING:
    from taskdb.offline import OfflineScript


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
        sql.add_not_valid(self.item)


@dataclass(frozen=True)
class Validate(Step):
    """VALIDATE CONSTRAINT in its own transaction: it scans under SHARE UPDATE EXCLUSIVE."""

    item: Check | ForeignKey

    def facts(self) -> Iterator[Facts]:
        yield Facts(f"VALIDATE CONSTRAINT {self.item.name}", SHARE_UPDATE.format(table=self.item.table), True)

    def online(self, run: Online) -> None:
        validate(run.conn, self.item.table, self.item.name)

    def offline(self, sql: OfflineScript) -> None:
        sql.validate(self.item)


@dataclass(frozen=True)
class SetNotNull(Step):
    """SET NOT NULL without a scan under ACCESS EXCLUSIVE: CHECK (col IS NOT NULL) NOT VALID, VALIDATE it,
    SET NOT NULL (PostgreSQL uses the validated CHECK), drop the CHECK."""

    table: str
    column: str

    def facts(self) -> Iterator[Facts]:
        yield Facts(
            f"SET NOT NULL on {self.table}.{self.column} via a validated CHECK",
            f"{SHARE_UPDATE.format(table=self.table)} to validate, then "
            + BRIEF_EXCLUSIVE.format(table=self.table).replace(" for milliseconds", " for milliseconds (no scan)"),
            True,
        )

    def online(self, run: Online) -> None:
        ensure_not_null(run.conn, self.table, self.column, run.revision)

    def offline(self, sql: OfflineScript) -> None:
        sql.ensure_not_null(self.table, self.column)


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
