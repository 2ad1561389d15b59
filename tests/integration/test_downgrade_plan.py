"""`taskdb downgrade REV --plan`: read-only, and what it says the downgrade restores, drops and keeps is what the
downgrade then really does (through the installed command, both drivers)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.acceptance.test_cli import taskdb
from tests.helpers import DRIVERS, REVISIONS, Db, with_driver

COLUMNS = ("status", "user_id", "run_type", "error_message", "legacy_reason", "updated_at")


def plan_json(db: Db, revision: str, driver: str = "psycopg", url: str | None = None) -> dict[str, Any]:
    result = taskdb("downgrade", revision, "--plan", "--json", "--url", url or with_driver(db.url, driver))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def changed(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Per column, how many tasks the downgrade changed; and how many tasks it changed at all."""
    out = {c: sum(1 for k, row in before.items() if str(row[c]) != str(after[k][c])) for c in COLUMNS}
    out["tasks"] = sum(1 for k, row in before.items() if any(str(row[c]) != str(after[k][c]) for c in COLUMNS))
    return out


def restores_of(plan: dict[str, Any]) -> dict[str, int]:
    totals = dict.fromkeys((*COLUMNS, "tasks", "kept"), 0)
    for step in plan["revisions"]:
        for restore in step["restores"]:
            for name in totals:
                totals[name] += restore[name]
    return totals


def test_downgrade_plan_predicts_what_each_downgrade_restores_and_drops(db: Db) -> None:
    db.load("legacy")  # 0001 adopts the tables, 0002 adds the columns: every kind of drop is in the chain
    db.upgrade()
    restored = 0
    for target in ("0004_constraints", "0002_columns"):
        plan = plan_json(db, target)
        assert plan["current_revision"] == db.scalar("SELECT version_num FROM taskdb_alembic_version")
        before = db.snapshot()
        db.downgrade(target)
        after = db.snapshot()
        assert set(before) == set(after)  # nothing deleted
        predicted, real = restores_of(plan), changed(before, after)
        restored += predicted["tasks"]
        assert {k: predicted[k] for k in (*COLUMNS, "tasks")} == real, plan
        assert predicted["kept"] == 0
        dropped = {(d["kind"], d["name"]) for step in plan["revisions"] for d in step["drops"]}
        indexes = {r["indexname"] for r in db.rows("SELECT indexname FROM pg_indexes WHERE tablename = 'tasks'")}
        for kind, name in dropped:
            if kind == "index":
                assert name.split(".", 1)[1] not in indexes
    assert restored > 0
    plan = plan_json(db, "base")
    dropped = {(d["kind"], d["name"]) for step in plan["revisions"] for d in step["drops"]}
    assert {("column", "tasks.user_id"), ("column", "tasks.run_type"), ("column", "tasks.legacy_reason")} <= dropped
    db.downgrade("base")
    assert not {"user_id", "run_type", "legacy_reason"} & set(db.columns())


