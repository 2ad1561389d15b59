"""Crash and resume (issue 6, item 1): SIGKILL the upgrade process at many points, rerun it, and demand the
state of an uninterrupted run on identical data.

How the process dies: a failpoint (``taskdb.failpoints``; ``TASKDB_FAILPOINT=name[:N]`` makes the N-th pass
through ``failpoint(name)`` SIGKILL the process: no ROLLBACK, no goodbye to the server), or, for a kill in
the middle of a ``CREATE INDEX CONCURRENTLY``, another session holding an old snapshot so that the build
visibly waits in pg_stat_activity while the client is killed. With ``client_connection_check_interval`` set
the server then aborts the build and leaves an INVALID index; without it the server finishes the build on
its own. The rerun has to cope with both.

All runs happen on one server (pg_cron preloaded, ``cron.database_name`` = the upgraded database, so the
upgrade creates pg_cron and both jobs right there, as in production's same-database setup), each in that
database made afresh from a template, the cluster-wide taskdb roles dropped in between so that every upgrade
creates them. The data is identical every time: the incident's half-migrated rows plus 700 generated legacy
rows (owners from projects, from params, from orchestrator chains three deep with children sorted before
their parents, cycles, orphans, unknown users, misspelt statuses, stale Queued work with Queued dependants),
five columns the application never declared NOT NULL, and ``TASKDB_BACKFILL_BATCH_SIZE=50``, so the
backfill runs six sweeps of 16 batches. Every created_at is fixed relative to ``T0``. Cases that kill a
later step start from a template already upgraded (uninterrupted) to the revision before it; failpoint
counts (``name:N``) count from there. The reference is an uninterrupted ``alembic upgrade head`` of the same
template data (and, for the catch-up case, the same rows written after 0003).

After every rerun (exit 0), compared with the reference:
- the schema: ``pg_dump --schema-only`` (the server's own pg_dump) and the catalog (helpers_catalog);
- an md5 per row of tasks, users and projects; task_hygiene_log as a multiset (ids and acted_at left out):
  a duplicate log row is a difference; taskdb_backfill_progress (without its timestamps), taskdb_alembic_version,
  taskdb_owned_objects in creation order, the settings row, how many rows the cleanup cancelled, the
  taskdb roles, pg_cron's cron.job rows and taskdb_cron_jobs (without jobids);
- no INVALID index and no NOT VALID constraint anywhere.
The only values normalised are clock readings taken *during* the upgrade (anything later than ``T0``: the
cleanup's updated_at and the time in its error_message, in the rows and in the log), which no two runs can
share; cron.job's jobid and nodeport (a sequence and the server's port) are not compared.

The backfill cases also prove that the rerun resumed from the checkpoint: at a crash in the first sweep the
log holds exactly ``rows_done`` rows (a batch and its checkpoint commit together; rows_done counts the rows
of the current sweep); a second kill right after the first batch
of the rerun finds the checkpoint moved by exactly one window, the one after the crash's ``last_id`` (a
restart would have begun at the first id and reset ``rows_done``), with every log row that batch wrote inside
that window; and the final rerun says "resuming sweep S (mode) after id L" and scans exactly the ids after L
in sweep S, where the reference scanned them all.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from taskdb import api, seeds
from taskdb.failpoints import ENV as FAILPOINT_ENV
from taskdb.testing import start_postgres
from taskdb.testing.base import PostgresServer
from tests.helpers import Db, with_driver
from tests.helpers_catalog import catalog

ROOT = Path(__file__).resolve().parents[2]
DATABASE = "taskdb_crash"  # also cron.database_name: pg_cron lives in the upgraded database itself
BATCH_SIZE = 50
GENERATED_ROWS = 700
LATE_ROWS = 200
# Every created_at is fixed relative to T0 (no row is newer), every clock reading of an upgrade is later.
# Ages are whole days + 3 to 4 hours: no row is within two hours of queued_ttl (7 days) in either run.
T0 = datetime.now(UTC).replace(microsecond=0)

GENERATED_SQL = """
INSERT INTO users (id, email, credits)
SELECT md5('crash-user-' || k)::uuid, 'crash-' || k || '@example.com', (k % 4) * 10
FROM generate_series(1, 12) AS k;

INSERT INTO projects (id, user_id, name)
SELECT md5('crash-project-' || k)::uuid, md5('crash-user-' || k)::uuid, 'crash project ' || k
FROM generate_series(1, 12) AS k;

