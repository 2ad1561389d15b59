"""The backfill engine: derive ``user_id`` / ``run_type``, normalise ``status``, flag what cannot be derived.

Algorithm (:func:`run_backfill`). Each decision is a statement of ``sql/backfill.sql``, the same ones the
offline script's procedure runs (``pg_temp.taskdb_backfill``); this module loops around them, and keeps the
progress, the logs, the failpoints, the pacing and the lock retries:

1. ``begin_job``: count the rows that need work, exactly (the progress total), and read the checkpoint of this
   job (``taskdb_backfill_progress``: sweep, mode, last id, rows done in that sweep). A run that crashed resumes
   in the same sweep, after the last id it committed; nothing is redone, and redoing would change nothing. A
   finished job with nothing left to do keeps its record.
2. Sweep the table in keyset batches (``resolve_batch``: ``ORDER BY id LIMIT n``). Each batch is ONE statement,
   so one short transaction: it locks its rows ``FOR NO KEY UPDATE SKIP LOCKED`` (never waiting on a worker),
   applies the rules, writes ``task_hygiene_log``, and moves the checkpoint, all or nothing. ``next_size``
   adapts the window towards its target duration.
3. ``end_sweep``: what the sweep did (a crashed run's part of it included, so a resumed run sweeps exactly as an
   uninterrupted one), what remains, and the next sweep (``next_sweep`` moves the checkpoint to it). A child
   whose orchestrator task still needs work waits for the next sweep; sweeps repeat while they make progress.
   Then a *final* sweep flags whatever still waits (missing parents, cycles).
4. Rows skipped because a worker held them are picked up by a *waiting* sweep that does wait for row
   locks, bounded by ``lock_timeout`` with jittered retries.
5. ``finish_job`` marks the job finished. Progress is reported as ``progress(done, total)`` before every batch.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from string import Template
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from taskdb.catalog import columns
from taskdb.db import read_only_transaction, scalar
from taskdb.failpoints import failpoint
from taskdb.locks import LockPolicy, run_locked
from taskdb.sql import queries
from taskdb.throttle import ReplicaThrottle

log = logging.getLogger("taskdb.backfill")

ProgressFn = Callable[[int, int], None]

# How a sweep of each mode takes its rows: normal and final sweeps skip the rows that workers hold locked, the
# waiting sweep waits for them (the offline procedure is given this table).
LOCK_CLAUSES = {"normal": "SKIP LOCKED", "final": "SKIP LOCKED", "waiting": ""}


@dataclass(frozen=True)
class BackfillConfig:
    """Batch size and pacing (environment: see :meth:`from_env`).

    A batch is a window of ``batch_size`` consecutive ids. With ``target_batch_ms`` the window grows or
    shrinks after every batch towards that duration (at most x2 or /2 a step, within ``min_batch_size``
    and ``max_batch_size``): a batch holds its rows' locks until it commits, so its duration bounds how
    long an application UPDATE of one of those rows can wait.
    """

    batch_size: int = 1000
    batch_delay_s: float = 0.0  # pause between batches, to leave I/O to the application
    throttle: ReplicaThrottle = field(default_factory=ReplicaThrottle)  # waits before a batch while replicas lag
    max_sweeps: int = 50  # a chain of orchestrator tasks this deep resolves; deeper ones are flagged
    target_batch_ms: float = 50.0  # 0: fixed batch_size
    min_batch_size: int = 100
    max_batch_size: int = 50_000

    @classmethod
    def from_env(cls) -> BackfillConfig:
        """``TASKDB_BACKFILL_BATCH_SIZE`` (the first window; a fixed size unless ``TASKDB_BACKFILL_TARGET_MS``
        is set too), ``TASKDB_BACKFILL_TARGET_MS`` (default 50; 0 = fixed), ``TASKDB_BACKFILL_DELAY_MS``; the throttle's
        ``TASKDB_MAX_REPLICA_LAG_MS`` and ``TASKDB_MAX_THROTTLE_WAIT_S`` (taskdb.throttle)."""
        size = os.environ.get("TASKDB_BACKFILL_BATCH_SIZE")
        target = os.environ.get("TASKDB_BACKFILL_TARGET_MS")
        config = cls(
            batch_size=int(size or cls.batch_size),
            batch_delay_s=int(os.environ.get("TASKDB_BACKFILL_DELAY_MS") or 0) / 1000,
            target_batch_ms=float(target) if target else (0.0 if size else cls.target_batch_ms),
            throttle=ReplicaThrottle.from_env(),
        )
        config.validate()
        return config

    def next_size(self, conn: Connection, size: int, elapsed_ms: float) -> int:
        """The next window: ``size`` scaled towards the target duration (``next_size`` in sql/backfill.sql, which
        the offline procedure runs too)."""
        return int(scalar(conn, render("next_size"), {"batch_size": size, "elapsed_ms": elapsed_ms, **self.pacing}))

    @property
    def pacing(self) -> dict[str, float]:
        """The binds of ``next_size`` that this configuration sets."""
        return {
            "target_batch_ms": self.target_batch_ms,
            "min_batch_size": self.min_batch_size,
            "max_batch_size": self.max_batch_size,
        }

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {self.batch_size}")
        if self.target_batch_ms < 0:
            raise ValueError(f"target_batch_ms must be >= 0, not {self.target_batch_ms}")
        if self.batch_delay_s < 0:
            raise ValueError(f"batch_delay_s must be >= 0, not {self.batch_delay_s}")
        if self.max_sweeps < 2:
            raise ValueError(f"max_sweeps must be >= 2, not {self.max_sweeps}")


@dataclass
class BackfillResult:
    total: int  # rows that needed work when the run started
    done: int  # rows backfilled or flagged by this run
    flagged: int
    sweeps: int
    resumed_from: str | None  # the checkpoint's cursor when this run resumed a crashed one
    batch_size: int = 0  # the current window (adapted batch by batch)


@cache
def render(query: str, *, status_type: str = "text", lock_clause: str = "SKIP LOCKED") -> str:
    """Fill the placeholders of a backfill query (each shared piece, written once, wherever it is needed)."""
    sql = queries("backfill")
    predicate = Template(sql["needs_work"])
    restores, restored = per_column("restores"), per_column("restored_values", status_type=status_type)
    earlier = {
        f"earlier_{name}": _ALIAS_H.sub("e.", text)
        for name, text in (
            *((f"restores_{c}", v) for c, v in restores.items()),
            *((f"restored_{c}", v) for c, v in restored.items()),
        )
    }
    needs_work = {"needs_work_t": predicate.substitute(t="t"), "needs_work_p": predicate.substitute(t="p")}
    return Template(sql[query]).substitute(
        **needs_work,
        count_needs_work=Template(sql["count_needs_work"]).substitute(needs_work),
        count_waiting_before=Template(sql["count_waiting_before"]).substitute(needs_work),
        restore_history=Template(sql["restore_history"]).substitute(logged_values=_indented(sql["logged_values"])),
        logged_values=_indented(sql["logged_values"]),
        **{f"restores_{column}": condition for column, condition in restores.items()},
        **{f"restored_{column}": value for column, value in restored.items()},
        **earlier,
        restores_any=" OR ".join(f"({condition})" for condition in restores.values()),
        status_type=status_type,
        lock_clause=lock_clause,
    )


_ALIAS_H = re.compile(r"\bh\.")  # the restore_history row's alias in the per-column sections


def per_column(section: str, **values: str) -> dict[str, str]:
    """A ``column: SQL`` section of sql/backfill.sql (``restores``: when a downgrade puts a column back;
    ``restored_values``: what it puts back), its placeholders filled with ``values``."""
    lines = [line for line in queries("backfill")[section].splitlines() if line.strip() and not line.startswith("--")]
    return {column: Template(text).substitute(values) for column, text in (line.split(": ", 1) for line in lines)}


def _indented(select_list: str) -> str:
    """The logged_values select list, one item a line, indented to sit in its CTE."""
    items = [line for line in select_list.splitlines() if line.strip() and not line.startswith("--")]
    return "\n           ".join(items)


def status_type(conn: Connection) -> str:
    return columns(conn, "tasks")["status"].type


def run_backfill(
    conn: Connection,
    *,
    job: str,
    actor: str,
    config: BackfillConfig | None = None,
    progress: ProgressFn | None = None,
    lock_policy: LockPolicy | None = None,
) -> BackfillResult:
    """Backfill and flag every row that needs it; ``conn`` must be in AUTOCOMMIT mode. See module doc."""
    config = config or BackfillConfig.from_env()
    config.validate()
    lock_policy = lock_policy or LockPolicy.from_env()
    st = status_type(conn)
    statements = {
        mode: sa.text(render("resolve_batch", status_type=st, lock_clause=lock)) for mode, lock in LOCK_CLAUSES.items()
    }

    return _run(conn, statements, job=job, actor=actor, config=config, lock_policy=lock_policy, progress=progress)


# Settings of every batch transaction (SET LOCAL: nothing stays on a pooled server connection).
# - jit off: a batch's cost estimate crosses jit_above_cost, and compiling took 300 of 400 ms per batch
#   (EXPLAIN ANALYZE, 100k rows); JIT only pays for long queries.
# - custom plans: a driver may prepare a statement it runs repeatedly, and PostgreSQL then switches to a
#   generic plan in which ``:after IS NULL OR id > :after`` cannot use the cursor, so every batch scanned
#   the index from the start: 809 s instead of about 60 at 1,000,000 rows.
# - asynchronous commit: a batch does not wait for its WAL to reach the disk (nor holds the WAL flush the
#   application's commits queue on). A crash can lose the last batches committed (up to 3 x wal_writer_delay),
#   never a part of one: each batch commits with its checkpoint, so the rerun resumes before them and redoes
#   them. Their rows are not lost either: a lost batch's changes and log rows go together.
BATCH_SETTINGS = {"jit": "off", "plan_cache_mode": "force_custom_plan", "synchronous_commit": "off"}


def _step(conn: Connection, name: str, **params: object) -> Any:
    """Run a step statement of sql/backfill.sql (begin_job, end_sweep, ...): its one row, if it returns one."""
    found = conn.execute(sa.text(render(name)), params)
    return found.one() if found.returns_rows else None


def _run(
    conn: Connection,
    statements: dict[str, sa.TextClause],
    *,
    job: str,
    actor: str,
    config: BackfillConfig,
    lock_policy: LockPolicy,
    progress: ProgressFn | None,
) -> BackfillResult:
    start = _step(conn, "begin_job", job=job)
    # where the run is: the checkpoint's binds, in the order the log lines name them
    at: dict[str, Any] = {"job": job, "sweep": int(start.sweep), "mode": str(start.mode)}
    total, after = int(start.total), None if start.last_id is None else str(start.last_id)
    result = BackfillResult(total=total, done=0, flagged=0, sweeps=0, resumed_from=after, batch_size=config.batch_size)
    if start.resumed:
        where = f"after id {after}" if after else "from its start"
        log.info("backfill %s: resuming sweep %d (%s) %s", *at.values(), where)
    if progress:
        progress(0, total)

    previous_waiting: int | None = None  # children waiting for their parent in the last sweep
    while total:  # nothing to do (0004's catch-up, a rerun): no sweep over the table at all
        resumed = after  # a crashed run committed this sweep's batches up to this id
        done, flagged, waiting = _sweep(
            conn, statements[at["mode"]], at, after, actor, config, lock_policy, progress=progress, result=result
        )
        result.sweeps += 1
        swept = {"done": done, "waiting": waiting, "after": resumed, "previous_waiting": previous_waiting}
        end = _step(conn, "end_sweep", **at, **swept, max_sweeps=config.max_sweeps)
        log.info(
            "backfill %s: sweep %d (%s) done: %d rows, %d flagged, %d waiting; %d remaining",
            *at.values(),
            *(end.done, flagged, end.waiting, end.remaining),
        )
        failpoint("backfill.after_sweep")
        if end.left_over:
            log.warning(
                "backfill %s: %d rows written during the backfill still need work after %d sweeps; "
                "the catch-up backfill of 0004_constraints (or a rerun) takes them",
                job,
                end.remaining,
                at["sweep"],
            )
        if end.next_mode is None:
            break
        previous_waiting, after = int(end.waiting), None
        at.update(sweep=at["sweep"] + 1, mode=str(end.next_mode))
        _step(conn, "next_sweep", **at)

    failpoint("backfill.before_finish")
    _step(conn, "finish_job", job=job)
    if progress:
        progress(result.done, max(total, result.done))
    return result


def _sweep(
    conn: Connection,
    statement: sa.TextClause,
    at: dict[str, Any],
    after: str | None,
    actor: str,
    config: BackfillConfig,
    lock_policy: LockPolicy,
    *,
    progress: ProgressFn | None,
    result: BackfillResult,
) -> tuple[int, int, int]:
    """The batches of the sweep ``at`` (job, sweep, mode) after ``after``: its rows done, flagged, waiting."""
    done = flagged = waiting = 0
    while True:
        params: dict[str, object] = {**at, "after": after, "batch_size": result.batch_size, "actor": actor}
        batch: dict[str, Any] = {}

        def run_batch(c: Connection, params: dict[str, object] = params, batch: dict[str, Any] = batch) -> None:
            batch.update(c.execute(statement, params).one()._mapping)

        config.throttle.wait(conn, f"a backfill batch of {at['job']}")
        started = time.monotonic()
        run_locked(conn, run_batch, policy=lock_policy, settings=BATCH_SETTINGS)
        if not batch["scanned"]:
            return done, flagged, waiting
        after = str(batch["last_id"])
        done += int(batch["done"])
        flagged += int(batch["flagged"])
        waiting += int(batch["waiting"])
        result.done += int(batch["done"])
        result.flagged += int(batch["flagged"])
        total = max(result.total, result.done)
        elapsed_ms = (time.monotonic() - started) * 1000
        # One line per batch; the record carries the figures, so a terminal can draw a progress bar instead.
        log.info(
            "backfill %s: sweep %d (%s) batch of %d ids in %.0f ms: %d of %d done, %d remaining",
            *at.values(),
            *(batch["scanned"], elapsed_ms, result.done, total, total - result.done),
            extra={"taskdb_progress": {"job": at["job"], "done": result.done, "total": total}},
        )
        result.batch_size = config.next_size(conn, result.batch_size, elapsed_ms)
        if progress:
            progress(result.done, total)
        failpoint("backfill.after_batch")  # the batch and its checkpoint are committed
        if config.batch_delay_s:
            time.sleep(config.batch_delay_s)


RESTORE_BATCH_SIZE = 1000  # tasks per restore batch (the offline script's too)


def restore(conn: Connection, *, actor: str, batch_size: int = RESTORE_BATCH_SIZE) -> int:
    """Undo what ``actor`` logged, in keyset batches over task ids; returns rows restored."""
    statement = sa.text(render("restore_batch", status_type=status_type(conn)))
    return _restore(conn, statement, actor=actor, batch_size=batch_size)


# restore_preview's per-task and per-column counts, in the order `taskdb downgrade --plan` prints them
PREVIEW_COUNTS = (
    "tasks",
    "kept",
    "gone",
    "status",
    "user_id",
    "run_type",
    "error_message",
    "legacy_reason",
    "updated_at",
)


def restore_preview(
    conn: Connection, *, actor: str, lock_timeout_ms: int, earlier: list[str] | None = None, batch_size: int = 10000
) -> dict[str, int]:
    """What :func:`restore` would put back for ``actor``, changing nothing: the same batches and conditions
    (``restore_preview`` in sql/backfill.sql), each batch in a READ ONLY transaction of its own, so no snapshot
    is held across the log. ``earlier``: the actors the same downgrade restores first (their restores are
    applied to the tasks before this actor's conditions are read). Figures from several moments: a concurrent
    writer may change them by the time the downgrade runs, and the downgrade then restores less (a later change
    wins)."""
    statement = sa.text(render("restore_preview"))
    totals = dict.fromkeys(PREVIEW_COUNTS, 0)
    after: str | None = None
    while True:
        with read_only_transaction(conn, lock_timeout_ms=lock_timeout_ms):
            batch = conn.execute(
                statement, {"actor": actor, "after": after, "batch_size": batch_size, "earlier": list(earlier or [])}
            ).one()
        if not batch.scanned:
            return totals
        for name in PREVIEW_COUNTS:
            totals[name] += int(getattr(batch, name))
        after = str(batch.last_id)


def _restore(conn: Connection, statement: sa.TextClause, *, actor: str, batch_size: int) -> int:
    after: str | None = None
    restored = 0
    while True:
        params = {"actor": actor, "after": after, "batch_size": batch_size}
        found: list[sa.Row] = []

        def run_batch(c: Connection, params: dict = params, found: list = found) -> None:
            found.append(c.execute(statement, params).one())

        run_locked(conn, run_batch, settings=BATCH_SETTINGS, label="restore batch")
        batch = found[-1]
        if not batch.scanned:
            return restored
        restored += int(batch.restored)
        after = str(batch.last_id)