def test_the_applications_later_change_is_kept_and_said(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade()
    backfill = "actor = 'taskdb revision 0003_backfill'"
    # since the upgrade, the application moved a backfilled task to local, and finished a flagged one by hand
    moved = db.scalar(
        f'SELECT task_id FROM task_hygiene_log WHERE {backfill} AND applied = \'{{"run_type": '
        '"cloud"}\' ORDER BY task_id LIMIT 1'
    )
    finished = db.scalar(
        f"SELECT task_id FROM task_hygiene_log WHERE {backfill} AND applied ->> 'status' = "
        "'Cancelled' ORDER BY task_id LIMIT 1"
    )
    assert moved and finished
    db.execute("UPDATE tasks SET run_type = 'local' WHERE id = :id", id=moved)
    db.execute("UPDATE tasks SET status = 'Complete' WHERE id = :id", id=finished)
    status_changes = db.scalar(
        f"SELECT count(DISTINCT task_id) FROM task_hygiene_log WHERE {backfill} AND applied ? 'status'"
    )
    plan = plan_json(db, "0002_columns")
    [restore] = [r for s in plan["revisions"] for r in s["restores"] if r["actor"] == "taskdb revision 0003_backfill"]
    assert restore["kept"] == 1  # the moved task: its only logged change was overwritten
    assert restore["status"] == status_changes - 1  # the finished task keeps its status (the rest is restored)
    text = taskdb("downgrade", "0002_columns", "--plan", "--url", db.url)
    assert text.returncode == 0, text.stderr
    assert "keeps 1 tasks as they are: the application changed them since" in text.stdout
    db.downgrade("0002_columns")
    assert db.scalar("SELECT run_type FROM tasks WHERE id = :id", id=moved) == "local"
    assert db.scalar("SELECT status::text FROM tasks WHERE id = :id", id=finished) == "Complete"


@pytest.mark.parametrize("driver", DRIVERS)
def test_downgrade_plan_changes_nothing_and_runs_on_a_read_only_connection(db: Db, driver: str) -> None:
    db.load("half_migrated")
    db.upgrade()
    # a pg_cron-like actor's cancellation: no revision restores it, and downgrade base drops the log with it
    db.execute(
        "INSERT INTO task_hygiene_log (task_id, action, reason, previous, applied, actor) "
        "SELECT id, 'cancel', 'stale', '{}', '{}', 'pg_cron job taskdb_cancel_stale_queued' FROM tasks LIMIT 2"
    )

    def state() -> Any:
        return (
            db.snapshot(),
            db.rows("SELECT * FROM task_hygiene_log ORDER BY id"),
            db.rows("SELECT * FROM taskdb_owned_objects ORDER BY seq"),
            db.scalar("SELECT version_num FROM taskdb_alembic_version"),
        )

    before = state()
    # every new session of this database is read-only (as on a read-only endpoint)
    db.execute(f'ALTER DATABASE "{db.scalar("SELECT current_database()")}" SET default_transaction_read_only = on')
    read_only = with_driver(db.url, driver)
    plan = plan_json(db, "base", url=read_only)
    assert state() == before
    assert [s["revision"] for s in plan["revisions"]] == list(reversed(REVISIONS))
    assert plan["log_dropped"] is True
    assert plan["log_not_restored"] == [{"actor": "pg_cron job taskdb_cancel_stale_queued", "log_rows": 2}]
    text = taskdb("downgrade", "base", "--plan", "--url", read_only)
    assert text.returncode == 0, text.stderr
    assert "pg_cron job taskdb_cancel_stale_queued: 2 log rows" in text.stdout
    assert "the log is dropped with them" in text.stdout
    assert "True" not in text.stdout and "None" not in text.stdout
    # a real downgrade on that connection is refused before any change
    refused = taskdb("downgrade", "base", "--url", read_only)
    assert refused.returncode == 2, refused.stderr
    assert state() == before


def test_a_target_above_the_current_revision_is_one_line_exit_2(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade("0004_constraints")
    result = taskdb("downgrade", "0006_cron", "--plan", "--url", db.url)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("taskdb:")]
    assert len(lines) == 1 and "cannot plan a downgrade from 0004_constraints to '0006_cron'" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    unknown = taskdb("downgrade", "nope", "--plan", "--url", db.url)
    assert unknown.returncode == 2 and "'nope'" in unknown.stderr and "Traceback" not in unknown.stderr


def test_a_task_two_revisions_changed_is_counted_as_the_downgrade_will_find_it(db: Db) -> None:
    """0003 spells 'queued' as Queued, then 0005's cleanup cancels it (older than queued_ttl): a downgrade from
    head first un-cancels it (0005), then 0003 finds the Queued it wrote and puts 'queued' back. The plan of the
    whole downgrade must count it for both, not as kept by 0003."""
    db.load("half_migrated")
    db.execute(
        "INSERT INTO tasks (id, task_type, params, status, attempts, created_at, user_id, run_type) "
        "VALUES (md5('stale-misspelt')::uuid, 'travel_segment', '{}', 'queued', 0, now() - interval '10 days', "
        "md5('user-alice')::uuid, 'cloud')"
    )
    db.upgrade()
    stale = db.scalar("SELECT md5('stale-misspelt')::uuid::text")
    assert db.scalar("SELECT status::text FROM tasks WHERE id = :id", id=stale) == "Cancelled"
    plan = plan_json(db, "0002_columns")
    by_actor = {r["actor"]: r for s in plan["revisions"] for r in s["restores"]}
    cleanup, backfill = by_actor["taskdb revision 0005_hygiene"], by_actor["taskdb revision 0003_backfill"]
    assert cleanup["status"] >= 1
    assert backfill["kept"] == 0
    assert backfill["status"] == db.scalar(
        "SELECT count(DISTINCT task_id) FROM task_hygiene_log "
        "WHERE actor = 'taskdb revision 0003_backfill' AND applied ? 'status'"
    )
    db.downgrade("0002_columns")
    assert db.scalar("SELECT status::text FROM tasks WHERE id = :id", id=stale) == "queued"
