"""`taskdb sql --downgrade`: the offline downgrade script, applied by psql as a DBA would, does what the online
downgrade does.

Twin databases are upgraded online to head; one gets the script (`psql -v ON_ERROR_STOP=1 -X -q -f`), the other
`taskdb downgrade`; both must end with the same catalog, rows, log and bookkeeping. Also: a second run changes
nothing, the script refuses a database outside its range, an index taskdb adopted survives, and pg_cron's jobs
go where pg_cron keeps them in the database itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from taskdb import api
from taskdb.testing import start_postgres
from tests.acceptance.test_cli import taskdb
from tests.acceptance.test_offline_sql import PSQL, apply, assert_same, psql, state, twins
from tests.helpers import HEAD, Db, schema_db, with_driver

pytestmark = pytest.mark.skipif(not Path(PSQL).exists(), reason=f"{PSQL} is not installed")
CRON_DB = "taskdb_offline_down_cron"


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKDB_CRON", "skip")  # as test_offline_sql: no pg_cron job on the shared server
    for name in ("TASKDB_BACKFILL_BATCH_SIZE", "TASKDB_BACKFILL_TARGET_MS", "TASKDB_LOCK_TIMEOUT_MS"):
        monkeypatch.delenv(name, raising=False)


def roles_exist(db: Db) -> None:
    """0005's group roles, created beforehand: roles are cluster-wide, so otherwise only the twin upgraded first
    records them as its own, keeps taskdb_owned_objects after a downgrade to base, and the twins differ."""
    db.execute(
        "DO $$ DECLARE r text; BEGIN FOREACH r IN ARRAY ARRAY['taskdb_autoscaler', 'taskdb_worker', "
        "'taskdb_monitor'] LOOP IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN "
        "EXECUTE format('CREATE ROLE %I NOLOGIN', r); END IF; END LOOP; END $$"
    )


def generate(tmp_path: Path, revision_range: str = "head:base") -> Path:
    path = tmp_path / "downgrade.sql"
    path.write_text(api.sql(revision_range, downgrade=True), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("shape", "status_enum", "target"),
    [
        ("half_migrated", False, "base"),
        ("half_migrated", True, "base"),
        ("legacy", False, "base"),
        ("legacy", True, "0004_constraints"),
        ("half_migrated", False, "0002_columns"),
        (None, False, "base"),
    ],
    ids=["incident", "incident-enum-status", "legacy", "legacy-enum-to-0004", "incident-to-0002", "empty"],
)
def test_script_does_what_the_online_downgrade_does(
    db: Db, other_db: Db, tmp_path: Path, shape: str | None, status_enum: bool, target: str
) -> None:
    twins(db, other_db, shape, status_enum)
    roles_exist(db)
    db.upgrade()
    other_db.upgrade()
    # the application moved on since the upgrade: a later change must win on both sides
    if shape == "half_migrated":
        for side in (db, other_db):
            side.execute(
                "UPDATE tasks SET run_type = 'local' WHERE id = (SELECT task_id FROM task_hygiene_log "
                "WHERE applied ? 'run_type' ORDER BY task_id LIMIT 1)"
            )
    script = generate(tmp_path, f"head:{target}")
    output = apply(db, script)
    other_db.downgrade(target)
    offline = state(db)
    assert_same(offline, state(other_db))
    if target == "base" and shape is not None:
        assert offline["log"] is None and offline["version"] == []  # the log dropped; the version table stays
    if shape == "half_migrated" and target == "base":
        assert "restore taskdb revision 0003_backfill:" in output  # one NOTICE per batch
    apply(db, script)  # a second run: every step finds its work done
    assert state(db) == offline


@pytest.mark.parametrize("db", ["app"], indirect=True)  # beside another application's public.tasks (conftest)
def test_script_for_a_queue_in_another_schema_does_what_the_online_downgrade_does(
    db: Db, other_db: Db, tmp_path: Path
) -> None:
    reference = schema_db(other_db.url, "app")
    try:
        twins(db, reference, "half_migrated", False)
        roles_exist(db)
        db.upgrade()
        reference.upgrade()
        script = generate(tmp_path)  # TASKDB_SCHEMA=app
        assert 'SET search_path = "app", pg_temp;' in script.read_text(encoding="utf-8")
        apply(db, script)
        reference.downgrade("base")
        assert_same(state(db), state(reference))
    finally:
        reference.engine.dispose()


def test_an_index_the_database_already_had_survives_the_script(db: Db, other_db: Db, tmp_path: Path) -> None:
    """0005 adopts an index of its name that was already there (never recorded as taskdb's): the script's
    DROP INDEX CONCURRENTLY must miss it, as the online downgrade does."""
    twins(db, other_db, "half_migrated", False)
    roles_exist(db)
    for side in (db, other_db):
        side.execute("CREATE INDEX tasks_in_progress_user_id_idx ON tasks (user_id) WHERE status = 'In Progress'")
        side.upgrade()
    apply(db, generate(tmp_path, "head:0004_constraints"))
    other_db.downgrade("0004_constraints")
    assert_same(state(db), state(other_db))
    assert db.scalar("SELECT to_regclass('tasks_in_progress_user_id_idx') IS NOT NULL")
    assert not db.scalar("SELECT to_regclass('tasks_queued_run_type_created_at_idx') IS NOT NULL")


def test_script_refuses_a_database_outside_its_range(db: Db, tmp_path: Path) -> None:
    db.load("half_migrated")
    db.upgrade("0003_backfill")
    before = state(db)
    done = psql(db, generate(tmp_path, "0006_cron:0004_constraints"))
    assert done.returncode == 3, done.stderr
    assert (
        "this script downgrades 0006_cron -> 0004_constraints, but the database is at revision 0003_backfill"
        in done.stderr
    ), done.stderr
    assert state(db) == before
    # the range it is in: from 0003 down, and the version moves down with it
    apply(db, generate(tmp_path, "0003_backfill:0001_baseline"))
    assert db.scalar("SELECT version_num FROM taskdb_alembic_version") == "0001_baseline"


def test_cli_writes_the_downgrade_without_a_database(tmp_path: Path) -> None:
    out = tmp_path / "down.sql"
    result = taskdb("sql", "--downgrade", "0004_constraints", "--output", str(out), env={"PGHOST": "/nonexistent"})
    assert result.returncode == 0, result.stderr
    assert "wrote the downgrade 0004_constraints" in result.stderr
    text = out.read_text(encoding="utf-8")
    assert text.startswith(f"-- taskdb offline downgrade: {HEAD} -> 0004_constraints")
    assert "DROP INDEX CONCURRENTLY IF EXISTS taskdb_dropping_tasks_queued_run_type_created_at_idx" in text
    assert "UPDATE taskdb_alembic_version SET version_num='0004_constraints'" in text
    assert "CALL pg_temp.taskdb_restore('taskdb revision 0005_hygiene', 1000)" in text
    upward = taskdb("sql", "--downgrade", "base:head")
    assert upward.returncode == 1 and "goes up the chain: for an upgrade script leave out --downgrade" in upward.stderr
    unknown = taskdb("sql", "--downgrade", "nope")
    assert unknown.returncode != 0 and "unknown revision 'nope'" in unknown.stderr and "Traceback" not in unknown.stderr


def test_pg_cron_jobs_go_where_the_cron_database_is_this_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKDB_CRON", "auto")
    with start_postgres(settings={"cron.database_name": CRON_DB}) as server:
        url = server.url(server.create_database(CRON_DB))
        db = Db(url, sa.create_engine(with_driver(url, "psycopg"), poolclass=sa.NullPool))
        try:
            db.load("half_migrated")
            db.upgrade()  # online: creates pg_cron here (recorded as taskdb's) and schedules both jobs
            assert db.scalar("SELECT count(*) FROM cron.job") == 2
            assert db.scalar("SELECT count(*) FROM taskdb_owned_objects WHERE kind = 'extension'") == 1
            output = apply(db, generate(tmp_path, "head:0005_hygiene"))
            assert "pg_cron job taskdb_cancel_stale_queued unscheduled" in output
            assert "dropped pg_cron (taskdb had created it)" in output
            assert not db.scalar("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron')")
            assert db.scalar("SELECT to_regclass('taskdb_cron_jobs') IS NULL")
            assert db.scalar("SELECT version_num FROM taskdb_alembic_version") == "0005_hygiene"
        finally:
            db.engine.dispose()


def test_jobs_in_another_cron_database_stop_the_script_until_removed(
    db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_cron keeps its jobs in another database (cron.database_name = postgres on the test server, as on RDS or
    Cloud SQL): the script cannot unschedule them, and dropping 0005's functions under a live job would leave it
    failing every day. It stops before that step changes anything; after `taskdb cron remove` a rerun finishes."""
    monkeypatch.setenv("TASKDB_CRON", "auto")
    db.load("half_migrated")
    db.upgrade()
    jobs = db.rows("SELECT jobname, cron_database FROM taskdb_cron_jobs ORDER BY job")
    assert jobs and all(j["cron_database"] != db.scalar("SELECT current_database()") for j in jobs)
    script = generate(tmp_path, "head:0004_constraints")
    done = psql(db, script)
    assert done.returncode == 3, done.stderr
    assert f"pg_cron job {jobs[0]['jobname']} lives in database {jobs[0]['cron_database']}" in done.stderr
    assert "run `taskdb cron remove`" in done.stderr
    assert db.scalar("SELECT version_num FROM taskdb_alembic_version") == "0006_cron"
    assert db.scalar("SELECT count(*) FROM taskdb_cron_jobs") == len(jobs)  # nothing of this step changed
    removed = taskdb("cron", "remove", "--url", db.url)
    assert removed.returncode == 0, removed.stderr
    apply(db, script)
    assert db.scalar("SELECT version_num FROM taskdb_alembic_version") == "0004_constraints"
    assert db.scalar("SELECT to_regclass('taskdb_cron_jobs') IS NULL AND to_regclass('queue_health') IS NULL")


def test_a_database_taskdb_never_upgraded_is_refused(db: Db, tmp_path: Path) -> None:
    db.load("half_migrated")
    db.execute("CREATE FUNCTION claim_next_task(text, text) RETURNS uuid LANGUAGE sql AS 'SELECT NULL::uuid'")
    done = psql(db, generate(tmp_path))
    assert done.returncode == 3, done.stderr
    assert "has no taskdb_alembic_version table: taskdb never upgraded it" in done.stderr, done.stderr
    assert db.scalar("SELECT to_regprocedure('claim_next_task(text, text)') IS NOT NULL")  # the app's, untouched


def test_a_task_a_worker_holds_makes_the_restore_retry_then_fail_naming_it_and_a_rerun_finishes(
    db: Db, other_db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The offline restore retries a batch that waited for a lock, as the online one does (the same blockers query
    and backoff, the LockPolicy's attempts), then stops with exit 3 naming the session."""
    twins(db, other_db, "half_migrated", False)
    roles_exist(db)
    for side in (db, other_db):  # Queued tasks older than queued_ttl: 0005's cleanup cancels (and logs) them
        side.execute("UPDATE tasks SET created_at = timestamptz '2020-01-01 00:00Z' WHERE status = 'Queued'")
    db.upgrade()
    other_db.upgrade()
    monkeypatch.setenv("TASKDB_LOCK_TIMEOUT_MS", "200")
    monkeypatch.setenv("TASKDB_LOCK_ATTEMPTS", "2")
    script = generate(tmp_path, "head:0004_constraints")  # 0005's restore comes before any DDL on tasks
    actor = "taskdb revision 0005_hygiene"
    # a task the restore puts back (read first: a transaction that read the log would hold up the DROP INDEX
    # CONCURRENTLY of 0007's log index, before the restore)
    task = db.scalar("SELECT min(task_id::text) FROM task_hygiene_log WHERE actor = :actor", actor=actor)
    worker = sa.create_engine(db.engine.url, poolclass=sa.NullPool)
    with worker.connect() as conn:  # a worker holds it for the whole first run
        conn.execute(sa.text("SET application_name = 'restore-blocker'"))
        held = conn.execute(sa.text("SELECT id FROM tasks WHERE id = CAST(:id AS uuid) FOR UPDATE"), {"id": task})
        assert held.scalar() is not None
        done = psql(db, script)
        conn.rollback()
    worker.dispose()
    assert done.returncode == 3, done.stderr
    assert f"lock not available for restore {actor} batch (attempt 1/2), held by pid" in done.stderr
    failed = done.stderr.split(f"Failed after 2 attempts to take the lock for: restore {actor} batch")
    assert len(failed) == 2, done.stderr
    assert "blocked by: pid" in failed[1] and "restore-blocker, idle in transaction" in failed[1], done.stderr

    apply(db, script)
    other_db.downgrade("0004_constraints")
    assert_same(state(db), state(other_db))
