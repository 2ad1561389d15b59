"""Rerunning after a failure finishes the work: leftover NOT VALID constraints are validated, an INVALID
index is rebuilt; adopted objects of the same names are kept as they are."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.conftest import QUEUE_SCHEMAS
from tests.helpers import Db

# The queue in public, and in schema app beside another application's public.tasks (tests/conftest.py).
pytestmark = QUEUE_SCHEMAS


def test_leftover_not_valid_constraint_is_validated(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade("0003_backfill")
    # as if an earlier run died between ADD ... NOT VALID and VALIDATE
    db.execute(
        "ALTER TABLE tasks ADD CONSTRAINT tasks_status_valid "
        "CHECK (status::text IN ('Queued', 'In Progress', 'Complete', 'Failed', 'Cancelled')) NOT VALID"
    )
    db.execute(
        "INSERT INTO taskdb_owned_objects (kind, name, revision) "
        "VALUES ('constraint', 'tasks.tasks_status_valid', '0004_constraints')"
    )
    db.upgrade()
    assert db.scalar("SELECT convalidated FROM pg_constraint WHERE conname = 'tasks_status_valid'") is True
    db.downgrade("0003_backfill")
    assert db.scalar("SELECT count(*) FROM pg_constraint WHERE conname = 'tasks_status_valid'") == 0


def test_invalid_index_left_by_an_interrupted_build_is_rebuilt(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade("0003_backfill")
    # a CONCURRENTLY build that failed half-way leaves an INVALID index behind
    with (
        db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        pytest.raises(sa.exc.IntegrityError),
    ):
        conn.exec_driver_sql("CREATE UNIQUE INDEX CONCURRENTLY tasks_user_id_idx ON tasks (user_id)")
    assert db.scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = 'tasks_user_id_idx'::regclass") is False
    db.upgrade()
    index = db.rows(
        "SELECT i.indisvalid, i.indisunique FROM pg_index i WHERE i.indexrelid = 'tasks_user_id_idx'::regclass"
    )
    assert index == [{"indisvalid": True, "indisunique": False}]


def test_adopted_foreign_key_and_index_of_the_same_name_survive_downgrade(db: Db) -> None:
    db.load("half_migrated")
    # the application already had (an unvalidated) foreign key and an index under taskdb's names
    db.execute("UPDATE tasks SET user_id = NULL WHERE user_id NOT IN (SELECT id FROM users)")
    db.execute(
        "ALTER TABLE tasks ADD CONSTRAINT tasks_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID"
    )
    db.execute("CREATE INDEX tasks_user_id_idx ON tasks (user_id, created_at)")
    db.upgrade()
    assert db.scalar("SELECT convalidated FROM pg_constraint WHERE conname = 'tasks_user_id_fkey'") is True
    db.downgrade("base")
    assert db.scalar("SELECT count(*) FROM pg_constraint WHERE conname = 'tasks_user_id_fkey'") == 1
    assert "created_at" in db.scalar("SELECT indexdef FROM pg_indexes WHERE indexname = 'tasks_user_id_idx'")


def test_a_column_some_rows_leave_null_stays_nullable(db: Db, caplog: pytest.LogCaptureFixture) -> None:
    db.execute("CREATE TABLE users (id uuid PRIMARY KEY, credits numeric NOT NULL DEFAULT 0)")
    db.execute("CREATE TABLE projects (id uuid PRIMARY KEY, user_id uuid NOT NULL REFERENCES users)")
    db.execute(
        "CREATE TABLE tasks (id uuid PRIMARY KEY, task_type text, params jsonb, status text, attempts int, "
        "created_at timestamptz, user_id uuid, run_type text)"
    )
    db.execute("INSERT INTO users VALUES ('00000000-0000-0000-0000-000000000001', 1)")
    db.execute(
        "INSERT INTO tasks VALUES (gen_random_uuid(), NULL, '{}', 'Complete', 0, now(), "
        "'00000000-0000-0000-0000-000000000001', 'cloud')"
    )
    with caplog.at_level("WARNING", logger="taskdb"):
        db.upgrade()
    nullable = {
        r["column_name"]: r["is_nullable"]
        for r in db.rows("SELECT column_name, is_nullable FROM information_schema.columns WHERE table_name = 'tasks'")
    }
    assert nullable["task_type"] == "YES" and nullable["params"] == "NO"
    assert any("tasks.task_type stays nullable: 1 rows hold NULL" in m for m in caplog.messages)
    assert db.scalar("SELECT count(*) FROM pg_constraint WHERE conname = 'tasks_task_type_not_null'") == 0