-- kind = n % 10: 0 owner from the project, run type from params; 1 owner from the project, run type spelt
-- ' local '; 2 both from params; 3 nothing to derive (flagged); 4 an unknown user (flagged); 5 child of a
-- kind 0 task; 6 child of 5; 7 child of 6 (three deep); 8 an orchestrator that does not exist, or (n % 100
-- = 48) a cycle with its neighbour; 9 healthy, depending on a kind 5 task (the cancel trigger's work).
INSERT INTO tasks (id, task_type, params, status, attempts, created_at, updated_at, project_id, user_id,
                   run_type, dependant_on)
SELECT md5('crash-' || n)::uuid,
       'crash_kind_' || n % 10,
       CASE n % 10
           WHEN 0 THEN jsonb_build_object('run_type', 'GPU', 'n', n)
           WHEN 2 THEN jsonb_build_object('user_id', md5('crash-user-' || (n % 12 + 1))::uuid, 'run_type', ' Cloud')
           WHEN 5 THEN jsonb_build_object('orchestrator_task_id_ref', md5('crash-' || (n - 5))::uuid)
           WHEN 6 THEN jsonb_build_object('orchestrator_task_id_ref', md5('crash-' || (n - 1))::uuid)
           WHEN 7 THEN jsonb_build_object('orchestrator_task_id_ref', md5('crash-' || (n - 1))::uuid)
           WHEN 8 THEN CASE WHEN n % 100 = 48
                            THEN jsonb_build_object('orchestrator_task_id_ref', md5('crash-' || (n + 1))::uuid)
                            ELSE jsonb_build_object('orchestrator_task_id_ref', md5('crash-missing-' || n)::uuid) END
           WHEN 9 THEN CASE WHEN n % 100 = 49
                            THEN jsonb_build_object('orchestrator_task_id_ref', md5('crash-' || (n - 1))::uuid)
                            ELSE '{}'::jsonb END
           ELSE '{}'::jsonb
       END,
       (ARRAY['Queued', 'Complete', 'queued', 'Failed', 'In Progress', 'Queued', 'complete '])[(n / 10) % 7 + 1],
       (n / 10) % 3,
       c.created,
       CASE WHEN n % 10 = 9 THEN c.created + interval '1 minute' END,
       CASE WHEN n % 10 IN (0, 1) THEN md5('crash-project-' || (n % 12 + 1))::uuid END,
       CASE WHEN n % 10 = 4 THEN md5('crash-ghost-' || n)::uuid
            WHEN n % 10 = 9 AND n % 100 <> 49 THEN md5('crash-user-' || (n % 12 + 1))::uuid END,
       CASE WHEN n % 10 = 1 THEN ' local '
            WHEN n % 10 = 4 OR (n % 10 = 9 AND n % 100 <> 49) THEN 'cloud' END,
       CASE WHEN n % 10 = 9 AND n % 100 <> 49 THEN md5('crash-' || (n - 4))::uuid END
FROM generate_series(1, :rows) AS n
CROSS JOIN LATERAL (
    SELECT CAST(:t0 AS timestamptz) - ((n * 7) % 40) * interval '1 day' - interval '3 hours'
           - (n % 6) * interval '10 minutes' AS created
) AS c
"""

# Legacy rows the application writes after 0003 and before 0004's NOT VALID constraints: 0004's catch-up.
LATE_SQL = """
INSERT INTO tasks (id, task_type, params, status, attempts, created_at, project_id)
SELECT md5('late-' || n)::uuid, 'late_kind_' || n % 3,
       CASE n % 3 WHEN 0 THEN jsonb_build_object('run_type', 'local')
                  WHEN 1 THEN jsonb_build_object('user_id', md5('crash-user-' || (n % 12 + 1))::uuid, 'run_type', 'gpu')
                  ELSE '{}'::jsonb END,
       CASE WHEN n % 2 = 0 THEN 'Queued' ELSE 'Complete' END, 0,
       CAST(:t0 AS timestamptz) - n * interval '1 minute',
       CASE WHEN n % 3 = 0 THEN md5('crash-project-' || (n % 12 + 1))::uuid END
FROM generate_series(1, :rows) AS n
"""

BATCH_LINE = re.compile(r"backfill (\S+): sweep (\d+) \((\w+)\) batch of (\d+) ids")
RESUME_LINE = re.compile(r"backfill (\S+): resuming sweep (\d+) \((\w+)\) after id ([0-9a-f-]+)")
# failpoint("x.y") in the code, or a step's before="x.y" (taskdb.steps: fired as the step starts)
FAILPOINT_CALL = re.compile(r"""(?:failpoint\(\s*|\bbefore=)["']([\w.]+)["']""")
# A timestamp as PostgreSQL writes it in text (2026-11-28 12:00:00.123+00) or in JSON (...T12:00:00.123+00:00).
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}(?::?\d{2})?)?")
ROLES = ("taskdb_autoscaler", "taskdb_worker", "taskdb_monitor")

# Where a case starts: the data as loaded, or the data upgraded (uninterrupted) to a revision, as templates.
LOADED, AT_0003, AT_0003_LATE, AT_0004 = "loaded", "0003_backfill", "0003_backfill+late", "0004_constraints"


# -- the cases ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweeps:
    """The backfill's batches per sweep, read from the reference run's log: [(job, sweep, mode, batches)]."""

    runs: list[tuple[str, int, str, int]]

    def batches_before(self, job: str, sweep: int) -> int:
        return sum(n for j, s, _, n in self.runs if j == job and s < sweep)

    def batches(self, job: str, sweep: int) -> int:
        return next(n for j, s, _, n in self.runs if (j, s) == (job, sweep))

    def final_sweep(self, job: str) -> int:
        return next(s for j, s, mode, _ in self.runs if j == job and mode == "final")


@dataclass(frozen=True)
class MidStatement:
    """Kill the client while its CREATE INDEX CONCURRENTLY of ``index`` waits for an old snapshot."""

    index: str
    check_interval: bool  # client_connection_check_interval: the server notices and aborts -> INVALID index


@dataclass(frozen=True)
class Case:
    id: str
    proves: str
    # "alembic" (alembic upgrade head) or "taskdb" (taskdb upgrade): the crashed run and the rerun; "offline": a
    # taskdb upgrade crashes in 0003, `taskdb sql FROM:0003_backfill | psql` finishes it, taskdb upgrade the rest
    runner: str
    kill: str | Callable[[Sweeps], str] | None = None  # TASKDB_FAILPOINT, or made from the reference's sweeps
    start: str = LOADED  # the data as loaded, or already upgraded to a revision (N-th hits count from there)
    mid: MidStatement | None = None
    resume_job: str | None = None  # the backfill job whose resume from the checkpoint is proven
    second_kill: bool = False  # also kill the rerun after its first batch: the checkpoint moved by one window

    @property
    def flow(self) -> str:
        """Which uninterrupted run this case must end like: with or without rows written after 0003."""
        return "late" if self.start == AT_0003_LATE else "direct"

    def failpoint(self, sweeps: Sweeps) -> str | None:
        return self.kill(sweeps) if callable(self.kill) else self.kill


J3, J4 = "0003_backfill", "0004_constraints"

CASES = [
    # the backfill (0003), from the data as loaded: alembic/taskdb upgrade head from nothing
    Case(
        "0003-first-batch",
        "a kill after the first batch resumes at the second window",
        "alembic",
        "backfill.after_batch:1",
        resume_job=J3,
    ),
    Case(
        "0003-mid-sweep-1",
        "a kill mid-sweep resumes mid-sweep; nothing is redone",
        "taskdb",
        lambda s: f"backfill.after_batch:{s.batches(J3, 1) // 2}",
        resume_job=J3,
        second_kill=True,
    ),
    Case(
        "0003-end-of-sweep-1",
        "a kill between sweeps goes on with the sweep the uninterrupted run did next",
        "alembic",
        "backfill.after_sweep:1",
        resume_job=J3,
    ),
    Case(
        "0003-end-of-sweep-2-offline-rerun",
        "the offline script (taskdb sql | psql) resumes an online run killed between sweeps, as it would have gone on",
        "offline",
        "backfill.after_sweep:2",
        resume_job=J3,
    ),
    Case(
        "0003-mid-sweep-2",
        "a kill in a later normal sweep resumes in that sweep",
        "taskdb",
        lambda s: f"backfill.after_batch:{s.batches_before(J3, 2) + s.batches(J3, 2) // 2}",
        resume_job=J3,
    ),
    Case(
        "0003-mid-final-sweep",
        "a kill in the final sweep (flagging cycles) resumes in it",
        "alembic",
        lambda s: f"backfill.after_batch:{s.batches_before(J3, s.final_sweep(J3)) + 3}",
        resume_job=J3,
    ),
    Case(
        "0003-before-finish",
        "a kill after the last sweep, before finished_at: the rerun finishes, no sweep",
        "taskdb",
        "backfill.before_finish:1",
        resume_job=J3,
    ),
    Case(
        "0003-before-stamp",
        "0003 done, taskdb_alembic_version not moved: the rerun repeats 0003 and changes nothing",
        "alembic",
        "migration.before_stamp:3",
    ),
    # the constraints (0004), from the data upgraded to 0003
    Case(
        "0004-after-add-not-valid",
        "three constraints NOT VALID: the rerun adds the rest, validates all",
        "taskdb",
        "constraints.after_add_not_valid:3",
        start=AT_0003,
    ),
    Case(
        "0004-mid-catch-up",
        "a kill mid catch-up (rows written after 0003) resumes the catch-up",
        "alembic",
        lambda s: f"backfill.after_batch:{s.batches(J4, 1) // 2}",
        start=AT_0003_LATE,
        resume_job=J4,
        second_kill=True,
    ),
    Case(
        "0004-between-validates",
        "two constraints validated, four NOT VALID: the rerun validates them",
        "taskdb",
        "constraints.after_validate:2",
        start=AT_0003,
    ),
    Case(
        "0004-before-set-not-null",
        "a validated temporary NOT NULL check is used and dropped by the rerun",
        "alembic",
        "constraints.before_set_not_null:2",
        start=AT_0003,
    ),
    Case(
        "0004-in-set-not-null",
        "a kill inside SET NOT NULL's transaction rolls it back; the rerun redoes it",
        "taskdb",
        "constraints.set_not_null_uncommitted:3",
        start=AT_0003,
    ),
    Case(
        "0004-index-before-build",
        "the index recorded as taskdb's but never built is built by the rerun",
        "alembic",
        "index.before_create_concurrently:1",
        start=AT_0003,
    ),
    Case(
        "0004-index-mid-build-invalid",
        "a build the server aborts leaves an INVALID index: rebuilt by the rerun",
        "taskdb",
        start=AT_0003,
        mid=MidStatement("tasks_user_id_idx", check_interval=True),
    ),
    Case(
        "0004-index-after-build",
        "a built index without its comment gets it from the rerun",
        "alembic",
        "index.after_create_concurrently:1",
        start=AT_0003,
    ),
    # hygiene (0005) and pg_cron (0006), from the data upgraded to 0004
    Case(
        "0005-objects-before-trigger",
        "hygiene objects committed, the trigger (its own transaction) not yet: the rerun creates it once",
        "alembic",
        "hygiene.before_trigger:1",
        start=AT_0004,
    ),
    Case(
        "0005-objects-before-indexes",
        "hygiene objects committed, no index yet: the rerun builds them",
        "taskdb",
        "index.before_create_concurrently:1",
        start=AT_0004,
    ),
    Case(
        "0005-index-mid-build-server-finishes",
        "a build the server finishes after the client died is kept",
        "alembic",
        start=AT_0004,
        mid=MidStatement("tasks_queued_run_type_created_at_idx", check_interval=False),
    ),
    Case(
        "0005-between-indexes",
        "three of five partial indexes built: the rerun builds the rest",
        "taskdb",
        "index.after_create_concurrently:3",
        start=AT_0004,
    ),
    Case(
        "0005-after-cleanup-batch",
        "a committed cleanup batch is not redone, nothing is logged twice",
        "alembic",
        "hygiene.after_cleanup_batch:1",
        start=AT_0004,
    ),
    Case(
        "0005-before-stamp",
        "0005 done, not stamped: the rerun repeats it idly (no new cancel, no dup log)",
        "taskdb",
        "migration.before_stamp:1",
        start=AT_0004,
    ),
    Case(
        "0006-after-schedule",
        "jobs in cron.job but not yet in taskdb_cron_jobs: the rerun records them as ours",
        "alembic",
        "cron.after_schedule:1",
    ),
    Case(
        "0006-before-stamp",
        "0006 done, not stamped: the rerun changes nothing in pg_cron",
        "taskdb",
        "migration.before_stamp:2",
        start=AT_0004,
    ),
]


# -- data, runs and state -----------------------------------------------------------------------------------


@cache
def pg_cron_available(server: PostgresServer) -> bool:
    """pg_cron preloaded and its extension files installed: the cron step really installs the jobs."""
    return server.cron_preloaded and bool(
        server.fetch_value("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_cron'")
    )


def client_program(server: PostgresServer, name: str) -> str | None:
    """pg_dump / psql of the server's own major version, when this machine has it."""
    from taskdb.testing.local import installed_majors

    bindir = installed_majors().get(server.major)
    return str(bindir / name) if bindir is not None and (bindir / name).exists() else None


def execute(server: PostgresServer, dbname: str, statements: list[str], params: dict[str, Any]) -> None:
    engine = sa.create_engine(with_driver(server.url(dbname), "psycopg"), poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement), params)
    finally:
        engine.dispose()


