"""The three starting states of DESIGN.md: empty, legacy (no user_id/run_type, no taskdb_alembic_version),
half-migrated (covered in depth by test_incident.py); and a table that cannot be adopted."""

from __future__ import annotations

import pytest
from alembic.util import CommandError

from tests.helpers import CONSTRAINTS, DRIVERS, Db, task_id


def constraint_states(db: Db) -> dict[str, bool]:
    return {
        r["conname"]: r["convalidated"]
        for r in db.rows(
            "SELECT conname, convalidated FROM pg_constraint "
            "WHERE conrelid = 'tasks'::regclass AND contype IN ('c', 'f')"
        )
    }


@pytest.mark.parametrize("driver", DRIVERS)
def test_empty_database_up_down_up(db: Db, driver: str) -> None:
    db.upgrade(driver=driver)
    assert constraint_states(db) == dict.fromkeys(CONSTRAINTS, True)
    not_null = {
        r["column_name"]
        for r in db.rows(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'tasks' AND is_nullable = 'NO'"
        )
    }
    assert {"id", "task_type", "params", "status", "attempts", "created_at"} <= not_null
    db.downgrade("base", driver=driver)
    # everything taskdb created is gone: only taskdb_alembic_version is left
    assert db.scalar(
        "SELECT array_agg(relname::text ORDER BY relname) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'S')"
    ) == ["taskdb_alembic_version"]
    db.upgrade(driver=driver)
    assert constraint_states(db) == dict.fromkeys(CONSTRAINTS, True)


def test_downgrade_keeps_a_created_table_that_holds_application_rows(db: Db) -> None:
    db.upgrade()
    db.execute("INSERT INTO users (id, credits) VALUES (gen_random_uuid(), 3)")
    db.downgrade("base")
    assert db.scalar("SELECT count(*) FROM users") == 1  # the application's row survives
    assert db.scalar("SELECT to_regclass('tasks')") is None  # the empty created tables are gone
    db.upgrade()  # and the kept table is adopted on the way up
    assert db.scalar("SELECT count(*) FROM users") == 1


@pytest.mark.parametrize("status_enum", [False, True], ids=["status-text", "status-enum"])
def test_legacy_database_gains_columns_and_loses_only_those_on_downgrade(db: Db, status_enum: bool) -> None:
    db.load("legacy", status_enum=status_enum)
    original, original_columns = db.snapshot(), db.columns()
    assert "user_id" not in original_columns
    db.upgrade()
    rows = {
        r["id"]: r
        for r in db.rows(
            "SELECT id::text AS id, user_id IS NOT NULL AS has_user, run_type, status::text AS status, legacy_reason "
            "FROM tasks"
        )
    }
    assert rows[task_id("legacy-project")] | {"id": None} == {
        "id": None,
        "has_user": True,
        "run_type": "cloud",
        "status": "Complete",
        "legacy_reason": None,
    }
    assert rows[task_id("legacy-queued")]["status"] == "Cancelled"
    assert rows[task_id("legacy-failed")]["legacy_reason"] == "missing_user_id,missing_run_type"
    db.downgrade("base")
    assert db.columns() == original_columns
    assert db.snapshot() == original


def test_a_table_missing_a_needed_column_fails_before_anything_changes(db: Db) -> None:
    db.execute(
        "CREATE TABLE tasks (id uuid PRIMARY KEY, task_type text, params jsonb, attempts int, created_at timestamptz)"
    )
    with pytest.raises(CommandError, match="table 'tasks', column 'status': missing"):
        db.upgrade()
    # nothing was created: no users, no projects, no bookkeeping
    assert db.scalar("SELECT to_regclass('users')") is None
    assert db.scalar("SELECT to_regclass('taskdb_owned_objects')") is None


def test_a_mistyped_column_is_named(db: Db) -> None:
    db.execute(
        "CREATE TABLE tasks (id uuid PRIMARY KEY, task_type text, params jsonb, status text, attempts int, "
        "created_at timestamptz, user_id text)"
    )
    with pytest.raises(CommandError, match="column 'user_id': has type text, taskdb needs one of uuid"):
        db.upgrade()
