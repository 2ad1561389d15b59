"""The queue's hygiene objects on the incident database: the count the autoscaler calls, the claim,
the stale view, the cleanup, the health row, the settings."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.helpers import Db, task_id, user_id

INSERT_TASK = (
    "INSERT INTO tasks (id, task_type, status, created_at, user_id, run_type) "
    "VALUES (CAST(:id AS uuid), 't', 'Queued', now() - CAST(:age AS interval), CAST(:user AS uuid), :run_type)"
)


@pytest.fixture
def incident(db: Db) -> Db:
    db.load("half_migrated")
    # a healthy task forgotten for 10 days, and one 2 days old: stale, not yet due for cancelling
    db.execute(INSERT_TASK, id=task_id("forgotten"), age="10 days", user=user_id("bob"), run_type="cloud")
    db.execute(INSERT_TASK, id=task_id("two-days"), age="2 days", user=user_id("bob"), run_type="cloud")
    db.upgrade()
    return db


def test_the_autoscaler_count_no_longer_sees_the_51(incident: Db) -> None:
    # ready cloud work: alice healthy-1, healthy-2, gpu-upper; bob healthy-3, status-lower, two-days.
    # alice has one In Progress (limit 5); carol has no credits; dave's work is local.
    assert incident.scalar("SELECT claimable_task_count('gpu')") == 6
    assert incident.scalar("SELECT claimable_task_count('cloud')") == 6
    assert incident.scalar("SELECT claimable_task_count()") == 6
    assert incident.scalar("SELECT claimable_task_count('local')") == 2
    assert incident.scalar("SELECT claimable_task_count('gpu', true)") == 7  # + alice's In Progress
    legacy = "id IN (SELECT md5('incident-queued-' || n)::uuid FROM generate_series(1, 51) n)"
    assert incident.scalar(f"SELECT count(*) FROM taskdb_ready_tasks WHERE {legacy}") == 0


def test_the_limit_caps_a_users_count(incident: Db) -> None:
    incident.execute("UPDATE task_hygiene_settings SET user_concurrency_limit = 2")
    # alice: min(2 - 1 in progress, 3 ready) = 1; bob: min(2, 3) = 2
    assert incident.scalar("SELECT claimable_task_count('gpu')") == 3
    assert incident.scalar("SELECT claimable_task_count('gpu', true)") == 4  # alice min(2, 1+3), bob 2


@pytest.mark.parametrize("bad", ["GPU-2", "api", "", None])
def test_an_unknown_run_type_is_an_error_naming_the_allowed_ones(incident: Db, bad: str | None) -> None:
    with pytest.raises(sa.exc.DBAPIError, match="expected 'cloud' \\(alias 'gpu'\\) or 'local'"):
        incident.scalar("SELECT claimable_task_count(:r)", r=bad)
    with pytest.raises(sa.exc.DBAPIError, match="unknown run type"):
        incident.scalar("SELECT id FROM claim_next_task('w', :r)", r=bad)


def test_claiming_until_empty_claims_exactly_the_count(incident: Db) -> None:
    expected = incident.scalar("SELECT claimable_task_count('gpu')")
    claimed = []
    with incident.engine.connect() as conn:
        while row := conn.execute(sa.text("SELECT * FROM claim_next_task('gpu-worker-9', 'gpu')")).mappings().first():
            conn.commit()
            claimed.append(row)
    assert len(claimed) == expected
    assert all(r["status"] == "In Progress" and r["worker_id"] == "gpu-worker-9" for r in claimed)
    assert all(r["updated_at"] is not None for r in claimed)
    # oldest first within what is claimable
    assert incident.scalar("SELECT claimable_task_count('gpu')") == 0


def test_stale_view_lists_exactly_the_queued_tasks_older_than_stale_after(incident: Db) -> None:
    expected = {
        r["id"]
        for r in incident.rows(
            "SELECT id::text FROM tasks WHERE status = 'Queued' AND created_at < now() - interval '24 hours'"
        )
    }
    rows = incident.rows("SELECT id::text, age, cancel_due_at - created_at AS due_after FROM stale_queued_tasks")
    assert {r["id"] for r in rows} == expected == {task_id("two-days")}
    assert rows[0]["due_after"].days == 7


def test_upgrade_cancelled_the_forgotten_task_and_logged_it(incident: Db) -> None:
    row = incident.rows("SELECT status, error_message FROM tasks WHERE id = :id", id=task_id("forgotten"))[0]
    assert row["status"] == "Cancelled"
    assert "Cancelled by taskdb cleanup (taskdb revision 0005_hygiene)" in row["error_message"]
    assert "longer than 7 days" in row["error_message"]
    log = incident.rows(
        "SELECT action, actor, previous ->> 'status' AS was FROM task_hygiene_log WHERE task_id = :id",
        id=task_id("forgotten"),
    )
    assert log == [{"action": "cancel", "actor": "taskdb revision 0005_hygiene", "was": "Queued"}]
    overdue = "SELECT count(*) FROM tasks WHERE status = 'Queued' AND created_at < now() - interval '7 days'"
    assert incident.scalar(overdue) == 0
    # ...and downgrading the revision puts it back in the queue
    incident.downgrade("0004_constraints")
    assert incident.scalar("SELECT status FROM tasks WHERE id = :id", id=task_id("forgotten")) == "Queued"


def test_cleanup_in_batches_records_each_run_and_its_actor(incident: Db) -> None:
    for n in range(5):
        incident.execute(
            INSERT_TASK, id=task_id(f"old-{n}"), age=f"{20 + n} days", user=user_id("dave"), run_type="local"
        )
    with incident.engine.connect() as conn:
        conn.execute(sa.text("SET taskdb.actor = 'a test'"))
        assert conn.execute(sa.text("SELECT cancel_stale_queued_tasks(NULL, 2)")).scalar() == 2
        assert conn.execute(sa.text("SELECT cancel_stale_queued_tasks(NULL, 2)")).scalar() == 2
        assert conn.execute(sa.text("SELECT cancel_stale_queued_tasks(NULL, 2)")).scalar() == 1
        assert conn.execute(sa.text("SELECT cancel_stale_queued_tasks(NULL, 2)")).scalar() == 0
        conn.commit()
    runs = incident.rows(
        "SELECT cancelled, finished_at IS NOT NULL AS done FROM task_hygiene_runs WHERE actor = 'a test' ORDER BY id"
    )
    assert [r["cancelled"] for r in runs] == [2, 2, 1, 0] and all(r["done"] for r in runs)
    assert incident.scalar("SELECT count(*) FROM task_hygiene_log WHERE actor = 'a test' AND action = 'cancel'") == 5
    # the oldest went first
    assert incident.scalar("SELECT status FROM tasks WHERE id = :id", id=task_id("old-4")) == "Cancelled"


def test_cleanup_procedure_commits_between_batches(incident: Db) -> None:
    for n in range(3):
        incident.execute(INSERT_TASK, id=task_id(f"old-{n}"), age="30 days", user=user_id("dave"), run_type="local")
    incident.execute("UPDATE task_hygiene_settings SET cleanup_batch_size = 1")
    engine = sa.create_engine(incident.engine.url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with engine.connect() as conn:
        conn.execute(sa.text("CALL taskdb_cancel_stale_queued_all('pg_cron job taskdb_cancel_stale_queued')"))
    engine.dispose()
    assert (
        incident.scalar("SELECT count(*) FROM task_hygiene_runs WHERE actor = 'pg_cron job taskdb_cancel_stale_queued'")
        == 4
    )  # three batches of one, then the empty one that ends the loop


def test_queue_health_is_one_row_of_the_truth(incident: Db) -> None:
    rows = incident.rows("SELECT * FROM queue_health")
    assert len(rows) == 1
    health = rows[0]
    assert health["queued_total"] == incident.scalar("SELECT count(*) FROM tasks WHERE status = 'Queued'")
    assert health["claimable_cloud"] == 6 and health["claimable_local"] == 2
    assert health["stale_count"] == 1
    assert health["flagged_count"] == incident.scalar("SELECT count(*) FROM tasks WHERE legacy_reason IS NOT NULL")
    assert health["cancelled_last_24h"] == 1  # the forgotten task
    assert health["last_cleanup_at"] is not None
    # the job lives in cron.database_name ('postgres' on the test server), recorded in taskdb_cron_jobs
    assert (health["cron_job_installed"], health["cron_job_active"]) == (True, None)


@pytest.mark.parametrize(
    ("assignment", "constraint"),
    [
        ("queued_ttl = interval '0'", "task_hygiene_settings_queued_ttl_positive"),
        ("stale_after = interval '-1 hour'", "task_hygiene_settings_stale_after_positive"),
        ("user_concurrency_limit = 0", "task_hygiene_settings_limit_at_least_one"),
        ("cleanup_batch_size = 0", "task_hygiene_settings_batch_at_least_one"),
    ],
)
def test_settings_refuse_nonsense(incident: Db, assignment: str, constraint: str) -> None:
    with pytest.raises(sa.exc.IntegrityError, match=constraint):
        incident.execute(f"UPDATE task_hygiene_settings SET {assignment}")


def test_settings_hold_exactly_one_row(incident: Db) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        incident.execute("INSERT INTO task_hygiene_settings (singleton) VALUES (false)")
    with pytest.raises(sa.exc.IntegrityError):
        incident.execute("INSERT INTO task_hygiene_settings DEFAULT VALUES")
