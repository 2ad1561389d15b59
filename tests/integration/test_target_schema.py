"""Which tasks table: taskdb never guesses. A tasks table in several schemas, or one that the search_path
resolves outside public (not supported yet), is refused before any change, exit 2, naming the schemas; with
TASKDB_SCHEMA=public the queue in public is upgraded and the other application's table stays as it was."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from taskdb import seeds
from tests.helpers import Db, with_driver

URL_VARS = ("TASKDB_DATABASE_URL", "DATABASE_URL")


def taskdb(db: Db, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in URL_VARS and not k.startswith("TASKDB_")}
    return subprocess.run([sys.executable, "-m", "taskdb.cli", "--url", db.url, *args], env=base | env,
                          capture_output=True, text=True, timeout=300)


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


def test_a_search_path_outside_public_is_refused_before_any_change(db: Db) -> None:
    load_into(db, "app")
    db.execute(f"ALTER DATABASE {db.url.rsplit('/', 1)[1]} SET search_path = app")
    before = tables(db, "app")
    refused(taskdb(db, "upgrade"), "resolves tasks to app.tasks", "only on public.tasks")
    assert tables(db, "app") == before
    assert db.scalar("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == 0