def load(server: PostgresServer, dbname: str) -> None:
    """The incident's rows (created_at re-anchored on T0) plus the generated rows, in one transaction."""
    engine = sa.create_engine(with_driver(server.url(dbname), "psycopg"), poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            seeds.load_schema(conn, "half_migrated")
            # an application that never declared these NOT NULL (no row is NULL): 0004 sets them
            conn.execute(
                sa.text(
                    "ALTER TABLE tasks "
                    + ", ".join(
                        f"ALTER COLUMN {column} DROP NOT NULL"
                        for column in ("task_type", "params", "status", "attempts", "created_at")
                    )
                )
            )
            seeds.load_incident(conn)
            conn.execute(
                sa.text("UPDATE tasks SET created_at = CAST(:t0 AS timestamptz) + (created_at - now())"), {"t0": T0}
            )
            for statement in GENERATED_SQL.split(";\n"):
                conn.execute(sa.text(statement), {"t0": T0, "rows": GENERATED_ROWS})
    finally:
        engine.dispose()


def upgrade_command(runner: str, revision: str) -> list[str]:
    if runner == "alembic":
        return [sys.executable, "-m", "alembic", "-c", str(api.alembic_ini()), "upgrade", revision]
    return [sys.executable, "-m", "taskdb.cli", "upgrade", revision]


def settings_env(server: PostgresServer) -> dict[str, str]:
    return {
        "TASKDB_BACKFILL_BATCH_SIZE": str(BATCH_SIZE),
        "TASKDB_CRON": "require" if pg_cron_available(server) else "auto",
        "TASKDB_UPGRADE_LOCK_WAIT_S": "120",  # a killed client's backend may hold the upgrade lock a moment longer
    }


def upgrade_env(server: PostgresServer, failpoint: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (FAILPOINT_ENV, "PGOPTIONS")}
    env.update(settings_env(server), TASKDB_DATABASE_URL=server.url(DATABASE), **extra)  # not on the command line
    if failpoint:
        env[FAILPOINT_ENV] = failpoint
    return env


def run_upgrade(
    server: PostgresServer, runner: str, revision: str = "head", failpoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    if runner == "offline":  # the DBA finishes the backfill with the offline script, `taskdb upgrade` the rest
        assert failpoint is None, "the offline script is only a rerun"
        offline = run_offline_script(server, J3)
        if offline.returncode != 0:
            return offline
        online = run_upgrade(server, "taskdb", revision)
        online.stderr = offline.stderr + online.stderr
        return online
    return subprocess.run(
        upgrade_command(runner, revision),
        env=upgrade_env(server, failpoint),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_offline_script(server: PostgresServer, revision: str) -> subprocess.CompletedProcess[str]:
    """The DBA's rerun: ``taskdb sql <current revision>:<revision>``, applied with psql (NOTICEs on stderr)."""
    current = server.fetch_value("SELECT max(version_num) FROM taskdb_alembic_version", DATABASE)
    env = upgrade_env(server)
    script = subprocess.run(
        [sys.executable, "-m", "taskdb.cli", "sql", f"{current or 'base'}:{revision}"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    psql = client_program(server, "psql")
    if psql is None:
        pytest.skip(f"no psql {server.major} on this machine")
    return subprocess.run(
        [
            psql,
            "-v",
            "ON_ERROR_STOP=1",
            "-X",
            "-q",
            "-h",
            server.host,
            "-p",
            str(server.port),
            "-U",
            server.user,
            "-d",
            DATABASE,
        ],
        input=script,
        env={**env, "PGPASSWORD": server.password},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def succeeded(done: subprocess.CompletedProcess[str], what: str) -> str:
    assert done.returncode == 0, f"{what} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done.stderr


def killed(done: subprocess.CompletedProcess[str] | subprocess.Popen[str], what: str) -> None:
    assert done.returncode == -signal.SIGKILL, (
        f"{what} was not killed (exit {done.returncode}): the failpoint never fired?\n"
        f"{(done.stderr if isinstance(done.stderr, str) else '')[-3000:]}"
    )


def sweeps_of(log: str) -> Sweeps:
    counts: dict[tuple[str, int, str], int] = {}
    for job, sweep, mode, _ in BATCH_LINE.findall(log):
        counts[(job, int(sweep), mode)] = counts.get((job, int(sweep), mode), 0) + 1
    return Sweeps([(j, s, m, n) for (j, s, m), n in counts.items()])


def ids_scanned(log: str, job: str, sweep: int) -> int:
    return sum(int(n) for j, s, _, n in BATCH_LINE.findall(log) if (j, int(s)) == (job, sweep))


def unclock(value: Any) -> Any:
    """``value`` with every clock reading taken during the upgrade (a timestamp later than T0) masked."""
    if isinstance(value, dict):
        return {k: unclock(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unclock(v) for v in value]
    if isinstance(value, str):
        return TIMESTAMP.sub(lambda m: "<upgrade clock>" if _parse(m.group()) > T0 else m.group(), value)
    return value


def _parse(text: str) -> datetime:
    text = text.replace(" ", "T")
    if re.search(r"[+-]\d{2}$", text):
        text += ":00"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def pg_dump(server: PostgresServer) -> str:
    exe = client_program(server, "pg_dump")
    if exe is None:  # a pg_dump of another major cannot dump this server: the catalog comparison still runs
        return f"(no pg_dump {server.major} on this machine)"
    done = subprocess.run(
        [exe, "--schema-only", "-h", server.host, "-p", str(server.port), "-U", server.user, DATABASE],
        env={**os.environ, "PGPASSWORD": server.password},
        capture_output=True,
        text=True,
        check=True,
    )
    # \restrict / \unrestrict carry a random key per dump (pg_dump 15.14+): the only lines left out
    return "\n".join(line for line in done.stdout.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))


def state(server: PostgresServer) -> dict[str, Any]:
    """Everything compared with the reference (see the module docstring)."""
    with server.connect(DATABASE) as conn:

        def q(sql: str) -> list[tuple[Any, ...]]:
            return conn.execute(sql).fetchall()  # type: ignore[arg-type]  # literal SQL

        tasks = {
            task_id: json.dumps(unclock(json.loads(row)), sort_keys=True)
            for task_id, row in q("SELECT id::text, to_jsonb(t)::text FROM tasks t")
        }
        has_cron = q("SELECT to_regclass('cron.job') IS NOT NULL")[0][0]
        snapshot = {
            "tasks": {k: md5(v) for k, v in tasks.items()},
            "users": dict(q("SELECT id::text, md5(t::text) FROM users t")),
            "projects": dict(q("SELECT id::text, md5(t::text) FROM projects t")),
            "log": Counter(
                tuple(unclock(v) for v in row)
                for row in q(
                    "SELECT task_id::text, action, reason, previous::text, applied::text, actor, db_role "
                    "FROM task_hygiene_log"
                )
            ),
            "progress": q(
                "SELECT job, sweep, mode, last_id::text, rows_done, finished_at IS NOT NULL "
                "FROM taskdb_backfill_progress ORDER BY job"
            ),
            "taskdb_alembic_version": q("SELECT version_num FROM taskdb_alembic_version"),
            "owned": q("SELECT kind, name, revision FROM taskdb_owned_objects ORDER BY seq"),
            "settings": q("SELECT to_jsonb(s)::text FROM task_hygiene_settings s"),
            "cleanup": q(
                "SELECT coalesce(sum(cancelled), 0), bool_and(finished_at IS NOT NULL) FROM task_hygiene_runs"
            ),
            "roles": q("SELECT rolname FROM pg_roles WHERE rolname LIKE 'taskdb%' ORDER BY 1"),
            "cron_job": q(
                "SELECT jobname::text, schedule, command, database, username, active, nodename "
                "FROM cron.job ORDER BY jobname"
            )
            if has_cron
            else None,
            "taskdb_cron_jobs": q(
                "SELECT job, jobname, cron_database, run_database, schedule, command FROM taskdb_cron_jobs ORDER BY job"
            ),
            "cron_record_matches": q(
                "SELECT r.job, r.jobid = j.jobid FROM taskdb_cron_jobs r "
                "LEFT JOIN cron.job j ON j.jobname::text = r.jobname ORDER BY r.job"
            )
            if has_cron
            else None,
            "invalid_indexes": q("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid"),
            "not_valid_constraints": q(
                "SELECT conrelid::regclass::text, conname FROM pg_constraint WHERE NOT convalidated"
            ),
        }
    engine = sa.create_engine(with_driver(server.url(DATABASE), "psycopg"), poolclass=sa.NullPool)
    try:
        snapshot["catalog"] = catalog(Db(server.url(DATABASE), engine))
    finally:
        engine.dispose()
    snapshot["schema"] = pg_dump(server)
    snapshot["_task_rows"] = tasks  # for the failure message only
    return snapshot


def assert_same_state(got: dict[str, Any], reference: dict[str, Any]) -> None:
    assert got["invalid_indexes"] == [], "an INVALID index is left"
    assert got["not_valid_constraints"] == [], "a NOT VALID constraint is left"
    if got["cron_record_matches"] is not None:
        assert all(match for _, match in got["cron_record_matches"]), got["cron_record_matches"]
    assert got["schema"] == reference["schema"], "schema dump differs:\n" + "\n".join(
        difflib.unified_diff(
            reference["schema"].splitlines(), got["schema"].splitlines(), "reference", "rerun", lineterm="", n=2
        )
    )
    if got["tasks"] != reference["tasks"]:
        differing = sorted(
            k
            for k in reference["tasks"].keys() | got["tasks"].keys()
            if reference["tasks"].get(k) != got["tasks"].get(k)
        )
        detail = "\n".join(
            f"{k}:\n  reference {reference['_task_rows'].get(k)}\n  rerun     {got['_task_rows'].get(k)}"
            for k in differing[:4]
        )
        pytest.fail(f"{len(differing)} tasks rows differ from the uninterrupted run, e.g.\n{detail}")
    if got["log"] != reference["log"]:
        extra, missing = got["log"] - reference["log"], reference["log"] - got["log"]
        pytest.fail(
            f"task_hygiene_log differs: {sum(extra.values())} rows extra (duplicates?), e.g. "
            f"{list(extra)[:2]}; {sum(missing.values())} missing, e.g. {list(missing)[:2]}"
        )
    for key in reference:
        if key not in ("schema", "_task_rows"):
            assert got[key] == reference[key], f"{key} differs from the uninterrupted run"


# -- the lab: one server, template databases, the uninterrupted runs ----------------------------------------


@dataclass
class Reference:
    state: dict[str, Any]
    log: str
    sweeps: Sweeps
    total_ids: int


@dataclass
class Lab:
    """One server for the module; every run happens in the database DATABASE (also cron.database_name, so the
    upgrade creates pg_cron and schedules both jobs right there), made afresh from a template for each run."""

    server: PostgresServer
    templates: dict[str, str] = field(default_factory=dict)
    references: dict[str, Reference] = field(default_factory=dict)

    def template(self, start: str) -> str:
        """A template database of the data at ``start`` (the upgrades to it are uninterrupted, in-process)."""
        if start not in self.templates:
            name = "crash_template_" + re.sub(r"\W", "_", start)
            if start == LOADED:
                self.server.create_database(name)
                load(self.server, name)
            elif start == AT_0003_LATE:
                self.server.create_database(name, template=self.template(AT_0003))
                execute(self.server, name, [LATE_SQL], {"t0": T0, "rows": LATE_ROWS})
            else:
                self.server.create_database(name, template=self.template(LOADED))
                with patched_env(settings_env(self.server)):
                    api.upgrade(self.server.url(name), start)
            self.templates[start] = name
        return self.templates[start]

    def fresh(self, start: str) -> None:
        self.clear()
        self.server.create_database(DATABASE, template=self.template(start))

    def clear(self) -> None:
        """Drop DATABASE and the cluster-wide roles its upgrade created (so the next upgrade creates them too)."""
        self.server.drop_database(DATABASE)
        with self.server.connect() as conn:
            conn.execute("DROP ROLE IF EXISTS " + ", ".join(ROLES))  # type: ignore[arg-type]  # our constants

    def reference(self, flow: str) -> Reference:
        if flow not in self.references:
            self.fresh(AT_0003_LATE if flow == "late" else LOADED)
            log = succeeded(run_upgrade(self.server, "alembic"), f"the uninterrupted upgrade ({flow})")
            total = self.server.fetch_value("SELECT count(*) FROM tasks", DATABASE)
            self.references[flow] = Reference(state(self.server), log, sweeps_of(log), int(total))
        return self.references[flow]


@contextmanager
def patched_env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with start_postgres(settings={"cron.database_name": DATABASE}) as server:
        made = Lab(server)
        yield made
        made.clear()


# -- the crash, the proofs of resuming ----------------------------------------------------------------------


def checkpoint(server: PostgresServer, job: str) -> dict[str, Any]:
    with server.connect(DATABASE) as conn:
        row = conn.execute(
            "SELECT sweep, mode, last_id::text, rows_done, finished_at IS NOT NULL, "
            "(SELECT count(*) FROM task_hygiene_log WHERE actor = 'taskdb revision ' || %s::text) "
            "FROM taskdb_backfill_progress WHERE job = %s",
            (job, job),
        ).fetchone()
    assert row is not None, f"no checkpoint for {job}"
    return dict(zip(("sweep", "mode", "last_id", "rows_done", "finished", "logged"), row, strict=True))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def kill_mid_statement(server: PostgresServer, case: Case) -> None:
    """Start the upgrade while a session holds an old snapshot, wait until CREATE INDEX CONCURRENTLY of
    ``case.mid.index`` waits for it, SIGKILL the client, then let the server do what it does."""
    assert case.mid is not None
    index = case.mid.index
    extra = {"PGOPTIONS": "-c client_connection_check_interval=200"} if case.mid.check_interval else {}
    with server.connect(DATABASE) as blocker, server.connect(DATABASE) as watcher:
        blocker.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        blocker.execute("SELECT 1")  # the snapshot a CONCURRENTLY build waits out before it is valid

        def is_valid() -> Any:
            row = watcher.execute(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (index,)
            ).fetchone()
            return None if row is None else row[0]

        proc = subprocess.Popen(
            upgrade_command(case.runner, "head"),
            env=upgrade_env(server, None, **extra),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 300
            pid = None
            while pid is None:
                assert proc.poll() is None, f"the upgrade ended before the build waited:\n{proc.communicate()[1]}"
                assert time.monotonic() < deadline, "the index build never waited"
                row = watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND query ILIKE %s AND wait_event_type = 'Lock'",
                    (f"CREATE INDEX CONCURRENTLY%{index}%",),
                ).fetchone()
                pid = row[0] if row else None
                time.sleep(0.05)
            assert is_valid() is False  # mid-statement: in the catalog, not valid yet
        finally:
            proc.kill()
            proc.communicate()
        killed(proc, "the upgrade")

        def backend_gone() -> bool:
            return watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() == (0,)

        if case.mid.check_interval:  # the server notices the client is gone and aborts the build
            wait_for(backend_gone, "the server to notice the client is gone")
            blocker.rollback()
            assert is_valid() is False, "the aborted build should have left an INVALID index"
        else:  # the server knows nothing until the statement ends: it finishes the build on its own
            time.sleep(0.5)
            assert not backend_gone()
            blocker.rollback()
            wait_for(backend_gone, "the server to finish the build")
            assert is_valid() is True, "the server should have finished the build"


def window_after(server: PostgresServer, last_id: str) -> list[str]:
    with server.connect(DATABASE) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT id::text FROM tasks WHERE id > %s::uuid ORDER BY id LIMIT %s", (last_id, BATCH_SIZE)
            ).fetchall()
        ]


def ids_after(server: PostgresServer, last_id: str) -> int:
    return int(server.fetch_value(f"SELECT count(*) FROM tasks WHERE id > '{last_id}'::uuid", DATABASE))


def prove_first_batch_follows_checkpoint(server: PostgresServer, case: Case, job: str, before: dict[str, Any]) -> None:
    """Kill the rerun right after its first batch: the checkpoint moved by exactly the window after ``before``."""
    window = window_after(server, before["last_id"])
    high_water = server.fetch_value("SELECT coalesce(max(id), 0) FROM task_hygiene_log", DATABASE)
    killed(run_upgrade(server, case.runner, failpoint="backfill.after_batch:1"), "the rerun (second kill)")
    after = checkpoint(server, job)
    assert (after["sweep"], after["mode"]) == (before["sweep"], before["mode"]), (before, after)
    assert after["last_id"] == window[-1], (
        f"the first batch of the rerun ended at {after['last_id']}, not at the end of the window after the "
        f"checkpoint ({window[-1]}): it did not resume from the checkpoint"
    )
    assert after["rows_done"] - before["rows_done"] == after["logged"] - before["logged"]
    with server.connect(DATABASE) as conn:
        written = {
            r[0]
            for r in conn.execute("SELECT task_id::text FROM task_hygiene_log WHERE id > %s", (high_water,)).fetchall()
        }
    assert written <= set(window), "the resumed batch changed rows outside the window after the checkpoint"


# -- the tests ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_killed_upgrade_reruns_to_the_uninterrupted_state(case: Case, lab: Lab) -> None:
    if case.id.startswith("0006") and not pg_cron_available(lab.server):
        pytest.skip("pg_cron is not installed for this server: the cron step installs nothing")
    reference = lab.reference(case.flow)
    lab.fresh(case.start)
    server = lab.server

    # 1. the kill
    if case.mid is not None:
        kill_mid_statement(server, case)
    else:
        failpoint = case.failpoint(reference.sweeps)
        assert failpoint is not None
        crashing = "taskdb" if case.runner == "offline" else case.runner  # the offline script only reruns
        killed(run_upgrade(server, crashing, failpoint=failpoint), f"the upgrade ({failpoint})")

    # 2. the checkpoint at the crash: a batch and its checkpoint commit together (rows_done counts the sweep's
    #    rows, and all of the first sweep's are logged by it)
    job = case.resume_job
    if job is not None:
        at_crash = checkpoint(server, job)
        assert not at_crash["finished"] and at_crash["last_id"] is not None, at_crash
        if at_crash["sweep"] == 1:
            assert at_crash["logged"] == at_crash["rows_done"], at_crash
        else:
            assert at_crash["rows_done"] <= at_crash["logged"], at_crash
        if case.second_kill:
            prove_first_batch_follows_checkpoint(server, case, job, at_crash)
            at_crash = checkpoint(server, job)

    # 3. the rerun
    log = succeeded(run_upgrade(server, case.runner), "the rerun")

    # 4. it resumed from the checkpoint instead of starting over
    if job is not None:
        assert (job, str(at_crash["sweep"]), at_crash["mode"], at_crash["last_id"]) in RESUME_LINE.findall(log), (
            f"the rerun did not say it resumed from {at_crash}:\n{log[-3000:]}"
        )
        sweep, rest = at_crash["sweep"], ids_after(server, at_crash["last_id"])
        assert ids_scanned(log, job, sweep) == rest, (
            f"the rerun scanned {ids_scanned(log, job, sweep)} ids in sweep {sweep}, not the {rest} after the "
            "checkpoint"
        )
        assert ids_scanned(reference.log, job, sweep) == reference.total_ids  # a whole sweep scans every id

    # 5. the state of the uninterrupted run
    assert_same_state(state(server), reference.state)


def failpoints_in_code() -> set[str]:
    names: set[str] = set()
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "migrations").rglob("*.py")]:
        if path.name != "failpoints.py":
            names.update(FAILPOINT_CALL.findall(path.read_text(encoding="utf-8")))
    return names


def failpoints_of_cases() -> set[str]:
    sweeps = Sweeps([(J3, 1, "normal", 9), (J3, 2, "normal", 9), (J3, 3, "final", 9), (J4, 1, "normal", 9)])
    named = {str(c.failpoint(sweeps)).split(":")[0] for c in CASES if c.kill is not None}
    return named | {"backfill.after_batch"}  # and the second kill


def test_every_failpoint_in_the_code_is_exercised() -> None:
    in_code = failpoints_in_code()
    assert len(in_code) >= 10, in_code
    assert in_code - failpoints_of_cases() == set(), "failpoints in the code that no crash case kills at"
    assert failpoints_of_cases() - in_code == set(), "crash cases name failpoints the code does not have"
    assert len(CASES) >= 10


def test_failpoint_fires_on_the_nth_hit_only() -> None:
    script = (
        "from taskdb.failpoints import failpoint\n"
        "for i in range(1, 4):\n"
        "    print(i, flush=True)\n"
        "    failpoint('x.y')\n"
        "print('survived', flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != FAILPOINT_ENV}
    for wanted, printed, code in (
        ("x.y:2", "1\n2\n", -signal.SIGKILL),
        ("x.y", "1\n", -signal.SIGKILL),
        ("x.z", "1\n2\n3\nsurvived\n", 0),
        ("", "1\n2\n3\nsurvived\n", 0),
    ):
        done = subprocess.run(
            [sys.executable, "-c", script], env={**env, FAILPOINT_ENV: wanted}, capture_output=True, text=True
        )
        assert (done.returncode, done.stdout) == (code, printed), wanted


@pytest.mark.slow
def test_the_dataset_needs_several_sweeps(lab: Lab) -> None:
    """What the cases assume: several normal sweeps and a final one of several batches each; a catch-up."""
    sweeps = lab.reference("direct").sweeps
    modes = [mode for job, _, mode, _ in sweeps.runs if job == J3]
    assert modes.count("normal") >= 2 and "final" in modes, sweeps
    assert all(n >= 8 for job, _, _, n in sweeps.runs if job == J3), sweeps
    assert not any(job == J4 for job, *_ in sweeps.runs)  # no row written after 0003: no catch-up
    assert lab.reference("late").sweeps.batches(J4, 1) >= 8
