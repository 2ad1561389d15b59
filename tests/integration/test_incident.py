"""The incident database, adopted and repaired: what becomes of every row, the log, and the way back."""

from __future__ import annotations

import pytest

from tests.conftest import QUEUE_SCHEMAS
from tests.helpers import DRIVERS, Db, task_id, user_id

# The queue in public, and in schema app beside another application's public.tasks (tests/conftest.py).
pytestmark = QUEUE_SCHEMAS

# name -> (user, run_type, status, legacy_reason) after `upgrade head`; user is a seed user name or None.
EXPECTED = {
    "healthy-1": ("alice", "cloud", "Queued", None),
    "healthy-5": ("alice", "cloud", "In Progress", None),
    "healthy-9": ("dave", "local", "Failed", None),
    "gpu-upper": ("alice", "cloud", "Queued", None),  # 'GPU' means cloud
    "cloud-space": ("bob", "cloud", "Complete", None),  # 'Cloud ' trimmed and lower-cased
    "empty-run-type": ("dave", "local", "Queued", None),  # '' -> params.run_type
    "api-run-type": ("alice", "api", "Failed", "invalid_run_type"),  # kept as it was, flagged
    "from-project": ("bob", "cloud", "Complete", None),
    "from-params": ("alice", "cloud", "Complete", None),  # params.user_id, params.run_type 'gpu'
    "child": ("dave", "cloud", "Complete", None),  # from the orchestrator task
    "grandchild": ("dave", "cloud", "Complete", None),  # from the child, once it is healthy
    "unknown-user-project": ("alice", "local", "Complete", None),  # ghost user replaced by project owner
    "unknown-user-only": (None, "cloud", "Cancelled", "unknown_user"),
    "legacy-in-progress": (None, None, "In Progress", "missing_user_id,missing_run_type"),
    "orphan-ref": (None, None, "Cancelled", "missing_user_id,missing_run_type"),
    "cycle-a": (None, None, "Complete", "missing_user_id,missing_run_type"),
    "cycle-b": (None, None, "Complete", "missing_user_id,missing_run_type"),
}
EXPECTED_TEXT_STATUS = {
    "status-lower": ("bob", "cloud", "Queued", None),
    "status-space": ("bob", "cloud", "Complete", None),
    "status-unknown": ("bob", "cloud", "Cancelled", "invalid_status"),
}
INCIDENT_QUEUED = "id IN (SELECT md5('incident-queued-' || n)::uuid FROM generate_series(1, 51) AS n)"


def outcome(db: Db, name: str) -> tuple[str | None, str | None, str, str | None]:
    users = {user_id(n): n for n in ("alice", "bob", "carol", "dave")}
    row = db.rows(
        "SELECT user_id::text AS user_id, run_type, status::text AS status, legacy_reason FROM tasks WHERE id = :id",
        id=task_id(name),
    )[0]
    return users.get(row["user_id"], row["user_id"]), row["run_type"], row["status"], row["legacy_reason"]


@pytest.mark.parametrize("status_enum", [False, True], ids=["status-text", "status-enum"])
def test_every_incident_row_is_backfilled_or_flagged(db: Db, status_enum: bool) -> None:
    db.load("half_migrated", status_enum=status_enum)
    assert db.scalar(f"SELECT count(*) FROM tasks WHERE status = 'Queued' AND {INCIDENT_QUEUED}") == 51
    db.upgrade()

    expected = EXPECTED | ({} if status_enum else EXPECTED_TEXT_STATUS)
    assert {name: outcome(db, name) for name in expected} == expected

    # The 51 tasks the autoscaler counted: owner and run type unknowable, so flagged and Cancelled,
    # each with a reason; none is Queued any more, none was deleted.
    incident = db.rows(
        f"SELECT status::text AS status, legacy_reason, error_message FROM tasks WHERE {INCIDENT_QUEUED}"
    )
    assert len(incident) == 51
    assert {r["status"] for r in incident} == {"Cancelled"}
    assert {r["legacy_reason"] for r in incident} == {"missing_user_id,missing_run_type"}
    assert all("legacy row flagged missing_user_id,missing_run_type" in r["error_message"] for r in incident)

    # No Queued row is flagged, no healthy row lacks an owner or run type.
    assert db.scalar("SELECT count(*) FROM tasks WHERE legacy_reason IS NOT NULL AND status::text = 'Queued'") == 0
    assert (
        db.scalar(
            "SELECT count(*) FROM tasks "
            "WHERE legacy_reason IS NULL AND (user_id IS NULL OR run_type NOT IN ('cloud','local'))"
        )
        == 0
    )


