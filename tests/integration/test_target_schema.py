"""Which tasks table: taskdb never guesses. A tasks table in several schemas with none named, or a named schema
that does not exist, is refused before any change, exit 2, naming the schemas. TASKDB_SCHEMA picks the queue
(public or app) and the other application's table stays as it was; a search_path of app puts the queue and
every object taskdb creates in app, and its roles and its pg_cron command reach them from any search_path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from taskdb import cron, seeds
from tests.helpers import HEAD, Db, with_driver

URL_VARS = ("TASKDB_DATABASE_URL", "DATABASE_URL")


def taskdb(db: Db, *args: str, url: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in URL_VARS and not k.startswith("TASKDB_")}
    return subprocess.run(
        [sys.executable, "-m", "taskdb.cli", "--url", url or db.url, *args],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def load_into(db: Db, schema: str) -> None:
    """The incident in ``schema``, through a connection whose search_path is that schema."""
    engine = sa.create_engine(with_driver(db.url, "psycopg"), poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            conn.exec_driver_sql(f"SET LOCAL search_path = {schema}")
            seeds.load_schema(conn, "half_migrated")
            seeds.load_incident(conn)
    finally:
        engine.dispose()


def tables(db: Db, schema: str) -> dict[str, object]:
    """Every row and column of the schema's tasks table, and what else lives in the schema."""
    return {
        "rows": db.rows(f"SELECT to_jsonb(t)::text AS row FROM {schema}.tasks t ORDER BY id"),
        "relations": db.rows(
            "SELECT relname::text FROM pg_class WHERE relnamespace = CAST(:s AS regnamespace) ORDER BY 1", s=schema
        ),
        "functions": db.scalar("SELECT count(*) FROM pg_proc WHERE pronamespace = CAST(:s AS regnamespace)", s=schema),
    }


def refused(result: subprocess.CompletedProcess[str], *needed: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("taskdb:")]
    assert len(lines) == 1, result.stderr[-3000:]
    for text in needed:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize("command", [("upgrade",), ("plan",)])
def test_a_tasks_table_in_two_schemas_is_refused_naming_both(db: Db, command: tuple[str, ...]) -> None:
    load_into(db, "public")
    load_into(db, "app")
    before = {s: tables(db, s) for s in ("public", "app")}
    refused(taskdb(db, *command), "a tasks table exists in several schemas (app, public)", "TASKDB_SCHEMA")
    assert {s: tables(db, s) for s in ("public", "app")} == before


def test_taskdb_schema_public_upgrades_the_queue_and_leaves_the_other_table_alone(db: Db) -> None:
    load_into(db, "public")
    load_into(db, "app")
    other = tables(db, "app")
    result = taskdb(db, "upgrade", TASKDB_SCHEMA="public")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "taskdb upgrade: public.tasks (" in result.stderr
    assert db.scalar("SELECT to_regclass('public.task_hygiene_log') IS NOT NULL")
    assert tables(db, "app") == other


def test_a_search_path_of_app_puts_the_queue_and_every_object_in_app(db: Db) -> None:
    load_into(db, "app")
    db.execute(f"ALTER DATABASE {db.url.rsplit('/', 1)[1]} SET search_path = app")
    result = taskdb(db, "upgrade")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "taskdb upgrade: app.tasks (" in result.stderr
    for command in (("plan",), ("current",), ("cleanup",), ("cron", "status"), ("doctor",)):
        done = taskdb(db, *command)
        assert done.returncode in (0, 1) and "Traceback" not in done.stderr, (command, done.stderr[-3000:])
        assert "taskdb:" not in done.stderr, (command, done.stderr[-3000:])  # no refusal, no error line
    assert f"{HEAD} (head)" in taskdb(db, "current").stdout
    assert db.scalar("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == 0
    assert db.scalar("SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace") == 0
    assert db.scalar("SELECT to_regclass('app.taskdb_alembic_version') IS NOT NULL")
    pinned = db.scalar(
        "SELECT proconfig::text FROM pg_proc WHERE oid = 'app.claim_next_task(text, text)'::regprocedure"
    )
    assert pinned == '{"search_path=pg_catalog, app, pg_temp"}'


def test_a_queue_only_outside_the_search_path_is_refused_rather_than_created_anew(db: Db) -> None:
    load_into(db, "app")  # the default search_path ("$user", public) finds no tasks
    before = tables(db, "app")
    refused(taskdb(db, "upgrade"), "finds no tasks table, but app has one", "TASKDB_SCHEMA")
    assert tables(db, "app") == before
    assert db.scalar("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == 0


def test_a_TASKDB_SCHEMA_that_does_not_exist_is_refused(db: Db) -> None:
    load_into(db, "public")
    before = tables(db, "public")
    refused(taskdb(db, "upgrade", TASKDB_SCHEMA="nope"), "schema nope (TASKDB_SCHEMA) does not exist", "CREATE SCHEMA")
    assert tables(db, "public") == before


@pytest.mark.parametrize("driver", ["psycopg", "pg8000"])
def test_the_queue_in_app_serves_its_roles_and_its_cron_command_from_any_search_path(db: Db, driver: str) -> None:
    load_into(db, "public")
    load_into(db, "app")
    other = tables(db, "public")
    result = taskdb(db, "upgrade", TASKDB_SCHEMA="app", url=with_driver(db.url, driver))
    assert result.returncode == 0, result.stderr[-3000:]
    assert tables(db, "public") == other
    # a worker whose search_path is the default one claims through the schema (taskdb granted USAGE on it)
    db.execute("CREATE ROLE taskdb_test_app_worker IN ROLE taskdb_worker")
    engine = sa.create_engine(with_driver(db.url, "psycopg"), poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL ROLE taskdb_test_app_worker")
            claimed = conn.exec_driver_sql("SELECT id FROM app.claim_next_task('w1', 'cloud')").fetchall()
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                conn.exec_driver_sql("SELECT count(*) FROM app.tasks")  # still only what its grants allow
        assert len(claimed) == 1
        # the cleanup job's command names the schema: it runs from a session that knows nothing of app
        command = db.scalar("SELECT command FROM app.taskdb_cron_jobs WHERE job = 'taskdb_cancel_stale_queued'")
        if command is None:  # pg_cron not usable on this server: the command taskdb would schedule
            command = cron.cleanup_command(cron.CLEANUP_JOB, "app")
        assert command.startswith('CALL "app".taskdb_cancel_stale_queued_all(')
        db.execute(
            "UPDATE app.tasks SET created_at = now() - interval '30 days' "
            "WHERE status = 'Queued' AND legacy_reason IS NULL"
        )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(command)
        assert (
            db.scalar(
                "SELECT count(*) FROM app.tasks WHERE status = 'Queued' AND created_at < now() - interval '29 days'"
            )
            == 0
        )
    finally:
        engine.dispose()
        db.execute("DROP ROLE taskdb_test_app_worker")
    assert tables(db, "public") == other
