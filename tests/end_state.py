"""The end state of an upgrade, compared with an uninterrupted run on the same data: every task row, the
schema objects, the log without duplicates, no INVALID index, no NOT VALID constraint."""

from __future__ import annotations

from typing import Any

from tests.helpers import Db


def row_checksums(db: Db, *, besides_task_type: str | None = None) -> dict[str, str]:
    """md5 of every task's whole row (every column but created_at: the seeds make it relative to load time),
    leaving out the rows of ``besides_task_type`` (an application's own writes during the test)."""
    return {
        r["id"]: r["md5"]
        for r in db.rows(
            "SELECT id::text AS id, md5((to_jsonb(t) - 'created_at')::text) AS md5 FROM tasks t "
            "WHERE task_type IS DISTINCT FROM :tt",
            tt=besides_task_type,
        )
    }


def log_entries(db: Db) -> list[tuple[str, ...]]:
    return sorted(
        tuple(r.values())
        for r in db.rows(
            "SELECT task_id::text, action, reason, previous::text, applied::text, actor FROM task_hygiene_log"
        )
    )


def schema_objects(db: Db) -> dict[str, Any]:
    return {
        "revision": db.scalar("SELECT version_num FROM taskdb_alembic_version"),
        "constraints": sorted(
            (r["conname"], r["convalidated"])
            for r in db.rows("SELECT conname, convalidated FROM pg_constraint WHERE conrelid = 'tasks'::regclass")
        ),
        "indexes": sorted(
            (r["name"], r["indisvalid"])
            for r in db.rows(
                "SELECT indexrelid::regclass::text AS name, indisvalid FROM pg_index WHERE indrelid = 'tasks'::regclass"
            )
        ),
        "not_null": sorted(
            r["attname"]
            for r in db.rows(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'tasks'::regclass AND attnotnull AND attnum > 0"
            )
        ),
        # roles and the pg_cron extension are the server's: the first database upgraded on it owns them
        "owned": sorted(
            tuple(r.values())
            for r in db.rows(
                "SELECT kind, name, revision FROM taskdb_owned_objects WHERE kind NOT IN ('role', 'extension')"
            )
        ),
    }


def assert_same_end_state(db: Db, reference: Db, *, besides_task_type: str | None = None) -> None:
    assert row_checksums(db, besides_task_type=besides_task_type) == row_checksums(reference)
    assert db.scalar("SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0
    assert (
        db.rows(
            "SELECT conrelid::regclass::text, conname FROM pg_constraint WHERE NOT convalidated "
            "AND connamespace = 'public'::regnamespace"
        )
        == []
    )
    assert schema_objects(db) == schema_objects(reference)
    duplicates = db.scalar(
        "SELECT count(*) FROM (SELECT 1 FROM task_hygiene_log GROUP BY task_id, action, previous, applied, actor "
        "HAVING count(*) > 1) d"
    )
    assert duplicates == 0
    assert log_entries(db) == log_entries(reference)
    assert db.scalar("SELECT count(*) FROM taskdb_backfill_progress WHERE finished_at IS NULL") == 0
