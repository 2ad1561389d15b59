"""`taskdb sql`: the offline script, applied by psql as a DBA would, does what the online upgrade does.

One database gets the script (`psql -v ON_ERROR_STOP=1 -X -q -f`), an identical second one the online
upgrade; both must end with the same catalog, the same rows, the same log and the same bookkeeping. Also:
a second run changes nothing, a run killed mid-backfill resumes, a bad shape or an INVALID index stops the
script with the online upgrade's message, and the script is plain SQL without secrets.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from taskdb import api
from taskdb.cli import main
from taskdb.cron import PURGE_COMMAND
from taskdb.offline import batch_statement
from taskdb.testing import start_postgres
from tests.helpers import HEAD, Db, schema_db, with_driver
from tests.helpers_catalog import catalog

PSQL = "/usr/bin/psql"
APPLICATION_NAME = "taskdb offline test"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d(:\d\d)?)?")

pytestmark = pytest.mark.skipif(not Path(PSQL).exists(), reason=f"{PSQL} is not installed")


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The script installs pg_cron jobs only where cron.database_name is the database itself (never so on the
    # shared test server): the online side installs none either, so both sides can be compared.
    monkeypatch.setenv("TASKDB_CRON", "skip")
    for name in (
        "TASKDB_BACKFILL_BATCH_SIZE",
        "TASKDB_BACKFILL_TARGET_MS",
        "TASKDB_BACKFILL_DELAY_MS",
        "TASKDB_LOCK_TIMEOUT_MS",
        "TASKDB_LOCK_ATTEMPTS",
    ):
        monkeypatch.delenv(name, raising=False)


def generate(tmp_path: Path, revision_range: str = "base:head", name: str = "upgrade.sql") -> Path:
    path = tmp_path / name
    path.write_text(api.sql(revision_range), encoding="utf-8")
    return path


def psql_env(db: Db) -> dict[str, str]:
    url = make_url(db.url)
    return {
        **os.environ,
        "PGHOST": str(url.host),
        "PGPORT": str(url.port),
        "PGUSER": str(url.username),
        "PGPASSWORD": str(url.password),
        "PGDATABASE": str(url.database),
        "PGAPPNAME": APPLICATION_NAME,
    }


def psql(db: Db, script: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PSQL, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-f", str(script)],
        env=psql_env(db),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def apply(db: Db, script: Path) -> str:
    done = psql(db, script)
    assert done.returncode == 0, done.stderr
    return done.stderr


def copy_rows(source: Db, target: Db) -> None:
    """The same rows in both databases (the seeds' timestamps are relative to now())."""
    for table in ("users", "projects", "tasks"):
        found = [r["row"] for r in source.rows(f"SELECT to_jsonb(t) AS row FROM {table} t")]
        target.execute(
            f"INSERT INTO {table} SELECT * FROM jsonb_populate_recordset(NULL::{table}, CAST(:rows AS jsonb))",
            rows=json.dumps(found),
        )


def twins(db: Db, other_db: Db, shape: str | None, status_enum: bool) -> None:
    if shape is None:
        return
    db.load(shape, status_enum=status_enum)
    other_db.load(shape, status_enum=status_enum, incident=False)
    copy_rows(db, other_db)


def _mask(value: Any) -> Any:
    """Times taken from now() while upgrading (the cleanup's updated_at and message) differ between runs."""
    return json.loads(TIMESTAMP.sub("<time>", json.dumps(value, sort_keys=True, default=str)))


def state(db: Db) -> dict[str, Any]:
    has = lambda table: db.scalar("SELECT to_regclass(:t) IS NOT NULL", t=table)  # noqa: E731
    tasks = (
        {
            task_id: {
                **row,
                "updated_at": "<time>" if row.get("updated_at") else None,
                "error_message": _mask(row.get("error_message")),
            }
            for task_id, row in db.snapshot().items()
        }
        if has("tasks")
        else None
    )  # a downgrade to base drops a tasks table taskdb created
    log = (
        sorted(
            json.dumps(_mask(r), sort_keys=True)
            for r in db.rows("SELECT task_id::text, action, reason, previous, applied FROM task_hygiene_log")
        )
        if has("task_hygiene_log")
        else None
    )
    return {
        "catalog": catalog(db),
        "tasks": tasks,
        "log": log,
        # roles are cluster-wide: whichever side runs first creates (and records) them
        "owned": db.rows("SELECT kind, name, revision FROM taskdb_owned_objects WHERE kind <> 'role' ORDER BY seq")
        if has("taskdb_owned_objects")
        else None,
        "version": db.rows("SELECT version_num FROM taskdb_alembic_version") if has("taskdb_alembic_version") else None,
    }


def assert_same(offline: dict[str, Any], online: dict[str, Any]) -> None:
    for key in online:
        assert offline[key] == online[key], f"{key} differs between the offline script and the online upgrade"


@pytest.mark.parametrize(
    ("shape", "status_enum"),
    [("half_migrated", False), ("half_migrated", True), ("legacy", False), ("legacy", True), (None, False)],
    ids=["incident", "incident-enum-status", "legacy", "legacy-enum-status", "empty"],
)
def test_script_does_what_the_online_upgrade_does(
    db: Db, other_db: Db, tmp_path: Path, shape: str | None, status_enum: bool
) -> None:
    twins(db, other_db, shape, status_enum)
    output = apply(db, generate(tmp_path))
    other_db.upgrade()
    offline, online = state(db), state(other_db)
    assert_same(offline, online)
    assert online["version"] == [{"version_num": HEAD}]
    if shape == "half_migrated":
        assert "backfill 0003_backfill: sweep 1 (normal) batch of" in output  # one progress line per batch
        assert len(offline["log"]) > 50


@pytest.mark.parametrize("db", ["app"], indirect=True)  # beside another application's public.tasks (conftest)
def test_script_for_a_queue_in_another_schema_does_what_the_online_upgrade_does(
    db: Db, other_db: Db, tmp_path: Path
) -> None:
    reference = schema_db(other_db.url, "app")
    try:
        twins(db, reference, "half_migrated", False)
        script = generate(tmp_path)  # TASKDB_SCHEMA=app
        assert 'SET search_path = "app", pg_temp;' in script.read_text(encoding="utf-8")
        apply(db, script)
        reference.upgrade()
        assert_same(state(db), state(reference))
    finally:
        reference.engine.dispose()


def test_a_script_generated_without_a_schema_refuses_a_database_with_tasks_in_two(db: Db, tmp_path: Path) -> None:
    db.load("half_migrated")
    db.execute("CREATE SCHEMA app")
    db.execute("CREATE TABLE app.tasks (id uuid PRIMARY KEY)")  # another application's queue
    before = db.snapshot()
    done = psql(db, generate(tmp_path))
    assert done.returncode != 0
    assert "a tasks table exists in several schemas (app, public)" in done.stderr, done.stderr[-2000:]
    assert db.snapshot() == before
    assert db.scalar(
        "SELECT to_regclass('taskdb_owned_objects') IS NULL AND to_regclass('taskdb_alembic_version') IS NULL"
    )


def test_second_run_changes_nothing(db: Db, tmp_path: Path) -> None:
    db.load("half_migrated")
    script = generate(tmp_path)
    apply(db, script)
    first = state(db)
    output = apply(db, script)
    assert state(db) == first
    assert "backfill 0003_backfill: 0 rows need work" in output


def test_script_from_a_revision_continues_an_online_upgrade(db: Db, other_db: Db, tmp_path: Path) -> None:
    twins(db, other_db, "half_migrated", True)
    db.upgrade("0003_backfill")
    other_db.upgrade("0003_backfill")
    apply(db, generate(tmp_path, "0003_backfill:head"))
    other_db.upgrade()
    assert_same(state(db), state(other_db))


def test_script_for_another_starting_revision_refuses_to_run(db: Db, tmp_path: Path) -> None:
    db.load("half_migrated")
    db.upgrade("0002_columns")
    done = psql(db, generate(tmp_path, "0003_backfill:head"))
    assert done.returncode == 3
    assert f"this script upgrades 0003_backfill -> {HEAD}, but the database is at revision 0002_columns" in done.stderr
    assert db.scalar("SELECT version_num FROM taskdb_alembic_version") == "0002_columns"


def test_run_killed_mid_backfill_resumes(db: Db, other_db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    twins(db, other_db, "half_migrated", False)
    monkeypatch.setenv("TASKDB_BACKFILL_BATCH_SIZE", "5")
    monkeypatch.setenv("TASKDB_BACKFILL_DELAY_MS", "40")
    script = generate(tmp_path)
    run = subprocess.Popen(
        [PSQL, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-f", str(script)],
        env=psql_env(db),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (
            db.scalar("SELECT to_regclass('taskdb_backfill_progress') IS NOT NULL")
            and db.scalar("SELECT rows_done > 0 FROM taskdb_backfill_progress WHERE job = '0003_backfill'")
        ):
            assert run.poll() is None and time.monotonic() < deadline, "the backfill never started"
            time.sleep(0.05)
        killed = db.scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :a", a=APPLICATION_NAME
        )
        assert killed
        run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode != 0
    checkpoint = db.rows("SELECT sweep, mode, rows_done, finished_at FROM taskdb_backfill_progress")[0]
    assert checkpoint["finished_at"] is None and checkpoint["rows_done"] > 0
    assert db.scalar("SELECT version_num FROM taskdb_alembic_version") == "0002_columns"
    logged_before = db.scalar("SELECT count(*) FROM task_hygiene_log")

    output = apply(db, script)
    assert "backfill 0003_backfill: resuming sweep" in output
    assert db.scalar("SELECT count(*) FROM task_hygiene_log WHERE action <> 'cancel'") >= logged_before
    other_db.upgrade()
    assert_same(state(db), state(other_db))


def test_a_row_a_worker_holds_fails_the_waiting_sweep_within_lock_timeout_and_a_rerun_finishes(
    db: Db, other_db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    twins(db, other_db, "half_migrated", False)
    db.upgrade("0002_columns")
    monkeypatch.setenv("TASKDB_LOCK_TIMEOUT_MS", "200")
    monkeypatch.setenv("TASKDB_LOCK_ATTEMPTS", "2")
    script = generate(tmp_path, "0002_columns:0003_backfill")
    worker = sa.create_engine(db.engine.url, poolclass=sa.NullPool)
    with worker.connect() as conn:  # a worker holds a row the backfill must change, for the whole first run
        held = conn.execute(sa.text("SELECT id FROM tasks WHERE id = md5('incident-queued-1')::uuid FOR UPDATE"))
        assert held.scalar() is not None
        done = psql(db, script)
        conn.rollback()
    worker.dispose()
    assert done.returncode == 3
    assert "lock not available for backfill 0003_backfill batch (attempt 1/2)" in done.stderr
    assert "Failed after 2 attempts to take the lock for: backfill 0003_backfill batch" in done.stderr
    assert "taskdb offline test" not in done.stderr.split("blocked by:")[1]  # the blocker is the worker
    # the checkpoint is the last committed batch (of the final sweep): the failed one left nothing half-done
    assert db.scalar("SELECT finished_at IS NULL FROM taskdb_backfill_progress WHERE job = '0003_backfill'")
    assert db.scalar("SELECT legacy_reason FROM tasks WHERE id = md5('incident-queued-1')::uuid") is None

    output = apply(db, script)
    assert "resuming sweep" in output
    other_db.upgrade("0003_backfill")
    offline, online = state(db), state(other_db)
    for key in ("tasks", "log", "version"):
        assert offline[key] == online[key], key


def test_a_bad_shape_stops_the_script_with_the_online_message(db: Db, tmp_path: Path) -> None:
    db.execute(
        "CREATE TABLE tasks (id uuid PRIMARY KEY, task_type text, params jsonb, status text, attempts int, "
        "created_at timestamptz, user_id text)"
    )
    done = psql(db, generate(tmp_path))
    assert done.returncode == 3
    message = "table 'tasks', column 'user_id': has type text, taskdb needs one of uuid; nothing was changed"
    assert message in done.stderr
    for table in ("users", "taskdb_owned_objects", "taskdb_alembic_version"):
        assert db.scalar("SELECT to_regclass(:t)", t=table) is None


def test_an_invalid_index_stops_the_script_until_dropped(db: Db, tmp_path: Path) -> None:
    db.load("half_migrated")
    db.upgrade("0003_backfill")
    # a CONCURRENTLY build that failed half-way leaves an INVALID index behind
    with db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(Exception, match="could not create unique index"):
            conn.exec_driver_sql("CREATE UNIQUE INDEX CONCURRENTLY tasks_user_id_idx ON tasks (task_type)")
    script = generate(tmp_path, "0003_backfill:head")
    done = psql(db, script)
    assert done.returncode == 3
    assert "index tasks_user_id_idx is INVALID" in done.stderr
    assert "DROP INDEX CONCURRENTLY tasks_user_id_idx" in done.stderr
    with db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            "DROP INDEX CONCURRENTLY tasks_user_id_idx"
        )
    apply(db, script)
    index = db.rows(
        "SELECT i.indisvalid, i.indisunique FROM pg_index i WHERE i.indexrelid = 'tasks_user_id_idx'::regclass"
    )
    assert index == [{"indisvalid": True, "indisunique": False}]
    assert db.scalar("SELECT version_num FROM taskdb_alembic_version") == HEAD


def _strip_quoted(script: str) -> str:
    """The script without comments, string literals and dollar-quoted bodies: what psql itself reads."""
    script = re.sub(r"\$([A-Za-z_]*)\$.*?\$\1\$", "", script, flags=re.DOTALL)
    script = re.sub(r"'(?:[^']|'')*'", "", script)
    return re.sub(r"--[^\n]*", "", script)


def test_cli_writes_plain_sql_without_a_database_or_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("TASKDB_DATABASE_URL", raising=False)
    out = tmp_path / "upgrade.sql"
    assert main(["sql", "--output", str(out)]) == 0
    script = out.read_text()
    assert main(["--url", "postgresql://deploy:s3cr3t-Pw@db.internal/prod", "sql"]) == 0
    printed = capsys.readouterr().out
    assert printed == script
    assert "s3cr3t" not in script and "db.internal" not in script
    assert "\\" not in _strip_quoted(script), "no psql meta-commands: the script is plain SQL"
    assert ":" not in re.sub(r"::|:=", "", _strip_quoted(script)), "no psql variables"
    for text in (
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_user_id_idx",
        "CALL pg_temp.taskdb_backfill(",
        "CALL taskdb_cancel_stale_queued_all('taskdb revision 0005_hygiene')",
        "SET LOCAL lock_timeout = '2000ms'",
    ):
        assert text in script
    # the backfill runs the online engine's own batch statement, not a copy
    assert batch_statement() in script
    assert main(["sql", "head:base"]) == 1
    assert (
        f"{HEAD}:base goes down the chain: for a downgrade script use `taskdb sql --downgrade {HEAD}:base`"
        in capsys.readouterr().err
    )


CRON_DB = "taskdb_offline_cron"


def test_pg_cron_jobs_are_scheduled_where_the_cron_database_is_this_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKDB_CRON", "auto")
    script = generate(tmp_path)
    with start_postgres(settings={"cron.database_name": CRON_DB}) as server:
        url = server.url(server.create_database(CRON_DB))
        db = Db(url, sa.create_engine(with_driver(url, "psycopg"), poolclass=sa.NullPool))
        try:
            db.load("half_migrated")
            db.execute("CREATE EXTENSION pg_cron")  # the script schedules; creating pg_cron is the DBA's call
            output = apply(db, script)
            assert "pg_cron job taskdb_cancel_stale_queued scheduled (15 3 * * *) in this database" in output
            jobs = db.rows("SELECT jobid, jobname::text AS jobname, schedule, command, database FROM cron.job")
            by_name = {j["jobname"]: j for j in jobs}
            assert set(by_name) == {"taskdb_cancel_stale_queued", "taskdb_purge_cron_history"}
            cleanup = by_name["taskdb_cancel_stale_queued"]
            assert (cleanup["schedule"], cleanup["command"], cleanup["database"]) == (
                "15 3 * * *",
                "CALL \"public\".taskdb_cancel_stale_queued_all('pg_cron job taskdb_cancel_stale_queued')",
                CRON_DB,
            )
            assert by_name["taskdb_purge_cron_history"]["command"] == PURGE_COMMAND
            recorded = db.rows(
                "SELECT job, jobname, jobid, cron_database, run_database FROM taskdb_cron_jobs ORDER BY job"
            )
            assert recorded == [
                {
                    "job": j["jobname"],
                    "jobname": j["jobname"],
                    "jobid": j["jobid"],
                    "cron_database": CRON_DB,
                    "run_database": CRON_DB,
                }
                for j in sorted(jobs, key=lambda j: j["jobname"])
            ]
            assert db.rows("SELECT cron_job_installed, cron_job_active FROM queue_health") == [
                {"cron_job_installed": True, "cron_job_active": True}
            ]
            apply(db, script)  # a rerun schedules nothing twice
            assert db.rows("SELECT jobid, jobname::text AS jobname, schedule, command, database FROM cron.job") == jobs
        finally:
            db.engine.dispose()
