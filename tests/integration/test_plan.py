"""`taskdb plan` predicts what `taskdb upgrade` then does, row by row, and writes nothing."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskdb import plan
from taskdb.db import create_engine
from taskdb.migration import actor
from tests.helpers import DRIVERS, HEAD, REVISIONS, Db, task_id, with_driver

STARTS = [
    pytest.param("half_migrated", False, id="incident-text-status"),
    pytest.param("half_migrated", True, id="incident-enum-status"),
    pytest.param("legacy", False, id="legacy-no-user-columns"),
]


def run_plan(db: Db, driver: str = "psycopg", predict_rows: bool = False) -> dict[str, Any]:
    engine = create_engine(with_driver(db.url, driver))
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            result = plan.plan(conn)
            if predict_rows:
                result["per_row"] = {str(r["id"]): r for r in plan.predict_rows(conn)}
            return result
    finally:
        engine.dispose()


def catalog_and_rows(db: Db) -> tuple[Any, ...]:
    return (
        db.rows(
            "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' ORDER BY 1"
        ),
        db.rows(
            "SELECT conname, convalidated FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1"
        ),
        db.snapshot(),
    )


def log_counts(db: Db, revision: str) -> Counter[str]:
    return Counter(
        {
            r["action"]: r["n"]
            for r in db.rows(
                "SELECT action, count(*) AS n FROM task_hygiene_log WHERE actor = :a GROUP BY 1", a=actor(revision)
            )
        }
    )


def reason_count(db: Db, fragment: str) -> int:
    return db.scalar(
        "SELECT count(*) FROM task_hygiene_log WHERE action IN ('backfill', 'flag') AND reason LIKE :f",
        f=f"%{fragment}%",
    )


@pytest.mark.parametrize(("shape", "status_enum"), STARTS)
@pytest.mark.parametrize("driver", DRIVERS)
def test_plan_predicts_the_upgrade(db: Db, shape: str, status_enum: bool, driver: str) -> None:
    db.load(shape, status_enum=status_enum)
    queued_before = {r["id"] for r in db.rows("SELECT id::text AS id FROM tasks WHERE status::text = 'Queued'")}
    before = catalog_and_rows(db)

    predicted = run_plan(db, driver, predict_rows=True)
    assert catalog_and_rows(db) == before, "plan wrote something"
    assert predicted["current_revision"] is None and predicted["head"] == HEAD
    assert [p["revision"] for p in predicted["pending"]] == REVISIONS
    counts = predicted["rows"]
    assert counts["needs_work"] > 0

    db.upgrade(driver=driver)

    # row by row: status, owner, run type and flag as predicted
    actual = {
        r["id"]: r
        for r in db.rows(
            "SELECT id::text AS id, status::text AS status, user_id::text AS user_id, run_type, legacy_reason "
            "FROM tasks"
        )
    }
    assert set(actual) == set(predicted["per_row"])
    mismatches = {
        task: (want, actual[task])
        for task, row in predicted["per_row"].items()
        if (
            want := {
                "status": row["final_status"],
                "user_id": row["user_id"] and str(row["user_id"]),
                "run_type": row["run_type"],
                "legacy_reason": row["legacy_reason"],
            }
        )
        != {k: actual[task][k] for k in want}
    }
    assert not mismatches

    # the counts, against the log the upgrade wrote
    backfill = log_counts(db, "0003_backfill")
    assert counts["backfilled"] == backfill["backfill"]
    assert counts["flagged"] == backfill["flag"]
    assert counts["flagged_cancelled"] == db.scalar(
        "SELECT count(*) FROM task_hygiene_log WHERE action = 'flag' AND applied ->> 'status' = 'Cancelled'"
    )
    assert counts["status_normalised"] == reason_count(db, "status normalised")
    assert counts["user_id_references_no_user"] == reason_count(db, "user_id references no user")
    assert counts["user_from_project_owner"] == reason_count(db, "user_id from the project owner")
    assert counts["user_from_params"] == reason_count(db, "user_id from params.user_id")
    assert counts["user_from_orchestrator"] == reason_count(db, "user_id from the orchestrator task")
    assert counts["run_type_normalised"] == reason_count(db, "run_type normalised")
    assert counts["run_type_from_params"] == reason_count(db, "run_type from params.run_type")
    assert counts["run_type_from_orchestrator"] == reason_count(db, "run_type from the orchestrator task")
    flagged_reasons = Counter(
        reason
        for r in db.rows("SELECT applied ->> 'legacy_reason' AS r FROM task_hygiene_log WHERE action = 'flag'")
        for reason in r["r"].split(",")
    )
    assert counts["flag_reasons"] == dict(flagged_reasons)
    assert counts["cleanup_stale"] + counts["cleanup_children"] == log_counts(db, "0005_hygiene")["cancel"]
    ready = {r["id"] for r in db.rows("SELECT id::text AS id FROM taskdb_ready_tasks")}
    assert counts["ready_cloud"] == db.scalar("SELECT count(*) FROM taskdb_ready_tasks WHERE run_type = 'cloud'")
    assert counts["ready_local"] == db.scalar("SELECT count(*) FROM taskdb_ready_tasks WHERE run_type = 'local'")
    assert counts["queued_now"] == len(queued_before)
    assert counts["queued_no_longer_counted"] == len(queued_before - ready)


def test_plan_of_the_incident_in_numbers(db: Db) -> None:
    """The incident seed, hand-checked: 51 legacy Queued rows flagged and cancelled, none counted any more."""
    db.load("half_migrated")
    counts = run_plan(db)["rows"]
    assert counts["flag_reasons"]["missing_user_id"] >= 51 and counts["flag_reasons"]["missing_run_type"] >= 51
    assert counts["flagged_cancelled"] >= 51
    assert counts["queued_no_longer_counted"] >= 51
    # what stays counted is ready afterwards (with rows whose 'queued' spelling gets normalised on top)
    assert counts["queued_now"] - counts["queued_no_longer_counted"] <= counts["ready_cloud"] + counts["ready_local"]


def test_plan_after_the_upgrade_has_nothing_pending(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade()
    result = run_plan(db, "pg8000")
    assert result["current_revision"] == result["head"] and result["pending"] == []
    assert result["rows"]["needs_work"] == 0 and result["rows"]["flagged"] == 0
    assert result["rows"]["cleanup_stale"] == 0


def test_plan_of_a_partial_upgrade_lists_only_the_rest(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade("0004_constraints")
    db.execute("UPDATE tasks SET created_at = now() - interval '30 days' WHERE id = :id", id=task_id("healthy-1"))
    result = run_plan(db)
    assert [p["revision"] for p in result["pending"]] == REVISIONS[REVISIONS.index("0005_hygiene") :]
    assert result["pending"][0]["steps"], "every revision documents its steps"
    stale = result["rows"]["cleanup_stale"] + result["rows"]["cleanup_children"]
    db.upgrade()
    assert stale == log_counts(db, "0005_hygiene")["cancel"]


def test_plan_names_the_session_that_would_block(db: Db) -> None:
    db.load("half_migrated")
    engine = sa.create_engine(
        with_driver(db.url, "psycopg"), poolclass=sa.NullPool, connect_args={"application_name": "forgotten psql"}
    )
    with engine.connect() as blocker:
        blocker.execute(sa.text("UPDATE tasks SET attempts = attempts WHERE id = :id"), {"id": task_id("healthy-1")})
        pid = blocker.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        result = run_plan(db)
        blocker.rollback()
    engine.dispose()
    sessions = {s["pid"]: s for s in result["blocking_sessions"]}
    assert pid in sessions and sessions[pid]["application_name"] == "forgotten psql"
    assert sessions[pid]["relation"] == "tasks"


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_upgrade_runs_the_steps_the_plan_lists(db: Db, driver: str, caplog: pytest.LogCaptureFixture) -> None:
    """plan lists each revision's STEPS; the upgrade announces each step as it starts it: same steps, same order
    (a legacy table, so that every step has work to do)."""
    db.load("legacy")
    planned = [
        (p["revision"], step["what"], step["lock"]) for p in run_plan(db, driver)["pending"] for step in p["steps"]
    ]
    with caplog.at_level(logging.INFO, logger="taskdb.steps"):
        db.upgrade(driver=driver)
    ran = [
        (r.taskdb_step["revision"], r.taskdb_step["what"], r.taskdb_step["lock"])
        for r in caplog.records
        if hasattr(r, "taskdb_step")
    ]
    assert ran == planned
    assert {revision for revision, _, _ in ran} == set(REVISIONS)
    assert len(ran) > len(REVISIONS) * 2


TEXT = st.one_of(
    st.none(),
    # text holds neither NUL nor a lone surrogate
    st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=12),
    st.sampled_from(
        [
            "queued",
            " Queued ",
            "IN_PROGRESS",
            "in-progress",
            "Canceled",
            "GPU",
            " cloud",
            "Local ",
            "api",
            "",
            "0f3c5a52-4e51-4b6b-9c1a-4a7b4d3c2e10",
            "0F3C5A524E514B6B9C1A4A7B4D3C2E10",
        ]
    ),
)


def test_inline_helpers_equal_the_functions(db: Db) -> None:
    """plan.sql's inline copies of taskdb_canonical_status / _run_type / try_uuid agree on any input."""
    db.load("half_migrated")
    db.upgrade()

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(values=st.lists(TEXT, min_size=1, max_size=20))
    def check(values: list[str | None]) -> None:
        for helper in ("canonical_status", "canonical_run_type", "try_uuid"):
            got = db.rows(
                f"SELECT v, taskdb_{helper}(v)::text AS fn, ({plan.inline_helper(helper, 'v')})::text AS inline "
                "FROM unnest(CAST(:vals AS text[])) AS v",
                vals=values,
            )
            assert [r["fn"] for r in got] == [r["inline"] for r in got], helper

    check()


