"""Every revision goes up, down and up again to the same schema (river's MigrateUpThenDownToZeroAndBackUp),
and the head schema is the one src/taskdb/sql/schema.sql declares (procrastinate's test_migration)."""

from __future__ import annotations

import difflib
import json

import pytest

from taskdb.db import execute_script, pin_schema
from taskdb.sql import load
from tests.conftest import QUEUE_SCHEMAS
from tests.helpers import Db
from tests.helpers_catalog import catalog

REVISIONS = ["0001_baseline", "0002_columns", "0003_backfill", "0004_constraints", "0005_hygiene", "0006_cron"]


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


def _diff(a: object, b: object) -> str:
    dump = lambda x: json.dumps(x, indent=1, sort_keys=True, default=str).splitlines()  # noqa: E731
    return "\n".join(difflib.unified_diff(dump(a), dump(b), "migrations", "schema.sql", lineterm=""))


@pytest.mark.parametrize("driver", ["psycopg", "pg8000"])
def test_migrations_produce_the_declared_schema(db: Db, other_db: Db, driver: str) -> None:
    db.upgrade(driver=driver)
    with other_db.engine.begin() as conn:
        pin_schema(conn, "public")  # schema.sql names taskdb's schema (@schema@) where it pins search_path
        execute_script(conn, load("schema"))
    migrated, declared = catalog(db), catalog(other_db)
    assert migrated == declared, _diff(migrated, declared)
