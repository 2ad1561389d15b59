"""The orchestrator lifecycle trigger, and least privilege: who may count, claim and look."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.helpers import Db, task_id, user_id

INSERT = (
    "INSERT INTO tasks (id, task_type, params, status, user_id, run_type, dependant_on) "
    "VALUES (CAST(:id AS uuid), 't', CAST(:params AS jsonb), :status, CAST(:user AS uuid), 'cloud', "
    "CAST(:dep AS uuid))"
)


@pytest.fixture
def upgraded(db: Db) -> Db:
    db.load("half_migrated")
    db.upgrade()
    return db


def add(db: Db, name: str, *, status: str = "Queued", ref: str | None = None, dep: str | None = None) -> None:
    params = f'{{"orchestrator_task_id_ref": "{task_id(ref)}"}}' if ref else "{}"
    db.execute(
        INSERT,
        id=task_id(name),
        params=params,
        status=status,
        user=user_id("alice"),
        dep=task_id(dep) if dep else None,
    )


def status(db: Db, name: str) -> str:
    return db.scalar("SELECT status FROM tasks WHERE id = :id", id=task_id(name))


def test_failing_an_orchestrator_cancels_its_queued_descendants(upgraded: Db) -> None:
    db = upgraded
    add(db, "orch", status="In Progress")
    add(db, "seg-1", ref="orch")
    add(db, "seg-2", ref="orch")
    add(db, "seg-done", ref="orch", status="Complete")
    add(db, "stitch", dep="seg-2")  # depends on a child: cancelled transitively
    add(db, "unrelated")
    db.execute("UPDATE tasks SET status = 'Failed' WHERE id = :id", id=task_id("orch"))
    assert [status(db, n) for n in ("seg-1", "seg-2", "stitch")] == ["Cancelled"] * 3
    assert status(db, "seg-done") == "Complete" and status(db, "unrelated") == "Queued"
    log = db.rows(
        "SELECT task_id::text, reason, actor, previous ->> 'status' AS was FROM task_hygiene_log "
        "WHERE reason LIKE 'trigger tasks_cancel_children%' ORDER BY task_id"
    )
    assert {r["task_id"] for r in log} == {task_id(n) for n in ("seg-1", "seg-2", "stitch")}
    assert all(r["was"] == "Queued" and r["actor"].startswith("role ") for r in log)
    assert all(task_id("orch") in r["reason"] and "Failed" in r["reason"] for r in log)
    message = db.scalar("SELECT error_message FROM tasks WHERE id = :id", id=task_id("seg-1"))
    assert message == f"Cancelled by taskdb: its parent task {task_id('orch')} became Failed"


def test_cycles_and_deep_chains_end(upgraded: Db) -> None:
    db = upgraded
    add(db, "root", status="In Progress")
    add(db, "loop-a", ref="root", dep="loop-b")
    add(db, "loop-b", dep="loop-a")
    # a 3000-deep chain: one recursive query, no trigger recursion
    db.execute(
        "INSERT INTO tasks (id, task_type, status, user_id, run_type, dependant_on) "
        "SELECT md5('chain-' || n)::uuid, 't', 'Queued', :user, 'cloud', "
        "CASE WHEN n = 1 THEN CAST(:root AS uuid) ELSE md5('chain-' || (n - 1))::uuid END "
        "FROM generate_series(1, 3000) n",
        user=user_id("alice"),
        root=task_id("root"),
    )
    db.execute("UPDATE tasks SET status = 'Cancelled' WHERE id = :id", id=task_id("root"))
    assert status(db, "loop-a") == status(db, "loop-b") == "Cancelled"
    assert db.scalar("SELECT count(*) FROM tasks WHERE task_type = 't' AND status = 'Queued'") == 0


def test_a_task_referencing_itself_does_not_loop(upgraded: Db) -> None:
    add(upgraded, "selfish", ref="selfish")
    upgraded.execute("UPDATE tasks SET status = 'Failed' WHERE id = :id", id=task_id("selfish"))
    assert status(upgraded, "selfish") == "Failed"


@pytest.fixture
def login_role(upgraded: Db) -> Iterator:
    """Make login roles on the test server, each a member of the given group roles; drop them after."""
    admin = upgraded.engine
    made: list[str] = []

    def make(*groups: str) -> sa.Engine:
        name = f"app_{uuid.uuid4().hex[:8]}"
        password = "pw-" + uuid.uuid4().hex
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
            for group in groups:
                conn.exec_driver_sql(f"GRANT {group} TO {name}")
        made.append(name)
        url = make_url(upgraded.url).set(drivername="postgresql+psycopg", username=name, password=password)
        return sa.create_engine(url, poolclass=sa.NullPool)

    yield make
    with admin.begin() as conn:
        for name in made:
            conn.exec_driver_sql(f"DROP ROLE {name}")


def run(engine: sa.Engine, sql: str) -> object:
    with engine.begin() as conn:
        return conn.exec_driver_sql(sql).scalar()


def test_the_autoscaler_may_count_and_nothing_else(login_role) -> None:
    autoscaler = login_role("taskdb_autoscaler")
    assert run(autoscaler, "SELECT claimable_task_count('gpu')") == 5
    for forbidden in (
        "SELECT count(*) FROM tasks",
        "SELECT id FROM claim_next_task('w')",
        "SELECT * FROM queue_health",
        "SELECT cancel_stale_queued_tasks()",
    ):
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            run(autoscaler, forbidden)
    autoscaler.dispose()


def test_a_worker_may_claim_without_table_rights(login_role) -> None:
    worker = login_role("taskdb_worker")
    assert run(worker, "SELECT worker_id FROM claim_next_task('gpu-worker-7', 'gpu')") == "gpu-worker-7"
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        run(worker, "UPDATE tasks SET status = 'Complete'")
    worker.dispose()


def test_the_monitor_reads_the_views(login_role) -> None:
    monitor = login_role("taskdb_monitor")
    assert run(monitor, "SELECT claimable_cloud FROM queue_health") == 5
    assert run(monitor, "SELECT count(*) FROM stale_queued_tasks") == 0
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        run(monitor, "SELECT id FROM claim_next_task('w')")
    monitor.dispose()


def test_a_role_without_grants_gets_nothing(login_role) -> None:
    nobody = login_role()
    forbidden_all = ("SELECT claimable_task_count()", "SELECT * FROM queue_health", "SELECT * FROM stale_queued_tasks")
    for forbidden in forbidden_all:
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            run(nobody, forbidden)
    nobody.dispose()


def test_definer_functions_pin_their_search_path(upgraded: Db) -> None:
    unpinned = upgraded.rows(
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'public' AND p.prosecdef "
        "AND NOT coalesce('search_path=pg_catalog, public, pg_temp' = ANY (p.proconfig), false)"
    )
    assert unpinned == []
    assert upgraded.scalar("SELECT count(*) FROM pg_proc WHERE prosecdef AND proname LIKE '%task%'") >= 5


def test_one_statement_ending_many_parents_cancels_each_child_once(upgraded: Db) -> None:
    db = upgraded
    add(db, "p1", status="In Progress")
    add(db, "p2", status="In Progress")
    add(db, "shared", ref="p1", dep="p2")  # reachable from both parents
    add(db, "only-p2", ref="p2")
    db.execute("UPDATE tasks SET status = 'Failed' WHERE id IN (:a, :b)", a=task_id("p1"), b=task_id("p2"))
    assert status(db, "shared") == status(db, "only-p2") == "Cancelled"
    assert (
        db.scalar(
            "SELECT count(*) FROM task_hygiene_log WHERE task_id = :id AND action = 'cancel'", id=task_id("shared")
        )
        == 1
    )