PARENT, CHILD = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"


@pytest.mark.parametrize("batch_size", ["1", "1000"])
def test_outcome_does_not_depend_on_batch_boundaries(db: Db, batch_size: str, monkeypatch) -> None:
    """A child with an unknown status whose orchestrator task is fixed in the same batch, or in an earlier one,
    ends the same way, and as the plan predicted: it waits for its parent and takes its owner and run type."""
    db.load("half_migrated", incident=False)
    db.execute("INSERT INTO users (id, credits) VALUES ('00000000-0000-4000-8000-0000000000aa', 10)")
    db.execute(
        "INSERT INTO tasks (id, task_type, status, user_id, run_type) "
        "VALUES (CAST(:p AS uuid), 'orchestrate', ' complete ', '00000000-0000-4000-8000-0000000000aa', 'GPU')",
        p=PARENT,
    )
    db.execute(
        "INSERT INTO tasks (id, task_type, status, params) VALUES (CAST(:c AS uuid), 'segment', 'bogus', "
        "jsonb_build_object('orchestrator_task_id_ref', CAST(:p AS text)))",
        c=CHILD,
        p=PARENT,
    )
    predicted = run_plan(db, predict_rows=True)["per_row"][CHILD]
    monkeypatch.setenv("TASKDB_BACKFILL_BATCH_SIZE", batch_size)
    db.upgrade()
    child = db.rows(
        "SELECT status::text AS status, user_id::text AS user_id, run_type, legacy_reason FROM tasks "
        "WHERE id = CAST(:c AS uuid)",
        c=CHILD,
    )[0]
    assert child == {
        "status": "Cancelled",
        "user_id": "00000000-0000-4000-8000-0000000000aa",
        "run_type": "cloud",
        "legacy_reason": "invalid_status",
    }
    assert (
        predicted["final_status"],
        str(predicted["user_id"]),
        predicted["run_type"],
        predicted["legacy_reason"],
    ) == tuple(child.values())
