"""The backfill engine: derive ``user_id`` / ``run_type``, normalise ``status``, flag what cannot be derived.

Algorithm (:func:`run_backfill`):

1. Count the rows that need work, exactly (``needs_work`` in ``sql/backfill.sql``): the progress total.
2. Read the checkpoint of this job (``taskdb_backfill_progress``: sweep, mode, last id, rows done in
   that sweep). A run that crashed resumes in the same sweep, after the last id it committed; nothing is
   redone, and redoing would change nothing. The crashed run's part of the sweep counts when the next
   sweep's mode is chosen (its rows_done; its waiting rows still wait), so a resumed run sweeps exactly as
   an uninterrupted one. A finished job with nothing left to do keeps its record.
3. Sweep the table in keyset batches (``ORDER BY id LIMIT n``). Each batch is ONE statement, so one
   short transaction: it locks its rows ``FOR NO KEY UPDATE SKIP LOCKED`` (never waiting on a worker),
   applies the rules, writes ``task_hygiene_log``, and moves the checkpoint, all or nothing.
4. A child whose orchestrator task still needs work waits for the next sweep; sweeps repeat while they
   make progress. Then a *final* sweep flags whatever still waits (missing parents, cycles).
5. Rows skipped because a worker held them are picked up by a *waiting* sweep that does wait for row
   locks, bounded by ``lock_timeout`` with jittered retries.
6. The job is marked finished. Progress is reported as ``progress(done, total)`` before every batch.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from string import Template

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from taskdb.catalog import columns
from taskdb.db import read_only_transaction, rows, scalar
from taskdb.failpoints import failpoint
from taskdb.locks import LockPolicy, run_locked
from taskdb.sql import queries

log = logging.getLogger("taskdb.backfill")

ProgressFn = Callable[[int, int], None]

NORMAL, FINAL, WAITING = "normal", "final", "waiting"


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
    max_sweeps: int = 50  # a chain of orchestrator tasks this deep resolves; deeper ones are flagged
    target_batch_ms: float = 50.0  # 0: fixed batch_size
    min_batch_size: int = 100
    max_batch_size: int = 50_000

    @classmethod
    def from_env(cls) -> BackfillConfig:
        """``TASKDB_BACKFILL_BATCH_SIZE`` (the first window; a fixed size unless ``TASKDB_BACKFILL_TARGET_MS``
        is set too), ``TASKDB_BACKFILL_TARGET_MS`` (default 50; 0 = fixed), ``TASKDB_BACKFILL_DELAY_MS``."""
        size = os.environ.get("TASKDB_BACKFILL_BATCH_SIZE")
        target = os.environ.get("TASKDB_BACKFILL_TARGET_MS")
        config = cls(
            batch_size=int(size or cls.batch_size),
            batch_delay_s=int(os.environ.get("TASKDB_BACKFILL_DELAY_MS") or 0) / 1000,
            target_batch_ms=float(target) if target else (0.0 if size else cls.target_batch_ms),
        )
        config.validate()
        return config

    def next_size(self, size: int, elapsed_ms: float) -> int:
        """The next window: ``size`` scaled towards the target duration."""
        if not self.target_batch_ms:
            return size
        scaled = size * self.target_batch_ms / max(elapsed_ms, 1.0)
        scaled = min(max(scaled, size / 2), size * 2)
        return int(min(max(scaled, self.min_batch_size), self.max_batch_size))

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
    return Template(sql[query]).substitute(
        needs_work_t=predicate.substitute(t="t"),
        needs_work_p=predicate.substitute(t="p"),
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


def count_needs_work(conn: Connection) -> int:
    return int(scalar(conn, render("count_needs_work")))


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
        lock: sa.text(render("resolve_batch", status_type=st, lock_clause=lock)) for lock in ("SKIP LOCKED", "")
    }

    return _run(conn, statements, job=job, actor=actor, config=config, lock_policy=lock_policy, progress=progress)


# Settings of every batch transaction (SET LOCAL: nothing stays on a pooled server connection).
# - jit off: a batch's cost estimate crosses jit_above_cost, and compiling took 300 of 400 ms per batch
#   (EXPLAIN ANALYZE, 100k rows); JIT only pays for long queries.
# - custom plans: a driver may prepare a statement it runs repeatedly, and PostgreSQL then switches to a
#   generic plan in which ``:after IS NULL OR id > :after`` cannot use the cursor, so every batch scanned
#   the index from the start: 809 s instead of about 60 at 1,000,000 rows.
BATCH_SETTINGS = {"jit": "off", "plan_cache_mode": "force_custom_plan"}


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
    total = count_needs_work(conn)
    sweep, mode, after = _checkpoint(conn, job, total)
    result = BackfillResult(total=total, done=0, flagged=0, sweeps=0, resumed_from=after, batch_size=config.batch_size)
    if after:
        log.info("backfill %s: resuming sweep %d (%s) after id %s", job, sweep, mode, after)
    if progress:
        progress(0, total)

    previous_waiting: int | None = None  # children waiting for their parent in the last normal sweep
    while total:  # nothing to do (0004's catch-up, a rerun): no sweep over the table at all
        resumed = after  # a crashed run committed this sweep's batches up to this id
        done, flagged, waiting = _sweep(
            conn,
            statements,
            job=job,
            actor=actor,
            sweep=sweep,
            mode=mode,
            after=after,
            config=config,
            lock_policy=lock_policy,
            progress=progress,
            result=result,
        )
        result.sweeps += 1
        if resumed:
            done, waiting = _whole_sweep(conn, job, resumed, waiting)
        remaining = count_needs_work(conn)
        log.info(
            "backfill %s: sweep %d (%s) done: %d rows, %d flagged, %d waiting; %d remaining",
            job,
            sweep,
            mode,
            done,
            flagged,
            waiting,
            remaining,
        )
        failpoint("backfill.after_sweep")
        if remaining == 0:
            break
        if mode == WAITING:
            # A waiting sweep finishes every row that existed when it began (it waits for locked ones): what
            # remains was written during it, e.g. by an old application version. Sweeping again would only chase
            # new writes with a whole-table scan each time (seen: 50 sweeps while an old app kept writing);
            # 0004's catch-up takes them, behind its write guard that lets no new one in.
            log.warning(
                "backfill %s: %d rows written during the backfill still need work after %d sweeps; "
                "the catch-up backfill of 0004_constraints (or a rerun) takes them",
                job,
                remaining,
                sweep,
            )
            break
        # More normal sweeps while children keep finding healthy parents (fewer wait each time: rows an old
        # application keeps writing are done in every sweep, so `done` alone is no progress, seen: 49 sweeps);
        # then flag the rest; then wait for the rows that workers held locked.
        progressed = previous_waiting is None or waiting < previous_waiting
        previous_waiting = waiting
        if mode == NORMAL and waiting and done and progressed and sweep < config.max_sweeps - 1:
            next_mode = NORMAL
        elif mode == NORMAL:
            next_mode = FINAL
        else:
            next_mode = WAITING
        sweep, mode, after = sweep + 1, next_mode, None
        conn.execute(  # the checkpoint of the new sweep: its rows_done counts this sweep's rows only
            sa.text(
                "UPDATE taskdb_backfill_progress SET sweep = :sweep, mode = :mode, last_id = NULL, rows_done = 0, "
                "updated_at = clock_timestamp() WHERE job = :job"
            ),
            {"job": job, "sweep": sweep, "mode": mode},
        )

    failpoint("backfill.before_finish")
    conn.execute(
        sa.text("UPDATE taskdb_backfill_progress SET finished_at = clock_timestamp() WHERE job = :job"),
        {"job": job},
    )
    if progress:
        progress(result.done, max(total, result.done))
    return result


def _checkpoint(conn: Connection, job: str, total: int) -> tuple[int, str, str | None]:
    found = rows(
        conn,
        "SELECT sweep, mode, last_id::text AS last_id, finished_at FROM taskdb_backfill_progress WHERE job = :job",
        {"job": job},
    )
    if found and found[0]["finished_at"] is not None and not total:
        # finished, nothing new to do (e.g. rerun after a crash before the version table moved): keep its record
        return int(found[0]["sweep"]), str(found[0]["mode"]), None
    if not found or found[0]["finished_at"] is not None:
        conn.execute(
            sa.text(
                "INSERT INTO taskdb_backfill_progress (job, sweep, mode) VALUES (:job, 1, :mode) "
                "ON CONFLICT (job) DO UPDATE SET sweep = 1, mode = :mode, last_id = NULL, rows_done = 0, "
                "started_at = clock_timestamp(), updated_at = clock_timestamp(), finished_at = NULL"
            ),
            {"job": job, "mode": NORMAL},
        )
        return 1, NORMAL, None
    return int(found[0]["sweep"]), str(found[0]["mode"]), found[0]["last_id"]


def _whole_sweep(conn: Connection, job: str, resumed_after: str, waiting: int) -> tuple[int, int]:
    """A resumed sweep's rows done and rows waiting, the crashed run's batches included: the checkpoint's
    rows_done counts every row of the sweep, and the rows up to the crash's cursor that still need work and
    have an orchestrator task are the ones that waited for it."""
    done = scalar(conn, "SELECT rows_done FROM taskdb_backfill_progress WHERE job = :job", {"job": job})
    waited = scalar(conn, render("count_waiting_before"), {"after": resumed_after})
    return int(done), waiting + int(waited)


def _sweep(
    conn: Connection,
    statements: dict[str, sa.TextClause],
    *,
    job: str,
    actor: str,
    sweep: int,
    mode: str,
    after: str | None,
    config: BackfillConfig,
    lock_policy: LockPolicy,
    progress: ProgressFn | None,
    result: BackfillResult,
) -> tuple[int, int, int]:
    statement = statements["" if mode == WAITING else "SKIP LOCKED"]
    done = flagged = waiting = 0
    while True:
        params = {
            "after": after,
            "batch_size": result.batch_size,
            "final": mode != NORMAL,
            "actor": actor,
            "job": job,
            "sweep": sweep,
            "mode": mode,
        }
        batch: dict[str, object] = {}

        def run_batch(c: Connection, params: dict[str, object] = params, batch: dict = batch) -> None:
            batch.update(c.execute(statement, params).one()._mapping)

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
            job,
            sweep,
            mode,
            batch["scanned"],
            elapsed_ms,
            result.done,
            total,
            total - result.done,
            extra={"taskdb_progress": {"job": job, "done": result.done, "total": total}},
        )
        result.batch_size = config.next_size(result.batch_size, elapsed_ms)
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