def test_every_change_is_logged_with_its_previous_value(db: Db) -> None:
    db.load("half_migrated")
    before = db.snapshot()
    db.upgrade()
    after = db.snapshot()
    changed = {
        (tid, col)
        for tid in before
        for col in ("status", "user_id", "run_type", "error_message", "legacy_reason")
        if before[tid].get(col) != after[tid].get(col)
    }
    logged = {
        (r["task_id"], r["key"]): r
        for r in db.rows(
            "SELECT task_id::text AS task_id, k AS key, previous -> k AS previous, applied -> k AS applied, "
            "actor, action "
            "FROM task_hygiene_log, jsonb_object_keys(previous) AS k"
        )
    }
    assert changed == set(logged)  # every change logged, nothing logged that did not change
    for (tid, col), entry in logged.items():
        assert entry["previous"] == before[tid].get(col)
        assert entry["applied"] == after[tid].get(col)
        assert entry["actor"] == "taskdb revision 0003_backfill"
    # the ghost user id is kept in the log, not lost
    ghost = logged[(task_id("unknown-user-only"), "user_id")]
    assert ghost["previous"] == user_id("ghost-2") and ghost["applied"] is None
    # nothing but the five columns ever changes: params, timestamps, application columns are untouched
    for tid in before:
        for col in set(before[tid]) - {"status", "user_id", "run_type", "error_message", "legacy_reason"}:
            assert after[tid][col] == before[tid][col], (tid, col)


@pytest.mark.parametrize("driver", DRIVERS)
def test_second_upgrade_changes_nothing(db: Db, driver: str) -> None:
    db.load("half_migrated")
    db.upgrade(driver=driver)
    rows, log = db.snapshot(), db.scalar("SELECT count(*) FROM task_hygiene_log")
    db.upgrade(driver=driver)
    assert db.snapshot() == rows
    assert db.scalar("SELECT count(*) FROM task_hygiene_log") == log


@pytest.mark.parametrize("status_enum", [False, True], ids=["status-text", "status-enum"])
@pytest.mark.parametrize("driver", DRIVERS)
def test_downgrade_to_base_restores_the_original_rows(db: Db, driver: str, status_enum: bool) -> None:
    db.load("half_migrated", status_enum=status_enum)
    original, original_columns = db.snapshot(), db.columns()
    db.upgrade(driver=driver)
    assert "legacy_reason" in db.columns()
    db.downgrade("base", driver=driver)
    assert db.columns() == original_columns  # adopted user_id/run_type kept; legacy_reason gone
    assert db.snapshot() == original
    for table in ("users", "projects", "tasks"):  # adopted tables are never dropped
        assert db.scalar(f"SELECT to_regclass('{table}') IS NOT NULL")
    assert db.scalar("SELECT to_regclass('task_hygiene_log')") is None
    # and the way up again works
    db.upgrade(driver=driver)
    assert outcome(db, "gpu-upper") == EXPECTED["gpu-upper"]


def test_downgrade_keeps_a_value_the_application_changed_since(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade()
    # the application completes a backfilled task and re-queues it elsewhere: its own write wins
    db.execute("UPDATE tasks SET status = 'Complete' WHERE id = :id", id=task_id("status-lower"))
    db.downgrade("base")
    assert db.scalar("SELECT status FROM tasks WHERE id = :id", id=task_id("status-lower")) == "Complete"
    assert db.scalar("SELECT run_type FROM tasks WHERE id = :id", id=task_id("gpu-upper")) == "GPU"
