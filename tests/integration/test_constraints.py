"""Each constraint refuses the bad row it exists for; a healthy row and a flagged row are accepted."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.helpers import CONSTRAINTS, Db, user_id

INSERT = (
    "INSERT INTO tasks (task_type, params, status, attempts, user_id, run_type, legacy_reason) "
    "VALUES ('t', '{}', :status, :attempts, CAST(:user_id AS uuid), :run_type, :legacy_reason)"
)
HEALTHY = {"status": "Queued", "attempts": 0, "user_id": user_id("alice"), "run_type": "cloud", "legacy_reason": None}
FLAGGED = {
    "user_id": None,
    "run_type": "api",
    "status": "Cancelled",
    "legacy_reason": "missing_user_id,invalid_run_type",
}


@pytest.fixture
def upgraded(db: Db) -> Db:
    db.load("half_migrated")
    db.upgrade()
    return db


@pytest.mark.parametrize(
    ("bad", "constraint"),
    [
        ({"status": "queued"}, "tasks_status_valid"),
        ({"status": "Pending"}, "tasks_status_valid"),
        ({"attempts": -1}, "tasks_attempts_nonnegative"),
        ({"user_id": None}, "tasks_healthy_has_owner_and_run_type"),
        ({"run_type": None}, "tasks_healthy_has_owner_and_run_type"),
        ({"run_type": "gpu"}, "tasks_healthy_has_owner_and_run_type"),  # the column never stores the alias
        ({"run_type": "GPU"}, "tasks_healthy_has_owner_and_run_type"),
        ({"legacy_reason": "missing_user_id", "user_id": None}, "tasks_flagged_not_queued"),
        ({"legacy_reason": "because", "status": "Failed"}, "tasks_legacy_reason_known"),
        ({"user_id": user_id("nobody")}, "tasks_user_id_fkey"),
    ],
)
def test_constraint_refuses_its_bad_row(upgraded: Db, bad: dict[str, object], constraint: str) -> None:
    with pytest.raises(sa.exc.IntegrityError, match=constraint):
        upgraded.execute(INSERT, **(HEALTHY | bad))


@pytest.mark.parametrize(
    "row",
    [
        HEALTHY,
        HEALTHY | {"run_type": "local", "status": "In Progress", "attempts": 3},
        HEALTHY | FLAGGED,
    ],
    ids=["healthy", "healthy-local", "flagged"],
)
def test_good_rows_are_accepted(upgraded: Db, row: dict[str, object]) -> None:
    upgraded.execute(INSERT, **row)


def test_not_null_columns_refuse_null(upgraded: Db) -> None:
    with pytest.raises(sa.exc.IntegrityError, match="task_type"):
        upgraded.execute(INSERT.replace("VALUES ('t'", "VALUES (NULL"), **HEALTHY)


def test_every_constraint_is_validated_and_named(upgraded: Db) -> None:
    rows = upgraded.rows(
        "SELECT conname, convalidated, obj_description(oid, 'pg_constraint') AS why "
        "FROM pg_constraint WHERE conrelid = 'tasks'::regclass AND contype IN ('c', 'f')"
    )
    assert {r["conname"] for r in rows} >= CONSTRAINTS
    assert all(r["convalidated"] for r in rows)
    assert all(r["why"] for r in rows if r["conname"] in CONSTRAINTS), "each says why in a comment"
    assert upgraded.scalar("SELECT bool_and(indisvalid) FROM pg_index WHERE indrelid = 'tasks'::regclass")
