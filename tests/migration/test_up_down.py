"""Every revision goes up, down and up again to the same schema (river's MigrateUpThenDownToZeroAndBackUp),
and the head schema is the one src/taskdb/sql/schema.sql declares (procrastinate's test_migration)."""

from __future__ import annotations

import difflib
import json

import pytest

from taskdb.db import execute_script, pin_schema
from taskdb.sql import load
from tests.conftest import QUEUE_SCHEMAS
from tests.helpers import REVISIONS, Db
from tests.helpers_catalog import Picture, by_object, catalog, counts, differences


@QUEUE_SCHEMAS
def test_each_step_up_down_up_on_the_incident_database(db: Db) -> None:
    db.load("half_migrated", status_enum=True)
    pictures = {"base": catalog(db)}
    rows = {"base": db.snapshot()}
    previous = "base"
    for revision in REVISIONS:
        db.upgrade(revision)
        pictures[revision], rows[revision] = catalog(db), db.snapshot()
        db.downgrade(previous)
        assert catalog(db) == pictures[previous], f"downgrade of {revision} leaves the schema of {previous}"
        assert db.snapshot() == rows[previous], f"downgrade of {revision} restores the rows of {previous}"
        db.upgrade(revision)
        assert catalog(db) == pictures[revision], f"{revision} upgraded again gives the same schema"
        previous = revision


def _diff(migrated: Picture, declared: Picture) -> str:
    """Which objects differ and in which fields, then a unified diff of only those objects."""
    differing = differences(migrated, declared)
    left, right = by_object(migrated), by_object(declared)
    dump = lambda rows: json.dumps(rows, indent=1, sort_keys=True, default=str).splitlines()  # noqa: E731
    summary = [f"{name}: {', '.join(fields)}" for name, fields in differing.items()]
    detail = difflib.unified_diff(
        dump({n: left.get(n) for n in differing}),
        dump({n: right.get(n) for n in differing}),
        "migrations",
        "schema.sql",
        lineterm="",
    )
    return "\n".join([*summary, *detail])


def declare(db: Db, script: str) -> Picture:
    """Install ``script`` (schema.sql, or a changed copy) in ``db``, as taskdb's schema ``public``."""
    with db.engine.begin() as conn:
        pin_schema(conn, "public")  # schema.sql names taskdb's schema (@schema@) where it pins search_path
        execute_script(conn, script)
    return catalog(db, column_order=True)


@pytest.mark.parametrize("driver", ["psycopg", "pg8000"])
def test_migrations_produce_the_declared_schema(db: Db, other_db: Db, driver: str) -> None:
    db.upgrade(driver=driver)  # first: it creates the group roles schema.sql grants to
    migrated = catalog(db, column_order=True)
    declared = declare(other_db, load("schema"))
    assert migrated == declared, _diff(migrated, declared)
    # it compared something of every kind schema.sql declares (tables counts views and identity sequences)
    assert counts(declared) == {
        "tables": 15,
        "columns": 89,
        "constraints": 25,
        "indexes": 18,
        "views": 3,
        "functions": 10,
        "triggers": 1,
        "enums": 0,
    }


# One change to schema.sql each, and the objects the comparison must then report: a schema test that
# cannot see a changed body, view, trigger, setting or grant would pass whatever the migrations did.
CHANGES = {
    "function body": (
        "WHEN 'canceled' THEN 'Cancelled'",
        "WHEN 'canceled' THEN 'Canceled'",
        {"functions taskdb_canonical_status(p_status text)": ["body", "definition"]},
    ),
    "comment in a function body": (
        "-- recount under the lock: a claim for this user committed meanwhile is visible now",
        "-- recount under the lock",
        {"functions claim_next_task(p_worker_id text, p_run_type text)": ["body", "definition"]},
    ),
    "pinned setting": (
        "SET search_path = pg_catalog, @schema@, pg_temp SET jit = off AS $$",
        "SET search_path = pg_catalog, @schema@, pg_temp AS $$",
        {"functions taskdb_cancel_children()": ["definition", "proconfig"]},
    ),
    "security definer": (
        "LANGUAGE plpgsql STABLE SECURITY DEFINER\n",
        "LANGUAGE plpgsql STABLE\n",
        {"functions taskdb_cron_job_state(OUT installed boolean, OUT active boolean)": ["definition", "prosecdef"]},
    ),
    "view definition": (
        "WHERE u.id = t.user_id AND u.credits > 0",
        "WHERE u.id = t.user_id AND u.credits >= 0",
        {"views taskdb_ready_tasks": ["definition"]},
    ),
    "trigger": (
        "EXECUTE FUNCTION taskdb_cancel_children();",
        "EXECUTE FUNCTION taskdb_cancel_children('changed');",
        {"triggers tasks.tasks_cancel_children": ["definition"]},
    ),
    "grant": (
        "GRANT EXECUTE ON FUNCTION claim_next_task(text, text) TO taskdb_worker;",
        "",
        {"functions claim_next_task(p_worker_id text, p_run_type text)": ["acl"]},
    ),
    "column grant": (
        "GRANT SELECT (status, run_type, legacy_reason) ON tasks TO taskdb_monitor;",
        "GRANT SELECT (status, run_type) ON tasks TO taskdb_monitor;",
        {"columns tasks.legacy_reason": ["acl"]},
    ),
    "table comment": (
        "IS 'taskdb queue hygiene: one row; tune with UPDATE.'",
        "IS 'taskdb queue hygiene.'",
        {"tables task_hygiene_settings": ["comment"]},
    ),
    "column order": (
        "    error_message text,\n    project_id uuid,\n",
        "    project_id uuid,\n    error_message text,\n",
        {"columns tasks.error_message": ["position"], "columns tasks.project_id": ["position"]},
    ),
    "reindented body (no difference)": (
        "    SELECT CASE WHEN p_text ~*",
        "  SELECT\n   CASE WHEN p_text ~*",
        {},
    ),
}


@pytest.mark.parametrize("change", CHANGES)
def test_the_schema_comparison_sees_a_change(db: Db, other_db: Db, change: str) -> None:
    before, after, expected = CHANGES[change]
    schema = load("schema")
    assert schema.count(before) == 1, f"schema.sql no longer holds {before!r}: update this test"
    db.upgrade()
    migrated, declared = catalog(db, column_order=True), declare(other_db, schema.replace(before, after))
    assert differences(migrated, declared) == expected
