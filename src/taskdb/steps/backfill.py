"""The backfill: every row gets its user and run type or is flagged, in keyset batches (taskdb.backfill)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskdb.backfill import run_backfill
from taskdb.migration import actor
from taskdb.steps.base import ROW_LOCKS, Facts, Online, Step

if TYPE_CHECKING:
    from taskdb.offline import OfflineScript


@dataclass(frozen=True)
class Backfill(Step):
    """Backfill and flag the rows that need it, resumable from its checkpoint (job = the revision), every
    change logged in task_hygiene_log under the revision as actor (a downgrade restores it)."""

    what: str = "backfill / flag the rows that need it, in keyset batches, resumable"

    def facts(self) -> Iterator[Facts]:
        yield Facts(self.what, ROW_LOCKS, True)

    def online(self, run: Online) -> None:
        run_backfill(run.conn, job=run.revision, actor=actor(run.revision))

    def offline(self, sql: OfflineScript) -> None:
        sql.backfill(sql.revision, actor(sql.revision))
