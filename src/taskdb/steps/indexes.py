"""Indexes built CONCURRENTLY (writers go on), an INVALID leftover of an interrupted build rebuilt."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskdb.constraints import Index, ensure_index
from taskdb.sql import SCHEMA_TOKEN
from taskdb.steps.base import SHARE_UPDATE, Facts, Online, Step

if TYPE_CHECKING:
    from taskdb.offline import OfflineScript


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
        sql.ensure_index(self.index)
