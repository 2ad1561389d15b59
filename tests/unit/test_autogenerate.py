"""taskdb.autogenerate without a database: what the filters hide and let through, and where the names come from.

(tests/acceptance/test_toy_app.py checks the names against the catalog of an upgraded database.)"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from taskdb import api
from taskdb.autogenerate import (
    APPLICATION_TABLES,
    TASKDB_COLUMNS,
    TASKDB_OBJECTS,
    combine,
    declared_objects,
    include_name,
    include_object,
)


def revision_module(revision: str) -> Any:
    return ScriptDirectory(str(api.alembic_ini().parent / "migrations")).get_revision(revision).module


def test_the_application_tables_are_the_ones_0001_adopts() -> None:
    assert {spec.name for spec in revision_module("0001_baseline").TABLES} == APPLICATION_TABLES
    assert not APPLICATION_TABLES & TASKDB_OBJECTS.tables


def test_only_legacy_reason_of_the_columns_0002_adds_is_taskdbs_alone() -> None:
    added = set(revision_module("0002_columns").COLUMNS)
    assert {"tasks": frozenset({"legacy_reason"})} == TASKDB_COLUMNS
    assert TASKDB_COLUMNS["tasks"] <= added
    assert {"user_id", "run_type"} <= added - TASKDB_COLUMNS["tasks"]  # the application writes them


def test_declared_objects_reads_statements_not_function_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKDB_VERSION_TABLE", raising=False)  # the default name only
    found = declared_objects("""
        -- a comment: CREATE TABLE not_a_table (id int);
        CREATE TABLE tasks (id uuid PRIMARY KEY, CONSTRAINT tasks_app_rule CHECK (true));
        CREATE TABLE taskdb_things (
            id int PRIMARY KEY,
            n int CONSTRAINT taskdb_things_n_positive CHECK (n > 0)
        );
        ALTER TABLE tasks ADD CONSTRAINT tasks_taskdb_rule CHECK (true);
        CREATE INDEX tasks_taskdb_idx ON tasks (id);
        CREATE OR REPLACE VIEW taskdb_view AS SELECT 1;
        CREATE FUNCTION taskdb_fn() RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            EXECUTE 'CREATE TABLE made_at_run_time (id int)';
        END
        $$;
        CREATE TRIGGER tasks_taskdb_trigger AFTER UPDATE ON tasks FOR EACH STATEMENT EXECUTE FUNCTION taskdb_fn();
    """)
    assert found.tables == {"taskdb_things", "taskdb_alembic_version"}  # tasks is the application's
    assert found.constraints == {"taskdb_things_n_positive", "tasks_taskdb_rule"}  # not the app's inline one
    assert found.indexes == {"tasks_taskdb_idx"}
    assert found.views == {"taskdb_view"}
    assert found.functions == {"taskdb_fn"}
    assert found.triggers == {"tasks_taskdb_trigger"}


def app_model() -> sa.MetaData:
    """The application's tables with, beside its own objects, some bearing taskdb's names."""
    metadata = sa.MetaData()
    sa.Table("users", metadata, sa.Column("id", sa.Uuid, primary_key=True))
    sa.Table(
        "tasks",
        metadata,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("user_id", sa.Uuid, sa.ForeignKey("users.id")),  # unnamed: the application's
        sa.Column("run_type", sa.Text),
        sa.Column("priority", sa.Integer, index=True),
        sa.Column("legacy_reason", sa.Text),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="tasks_user_id_fkey"),
        sa.Index("tasks_user_id_idx", "user_id"),
    )
    sa.Table("notes", metadata, sa.Column("legacy_reason", sa.Text))  # another table's column of that name
    sa.Table(
        "task_hygiene_log",
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Index("task_hygiene_log_task_id_idx", "id"),
    )
    return metadata


def test_include_object_hides_taskdbs_objects_and_keeps_the_applications() -> None:
    metadata = app_model()
    tasks, log, notes, users = (metadata.tables[n] for n in ("tasks", "task_hygiene_log", "notes", "users"))

    def included(obj: Any, type_: str, reflected: bool = True) -> bool:
        return include_object(obj, obj.name, type_, reflected, None)

    for reflected in (True, False):  # found in the database or declared in the model alike
        assert not included(log, "table", reflected)
        assert not included(tasks.c.legacy_reason, "column", reflected)
        assert not included(next(i for i in tasks.indexes if i.name == "tasks_user_id_idx"), "index", reflected)
        named_fk = next(fk for fk in tasks.foreign_key_constraints if fk.name == "tasks_user_id_fkey")
        assert not included(named_fk, "foreign_key_constraint", reflected)
        assert not included(next(iter(log.indexes)), "index", reflected)
        assert not included(log.c.id, "column", reflected)

        assert included(tasks, "table", reflected) and included(users, "table", reflected)
        for column in ("id", "user_id", "run_type", "priority"):
            assert included(tasks.c[column], "column", reflected)
        assert included(notes.c.legacy_reason, "column", reflected)
        assert included(next(i for i in tasks.indexes if i.name == "ix_tasks_priority"), "index", reflected)
        unnamed_fk = next(fk for fk in tasks.foreign_key_constraints if fk.name is None)
        assert included(unnamed_fk, "foreign_key_constraint", reflected)


def test_include_name_hides_taskdbs_names_in_any_schema_and_passes_every_schema() -> None:
    for schema in (None, "public", "app"):
        assert include_name(schema, "schema", {})
        assert not include_name("task_hygiene_settings", "table", {"schema_name": schema})
        assert not include_name("taskdb_alembic_version", "table", {"schema_name": schema})
        assert include_name("tasks", "table", {"schema_name": schema})
        on_tasks = {"table_name": "tasks", "schema_name": schema}
        assert not include_name("legacy_reason", "column", on_tasks)
        assert include_name("priority", "column", on_tasks)
        assert not include_name("tasks_queued_run_type_created_at_idx", "index", on_tasks)
        assert include_name("ix_tasks_priority", "index", on_tasks)
        # reflected, so that a foreign key the model declares matches it; include_object hides it otherwise
        assert include_name("tasks_user_id_fkey", "foreign_key_constraint", on_tasks)
        assert not include_name("id", "column", {"table_name": "taskdb_cron_jobs", "schema_name": schema})


def test_combine_lets_through_only_what_every_filter_does() -> None:
    def not_audit(name: str | None, type_: str, parent_names: Any) -> bool:
        return name != "audit"

    both = combine(include_name, not_audit)
    assert both("tasks", "table", {"schema_name": None})
    assert not both("audit", "table", {"schema_name": None})
    assert not both("task_hygiene_log", "table", {"schema_name": None})


def test_a_version_table_name_taskdb_refuses_does_not_break_the_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKDB_VERSION_TABLE", "queue_health")  # refused by taskdb: a view of its schema
    found = declared_objects("CREATE TABLE taskdb_things (id int)")
    assert found.tables == {"taskdb_things", "taskdb_alembic_version"}
