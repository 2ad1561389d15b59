"""Indexes built CONCURRENTLY (writers go on), an INVALID leftover of an interrupted build rebuilt."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskdb.constraints import Index, ensure_index
from taskdb.offline import literal
from taskdb.sql import SCHEMA_TOKEN, beside, fill
from taskdb.steps.base import SHARE_UPDATE, Facts, Online, Step

if TYPE_CHECKING:
    from taskdb.offline import OfflineScript

SQL = beside(__file__)


@dataclass(frozen=True)
class BuildIndex(Step):
    index: Index

    def facts(self) -> Iterator[Facts]:
        yield Facts(
            f"CREATE INDEX CONCURRENTLY {self.index.name} ON {self.index.table} "
            + self.index.definition.replace(f"{SCHEMA_TOKEN}.", ""),
            SHARE_UPDATE.format(table=self.index.table),
            True,
        )

    def online(self, run: Online) -> None:
        ensure_index(run.conn, self.index, run.revision)

    def offline(self, sql: OfflineScript) -> None:
        index = self.index
        owned_name = literal(f"{index.table}.{index.name}")
        with sql.transaction():  # an INVALID leftover stops the script; recorded as taskdb's before the build
            sql.emit(fill(SQL["index_check"], "index_check", name_literal=literal(index.name)))
            sql.emit(
                fill(
                    SQL["index_record"],
                    "index_record",
                    owned_name=owned_name,
                    revision=literal(sql.revision),
                    name_literal=literal(index.name),
                )
            )
        with sql.outside_transaction():
            sql.emit(f"SET lock_timeout = {sql.lock_timeout}")
            sql.emit("SET statement_timeout = 0")
            sql.emit(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index.name} ON {index.table} {index.definition}")
            sql.emit("RESET statement_timeout")
            sql.emit("RESET lock_timeout")
        with sql.transaction():
            comment = literal(index.why)
            sql.emit(
                fill(SQL["index_comment"], "index_comment", owned_name=owned_name, name=index.name, comment=comment)
            )
