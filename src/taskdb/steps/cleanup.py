"""The stale-queue cleanup, run once by the revision that installs it (taskdb.hygiene)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskdb.hygiene import cancel_stale_queued
from taskdb.migration import actor
from taskdb.steps.base import Facts, Online, Step

if TYPE_CHECKING:
    from taskdb.offline import OfflineScript


@dataclass(frozen=True)
class CancelStale(Step):
    """Cancel the Queued tasks older than queued_ttl, in batches, logged under the revision as actor."""

    def facts(self) -> Iterator[Facts]:
        yield Facts(
            "cancel Queued tasks older than queued_ttl, in batches",
            "row locks SKIP LOCKED, one batch (one short transaction) at a time",
            False,  # the partial index on Queued rows finds them
        )

    def online(self, run: Online) -> None:
        cancel_stale_queued(run.conn, actor=actor(run.revision))

    def offline(self, sql: OfflineScript) -> None:
        sql.cleanup(actor(sql.revision))
