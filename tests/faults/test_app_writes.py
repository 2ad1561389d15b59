"""The application keeps writing while `taskdb upgrade` runs, through every step, and no write fails.

Writers in other connections loop over what the application does: insert healthy tasks, claim one
(``SELECT ... FOR UPDATE SKIP LOCKED`` then UPDATE to In Progress), complete one, fail one, update a legacy
row (NULL user_id / run_type: the GitLab incident, where a NOT VALID constraint made such UPDATEs fail in
production) and insert a row the old way (no user_id, no run_type), as an old application version would.

Each write reads, in its own transaction, the step the upgrade is in before and after the write (alembic's
version, the backfill checkpoints, 0004's write guard and constraints); a write counts for a step only when
both readings agree. Gates make the short windows certain to be seen, without making any writer wait:
- the version bump at the end of each revision waits (an EXCLUSIVE lock on ``taskdb_alembic_version``, which no
  writer needs) until the writers have done every kind of write in that revision's window;
- 0004's VALIDATEs wait (a SHARE UPDATE EXCLUSIVE lock on ``tasks``, which no writer conflicts with) until every
  kind of write went through while its CHECKs were NOT VALID.
The long windows (the 0003 backfill, 0004's catch-up backfill) are stretched with a small batch and a delay.

The one write refused on purpose: from 0004 on (its write guard, then ``tasks_healthy_has_owner_and_run_type``)
a new row without owner and run type that is not flagged is what the contract forbids, so the old-style
insert is refused with that constraint's name. Until then old-style rows are accepted; the 0004 catch-up
backfill repairs or flags them.

Without the write guard (before the fix) this test failed: UPDATEs of old-style rows written between 0003 and
0004 were refused by the NOT VALID ``tasks_healthy_has_owner_and_run_type`` until the catch-up flagged them.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from tests.helpers import CONSTRAINTS, HEAD, Db, user_id

pytestmark = pytest.mark.slow

KINDS = ("insert_healthy", "claim", "complete", "fail", "update_legacy", "insert_old_style")
# The windows every kind of write must reach: the revision being applied (taskdb_alembic_version shows the one
# before it), and the two long windows inside 0003 and 0004.
WINDOWS = ("0002", "0003 backfill", "0004 catch-up", "0004 NOT VALID", "0005", "0006", "0007", "0008")
NEXT = {
    None: "0001",
    "0001_baseline": "0002",
    "0002_columns": "0003",
    "0003_backfill": "0004",
    "0004_constraints": "0005",
    "0005_hygiene": "0006",
    "0006_cron": "0007",
    "0007_log_index": "0008",
    "0008_monitor_grants": "done",
}
GUARD = "tasks_healthy_has_owner_and_run_type"
WRITE_GUARD = "tasks_taskdb_write_guard"  # 0004's temporary trigger
CHECKS = sorted(CONSTRAINTS - {"tasks_user_id_fkey"})
USERS = [user_id(n) for n in ("alice", "bob", "dave")]
BULK_ROWS = 1500
GATE_PATIENCE_S = 20.0  # a gate gives up (and the test then fails naming what is missing) after this

# One statement: the upgrade's step as a writer sees it. query_to_xml reads tables that may not exist yet (a
# plain reference would not even parse). A write reads it before and after itself: equal readings pin the step.
PHASE_SQL = """
SELECT
  CASE WHEN to_regclass('public.taskdb_alembic_version') IS NOT NULL THEN (xpath('/row/v/text()', query_to_xml(
    'SELECT max(version_num) AS v FROM public.taskdb_alembic_version', false, true, '')))[1]::text END,
  CASE WHEN to_regclass('public.taskdb_backfill_progress') IS NOT NULL THEN (xpath('/row/v/text()', query_to_xml(
    'SELECT string_agg(job || ''='' || (finished_at IS NOT NULL), '','' ORDER BY job) AS v
     FROM public.taskdb_backfill_progress', false, true, '')))[1]::text END,
  (SELECT string_agg(conname || '=' || convalidated, ',' ORDER BY conname) FROM pg_constraint
   WHERE conrelid = 'public.tasks'::regclass AND conname = ANY (%(names)s)),
  EXISTS (SELECT FROM pg_trigger WHERE tgrelid = 'public.tasks'::regclass AND tgname = %(guard)s)
"""


@dataclass(frozen=True)
class Phase:
    version: str | None
    jobs: str
    constraints: str
    write_guard: bool

    @property
    def running(self) -> str:
        return NEXT[self.version]

    @property
    def guard(self) -> bool | None:
        """tasks_healthy_has_owner_and_run_type: None absent, False NOT VALID, True validated."""
        for item in self.constraints.split(","):
            name, _, valid = item.partition("=")
            if name == GUARD:
                return valid == "true"
        return None

    @property
    def refuses_unowned(self) -> bool:
        """A new row without owner and run type is refused: by 0004's write guard, then by the constraint."""
        return self.write_guard or self.guard is not None

    @property
    def windows(self) -> set[str]:
        found = {self.running}
        if self.running == "0003" and "0003_backfill=false" in self.jobs:
            found.add("0003 backfill")
        if self.running == "0003" and "0003_backfill=true" in self.jobs:
            found.add("0003 after backfill")
        if self.running == "0004" and "0004_constraints=false" in self.jobs:
            found.add("0004 catch-up")
        if self.running == "0004" and any(f"{name}=false" in self.constraints for name in CHECKS):
            found.add("0004 NOT VALID")
        return found


def read_phase(cur: psycopg.Cursor[Any]) -> Phase:
    version, jobs, constraints, guard = cur.execute(
        PHASE_SQL, {"names": sorted(CONSTRAINTS), "guard": WRITE_GUARD}
    ).fetchone()
    return Phase(version, jobs or "", constraints or "", guard)


@dataclass
class Write:
    kind: str
    before: Phase
    after: Phase | None
    ok: bool
    row: str | None = None
    sqlstate: str | None = None
    constraint: str | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def windows(self) -> set[str]:
        """The windows this write certainly happened in (both readings agree)."""
        if self.after is None or self.after != self.before:
            return set()
        return self.before.windows

    @property
    def refused_by_contract(self) -> bool:
        """An old-style insert refused because the guard constraint exists: the designed outcome."""
        return (
            self.kind == "insert_old_style"
            and not self.ok
            and self.sqlstate == "23514"
            and self.constraint == GUARD
            and self.after is not None
            and self.after.refuses_unowned
        )


class Writer(threading.Thread):
    """One application connection looping over every kind of write, each in its own short transaction."""

    def __init__(self, number: int, conninfo: dict[str, Any], legacy: list[str], stop: threading.Event) -> None:
        super().__init__(name=f"app-writer-{number}", daemon=True)
        self.number, self.conninfo, self.legacy, self.stop = number, conninfo, legacy, stop
        self.writes: list[Write] = []
        self.old_style: list[str] = []  # ids this writer inserted the old way
        self.claimed: list[str] = []  # tasks this writer claimed and has not finished
        self.crash: BaseException | None = None
        self.rng = random.Random(number)
        self.counter = 0

    def run(self) -> None:
        try:
            with psycopg.connect(**self.conninfo | {"application_name": f"app writer {self.number}"}) as conn:
                while not self.stop.is_set():
                    for kind in KINDS:
                        self.write(conn, kind)
                    time.sleep(0.005)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.crash = exc

    def write(self, conn: psycopg.Connection[Any], kind: str) -> None:
        self.counter += 1
        with conn.cursor() as cur:
            before = read_phase(cur)
            try:
                row, detail = getattr(self, kind)(cur)
                after = read_phase(cur)
                conn.commit()
            except psycopg.Error as exc:
                conn.rollback()
                diag = exc.diag
                after = read_phase(cur)
                conn.commit()
                self.writes.append(
                    Write(
                        kind,
                        before,
                        after,
                        False,
                        sqlstate=diag.sqlstate,
                        constraint=diag.constraint_name,
                        error=str(exc).strip().splitlines()[0],
                    )
                )
                return
        self.writes.append(
            Write(
                kind,
                before,
                after,
                row is not None,
                row=row,
                detail=detail,
                error=None if row is not None else "no row to act on",
            )
        )
        if kind == "insert_old_style" and row is not None:
            self.old_style.append(row)
        if kind == "claim" and row is not None:
            self.claimed.append(row)

    # -- the application's writes (the old application's SQL: it knows nothing of legacy_reason) --------------
    def insert_healthy(self, cur: psycopg.Cursor[Any]) -> tuple[str | None, dict[str, Any]]:
        """Three tasks: a claim and a claim-then-fail take one each every round."""
        found = cur.execute(
            "INSERT INTO tasks (task_type, params, status, user_id, run_type) "
            "SELECT 'app_write', '{}', 'Queued', u, 'cloud' FROM unnest(CAST(%s AS uuid[])) u RETURNING id::text",
            ([self.rng.choice(USERS) for _ in range(3)],),
        ).fetchall()
        return ",".join(r[0] for r in found), {}

    def claim(self, cur: psycopg.Cursor[Any]) -> tuple[str | None, dict[str, Any]]:
        """The worker's claim; the id goes to ``self.claimed`` once committed (the caller appends it)."""
        found = cur.execute(
            "SELECT id FROM tasks WHERE status = 'Queued' AND task_type = 'app_write' AND run_type = 'cloud' "
            "AND user_id IS NOT NULL ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED"
        ).fetchone()
        if found is None:
            return None, {}
        cur.execute(
            "UPDATE tasks SET status = 'In Progress', worker_id = %s, attempts = attempts + 1, updated_at = now() "
            "WHERE id = %s",
            (f"worker-{self.number}", found[0]),
        )
        return str(found[0]), {}

    def _finish(self, cur: psycopg.Cursor[Any], task: str | None, status: str) -> tuple[str | None, dict[str, Any]]:
        """The worker reports on the task it claimed (by id: it waits for a row lock, it skips nothing)."""
        if task is None:
            return None, {}
        found = cur.execute(
            "UPDATE tasks SET status = %s, updated_at = now(), "
            "error_message = CASE WHEN %s = 'Failed' THEN 'the app gave up' END "
            "WHERE id = %s AND status = 'In Progress' AND worker_id = %s RETURNING id::text",
            (status, status, task, f"worker-{self.number}"),
        ).fetchone()
        return (found[0] if found else None), {}

    def complete(self, cur: psycopg.Cursor[Any]) -> tuple[str | None, dict[str, Any]]:
        return self._finish(cur, self.claimed.pop(0) if self.claimed else None, "Complete")

    def fail(self, cur: psycopg.Cursor[Any]) -> tuple[str | None, dict[str, Any]]:
        """Claim a task and give up on it, in one transaction."""
        return self._finish(cur, self.claim(cur)[0], "Failed")

    def update_legacy(self, cur: psycopg.Cursor[Any]) -> tuple[str | None, dict[str, Any]]:
        """Touch a row without user_id/run_type: the newest old-style row of ours (the dangerous kind: not yet
        flagged), else a seeded legacy row. Every other touch changes its status, the others bump a counter in its
        params (so that the end can count the touches: a lost update would show)."""
        target = self.old_style[-1] if self.old_style and self.counter % 3 else self.rng.choice(self.legacy)
        returning = " RETURNING id::text, to_jsonb(tasks) ->> 'legacy_reason'"
        bump = (
            "UPDATE tasks SET params = params || jsonb_build_object('app_touch', "
            "coalesce((params ->> 'app_touch')::int, 0) + 1) WHERE id = %s"
        )
        found = None
        if not self.counter % 2:
            found = cur.execute(
                "UPDATE tasks SET status = 'Failed', error_message = 'app: abandoned', attempts = attempts + 1 "
                "WHERE id = %s AND user_id IS NULL AND status <> 'Failed'" + returning,
                (target,),
            ).fetchone()
        if found is not None:
            return found[0], {"flagged": found[1] is not None, "bumped": False}
        # (or it was Failed already, or the backfill derived its user meanwhile: its params then)
        found = cur.execute(bump + returning, (target,)).fetchone()
        if found is None:
            return None, {}
        return found[0], {"flagged": found[1] is not None, "bumped": True}

    def insert_old_style(self, cur: psycopg.Cursor[Any]) -> tuple[str | None, dict[str, Any]]:
        """No user_id, no run_type: half carry them in params (the backfill derives them), half nothing."""
        params = {"user_id": USERS[0], "run_type": "gpu"} if self.counter % 2 else {"segment": self.counter}
        found = cur.execute(
            "INSERT INTO tasks (task_type, params, status) VALUES ('app_old', %s::jsonb, 'Queued') RETURNING id::text",
            (json.dumps(params),),
        ).fetchone()
        return found[0], {"derivable": "user_id" in params}


class VersionGate(threading.Thread):
    """Holds alembic's version bump at the end of each revision until every kind of write was seen in it.

    An EXCLUSIVE lock on taskdb_alembic_version blocks the upgrade's UPDATE of it (the revision's work is done and
    committed by then) but no writer and no reader. Released and at once taken again every few ms once the
    current revision has what it needs: the re-take queues behind the upgrade's pending UPDATE, so it is in place
    again before the next revision can end.
    """

    def __init__(self, conninfo: dict[str, Any], writers: list[Writer], done: threading.Event) -> None:
        super().__init__(name="version-gate", daemon=True)
        self.conninfo, self.writers, self.done = conninfo, writers, done
        self.held: dict[str, float] = {}
        self.gave_up: list[str] = []
        self.crash: BaseException | None = None

    def satisfied(self, running: str) -> bool:
        seen = seen_by_window([w for writer in self.writers for w in list(writer.writes)])
        if running == "0003":  # 0003 done, 0004 not begun: old-style rows written now are 0004's catch-up work
            return {"insert_old_style", "update_legacy"} <= seen.get("0003 after backfill", set())
        if running not in WINDOWS:
            return True
        return set(KINDS) <= seen.get(running, set())

    def run(self) -> None:
        try:
            with psycopg.connect(**self.conninfo | {"application_name": "version gate"}) as conn:
                while not self.done.is_set():
                    conn.execute("LOCK TABLE taskdb_alembic_version IN EXCLUSIVE MODE")
                    running = NEXT[conn.execute("SELECT max(version_num) FROM taskdb_alembic_version").fetchone()[0]]
                    started = time.monotonic()
                    time.sleep(0.005)  # (holding the lock: no gap in which a short revision could slip through)
                    while not self.done.is_set() and not self.satisfied(running):
                        if time.monotonic() - started > GATE_PATIENCE_S:
                            self.gave_up.append(running)
                            break
                        time.sleep(0.01)
                    self.held[running] = self.held.get(running, 0.0) + time.monotonic() - started
                    # The upgrade's pending version UPDATE goes through; the LOCK above, at once, queues behind it.
                    conn.commit()
        except BaseException as exc:
            self.crash = exc


class ValidateGate(threading.Thread):
    """Holds 0004 while its CHECKs are NOT VALID until every kind of write went through in that window.

    Once the first CHECK exists NOT VALID it takes SHARE UPDATE EXCLUSIVE on tasks: the next ADD CONSTRAINT
    and the VALIDATEs wait (and retry, under their lock_timeout); writers' ROW EXCLUSIVE does not conflict.
    """

    def __init__(self, conninfo: dict[str, Any], writers: list[Writer], done: threading.Event) -> None:
        super().__init__(name="validate-gate", daemon=True)
        self.conninfo, self.writers, self.done = conninfo, writers, done
        self.held = 0.0
        self.gave_up = False
        self.crash: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(**self.conninfo | {"application_name": "validate gate"}, autocommit=True) as conn:
                with conn.cursor() as cur:
                    while not self.done.is_set() and "0004 NOT VALID" not in read_phase(cur).windows:
                        time.sleep(0.002)
                if self.done.is_set():
                    return
                with conn.transaction():
                    conn.execute("LOCK TABLE tasks IN SHARE UPDATE EXCLUSIVE MODE")
                    started = time.monotonic()
                    while not set(KINDS) <= seen_by_window(
                        [w for writer in self.writers for w in list(writer.writes)]
                    ).get("0004 NOT VALID", set()):
                        if self.done.is_set() or time.monotonic() - started > GATE_PATIENCE_S:
                            self.gave_up = True
                            break
                        time.sleep(0.01)
                    self.held = time.monotonic() - started
        except BaseException as exc:
            self.crash = exc


def seen_by_window(writes: list[Write]) -> dict[str, set[str]]:
    """Kinds that went through (or were refused by contract) per window."""
    seen: dict[str, set[str]] = defaultdict(set)
    for w in writes:
        if w.ok or w.refused_by_contract:
            for window in w.windows:
                seen[window].add(w.kind)
    return seen


@pytest.fixture
def busy(db: Db) -> Db:
    """The incident, plus enough rows (legacy without owner, healthy, done) for each backfill sweep to last."""
    db.load("half_migrated")
    db.execute(
        "INSERT INTO tasks (id, task_type, params, status, attempts, created_at, user_id, run_type) "
        "SELECT md5('bulk-' || n)::uuid, 'bulk', jsonb_build_object('n', n), "
        "(ARRAY['Complete', 'Failed', 'Complete', 'Queued'])[1 + n % 4], 1, now() - n * interval '1 minute', "
        "CASE WHEN n % 3 = 0 THEN md5('user-bob')::uuid END, CASE WHEN n % 3 = 0 THEN 'cloud' END "
        "FROM generate_series(1, :rows) n",
        rows=BULK_ROWS,
    )
    # alembic's own version table, empty (no revision yet), so that the gate can hold it from the start
    db.execute(
        "CREATE TABLE taskdb_alembic_version (version_num varchar(32) NOT NULL, "
        "CONSTRAINT taskdb_alembic_version_pkc PRIMARY KEY (version_num))"
    )
    return db


def test_application_writes_go_through_every_step_of_the_upgrade(busy: Db, taskdb_pg_server) -> None:
    db = busy
    from sqlalchemy.engine import make_url

    database = make_url(db.url).database
    conninfo = taskdb_pg_server.connect_kwargs(database)
    legacy = [
        r["id"] for r in db.rows("SELECT id::text AS id FROM tasks WHERE user_id IS NULL AND task_type <> 'bulk'")
    ]
    rows_before = db.scalar("SELECT count(*) FROM tasks")

    stop, upgrade_done = threading.Event(), threading.Event()
    writers = [Writer(n, conninfo, legacy, stop) for n in range(3)]
    gate = VersionGate(conninfo, writers, upgrade_done)
    validate_gate = ValidateGate(conninfo, writers, upgrade_done)
    gate.start()
    validate_gate.start()
    for writer in writers:
        writer.start()
    env = {k: v for k, v in os.environ.items() if k not in ("TASKDB_DATABASE_URL", "DATABASE_URL")} | {
        "DATABASE_URL": db.url,
        "TASKDB_BACKFILL_BATCH_SIZE": "100",
        "TASKDB_BACKFILL_DELAY_MS": "20",
        "TASKDB_LOCK_TIMEOUT_MS": "200",  # DDL that waits on a gate makes writers queue at most this long
    }
    try:
        upgrade = subprocess.run(
            [sys.executable, "-m", "taskdb.cli", "upgrade", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        upgrade_done.set()
        time.sleep(0.3)  # a few writes at head too
        stop.set()
        for thread in (*writers, gate, validate_gate):
            thread.join(timeout=60)

    writes = [w for writer in writers for w in writer.writes]
    kinds_per_window = {window: dict(Counter(w.kind for w in writes if window in w.windows)) for window in WINDOWS}
    print("writes per window:", json.dumps(kinds_per_window), "gate held (s):", gate.held)
    assert upgrade.returncode == 0, upgrade.stderr
    crashes = [t.crash for t in (*writers, gate, validate_gate) if t.crash is not None]
    assert not crashes, crashes
    writes = [w for writer in writers for w in writer.writes]

    # No write failed, except the old-style insert the finished guard constraint refuses by design.
    failed = [w for w in writes if not w.ok and not w.refused_by_contract]
    assert not failed, "\n".join(
        f"{w.kind} in {sorted(w.before.windows)} -> {w.sqlstate} {w.constraint}: {w.error}" for w in failed[:20]
    )
    # Old-style rows are accepted until 0004's write guard exists, refused from then on, never the other way round.
    for w in writes:
        if w.kind == "insert_old_style" and w.after == w.before:
            assert w.ok == (not w.before.refuses_unowned), w

    # Every window saw every kind of write.
    seen = seen_by_window(writes)
    table = {window: sorted(seen.get(window, ())) for window in WINDOWS}
    assert all(set(KINDS) <= set(kinds) for kinds in table.values()), (table, gate.gave_up)
    assert not gate.gave_up and not validate_gate.gave_up
    # The GitLab case itself: old-style rows written after 0003, not yet flagged, were updated during 0004
    # (before the fix, 0004's NOT VALID CHECKs refused exactly these updates until its catch-up flagged them).
    gitlab = [
        w
        for w in writes
        if w.kind == "update_legacy" and w.ok and "0004 catch-up" in w.windows and not w.detail["flagged"]
    ]
    assert gitlab, "no UPDATE of an unflagged legacy row happened during 0004"

    # Nothing lost: every row before, plus every row inserted, is there.
    inserted = [
        i for w in writes if w.ok and w.kind in ("insert_healthy", "insert_old_style") for i in w.row.split(",")
    ]  # type: ignore[union-attr]
    assert db.scalar("SELECT count(*) FROM tasks") == rows_before + len(inserted)
    assert db.scalar("SELECT count(*) FROM tasks WHERE id = ANY (CAST(:ids AS uuid[]))", ids=inserted) == len(inserted)

    # Each app write is still what the app wrote (no later step undid it).
    last: dict[str, Write] = {}
    for w in writes:
        if w.ok and w.kind in ("claim", "complete", "fail"):
            last[w.row] = w  # type: ignore[index]
    statuses = {
        r["id"]: r["status"]
        for r in db.rows(
            "SELECT id::text AS id, status FROM tasks WHERE id = ANY (CAST(:ids AS uuid[]))", ids=list(last)
        )
    }
    expected = {"claim": "In Progress", "complete": "Complete", "fail": "Failed"}
    assert {i: statuses[i] for i in last} == {i: expected[w.kind] for i, w in last.items()}
    bumps = Counter(w.row for w in writes if w.ok and w.kind == "update_legacy" and w.detail["bumped"])
    stored = {
        r["id"]: r["n"]
        for r in db.rows(
            "SELECT id::text AS id, (params ->> 'app_touch')::int AS n FROM tasks "
            "WHERE id = ANY (CAST(:ids AS uuid[]))",
            ids=list(bumps),
        )
    }
    assert stored == dict(bumps)  # every committed bump is there: no step wrote an older version back

    # Old-style rows written mid-upgrade end healthy (derivable from params) or flagged, never Queued unflagged.
    old = db.rows(
        "SELECT id::text AS id, user_id::text AS user_id, run_type, legacy_reason, status, params ? 'user_id' AS "
        "derivable FROM tasks WHERE task_type = 'app_old'"
    )
    assert old and len(old) == sum(1 for w in writes if w.ok and w.kind == "insert_old_style")
    for row in old:
        if row["derivable"]:
            assert (row["user_id"], row["run_type"], row["legacy_reason"]) == (USERS[0], "cloud", None), row
        else:
            assert row["legacy_reason"] and "missing_user_id" in row["legacy_reason"], row
            assert row["status"] != "Queued", row

    # The backfill did not chase the old application's new rows sweep after sweep (it did: 49 whole-table sweeps,
    # because every sweep found new rows to flag while two cycle rows kept "waiting"); 0004's catch-up takes them.
    sweeps = re.findall(r"backfill 0003_backfill: sweep (\d+) \((\w+)\) done", upgrade.stderr)
    assert 3 <= len(sweeps) <= 6 and sweeps[-1][1] in ("final", "waiting"), sweeps

    # And the upgrade finished clean: head, everything validated, no INVALID index.
    summary = json.loads(upgrade.stdout)
    assert summary["to_revision"] == HEAD
    assert summary["constraints_not_valid"] == [] and summary["invalid_indexes"] == []
    assert db.scalar("SELECT count(*) FROM pg_constraint WHERE conrelid = 'tasks'::regclass AND NOT convalidated") == 0
    kinds_per_window = {window: dict(Counter(w.kind for w in writes if window in w.windows)) for window in WINDOWS}
    print("writes per window:", json.dumps(kinds_per_window), "gate held (s):", gate.held)
