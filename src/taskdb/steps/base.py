"""The step protocol and the runner that walks a revision's steps online or offline."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy.engine import Connection

from taskdb.failpoints import failpoint
from taskdb.throttle import ReplicaThrottle

if TYPE_CHECKING:
    from taskdb.offline import OfflineScript

log = logging.getLogger("taskdb.steps")

# The locks a step may take, as the plan prints them: one wording per kind of lock.
BRIEF_EXCLUSIVE = "ACCESS EXCLUSIVE on {table} for milliseconds, lock_timeout + retries"
BRIEF_SHARE_ROW = "SHARE ROW EXCLUSIVE on {tables} for milliseconds, lock_timeout + retries"
SHARE_UPDATE = "SHARE UPDATE EXCLUSIVE on {table} (reads and writes continue)"
ROW_LOCKS = (
    "row locks FOR NO KEY UPDATE, one batch (one short transaction) at a time; SKIP LOCKED, but for a last sweep"
    " that waits (lock_timeout) for the rows workers held"
)
NO_LOCK = "none on existing tables"


@dataclass(frozen=True)
class Facts:
    """What the plan says about one step."""

    what: str
    lock: str
    scans_tasks: bool


class Step:
    """One online-safe step of a revision (see the package doc). ``before``: a failpoint fired just before
    the step starts online (the crash suite's hooks). ``shares_transaction``: offline, consecutive steps of a
    revision that say so run in one transaction, the one that also moves the version (0001's and 0002's
    catalog-only steps: a rerun after a failure finds nothing of them half-done)."""

    before: str | None = None
    shares_transaction: ClassVar[bool] = False

    def facts(self) -> Iterator[Facts]:
        """The plan's lines for this step, in the order :meth:`online` announces them."""
        raise NotImplementedError

    def online(self, run: Online) -> None:
        raise NotImplementedError

    def offline(self, sql: OfflineScript) -> None:
        raise NotImplementedError


@dataclass
class Online:
    """What a step gets online: the AUTOCOMMIT connection and its revision; :meth:`announce` logs a step's
    facts as it starts (the plan-order test reads these lines)."""

    conn: Connection
    revision: str
    current: Facts | None = None  # the step announced last: what an error names (taskdb.errors)

    def announce(self, fact: Facts) -> None:
        self.current = fact
        log.info("%s: %s", self.revision, fact.what, extra={"taskdb_step": {"revision": self.revision, **vars(fact)}})

    def run(self, step: Step) -> None:
        if step.before:
            failpoint(step.before)
        fact = next(step.facts())
        self.announce(fact)  # a step with several facts announces the later ones itself
        ReplicaThrottle.from_env().wait(self.conn, f"step {fact.what!r} of {self.revision}")
        step.online(self)


def note(sql: OfflineScript, fact: Facts) -> None:
    """The offline twin of :meth:`Online.announce`: a comment in the script just before the step's SQL."""
    sql.comment_next(f"step: {fact.what}\nlock: {fact.lock}")


def write(sql: OfflineScript, step: Step) -> None:
    """A step's SQL, after a comment with its (first) facts."""
    note(sql, next(step.facts()))
    step.offline(sql)


def facts(steps: Iterable[Step]) -> list[Facts]:
    """The plan of a revision: every step's facts, in order."""
    return [fact for step in steps for fact in step.facts()]


def upgrade(revision: str, steps: Sequence[Step]) -> None:
    """A revision's ``upgrade()``: its steps online (``taskdb upgrade``) or as SQL (``taskdb sql``)."""
    from taskdb.migration import offline_mode, offline_step, online_step

    if offline_mode():
        with offline_step(revision) as sql:
            for shared, group in groupby(steps, key=lambda step: step.shares_transaction):
                run = list(group)
                with sql.transaction() if shared and len(run) > 1 else nullcontext():  # their own transactions join it
                    for step in run:
                        write(sql, step)
        return
    with online_step(revision) as conn:
        runner = Online(conn, revision)
        for step in steps:
            runner.run(step)
