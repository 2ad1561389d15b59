"""Count and claim can never disagree (hypothesis, real PostgreSQL), and concurrent claimers neither
claim a task twice nor push a user over the concurrency limit."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import Db

AGES = ["1 hour", "30 hours", "200 hours"]  # fresh, stale, past the 7-day TTL
task = st.fixed_dictionaries(
    {
        "user": st.integers(0, 3),
        "run_type": st.sampled_from(["cloud", "local"]),
        "status": st.sampled_from(["Queued", "Queued", "Queued", "In Progress", "Complete", "Failed"]),
        "age": st.sampled_from(AGES),
        "depends_on": st.none() | st.integers(0, 30),
        "flagged": st.sampled_from([False, False, False, True]),
    }
)
queue = st.fixed_dictionaries(
    {
        "credits": st.lists(st.sampled_from([0, 10]), min_size=4, max_size=4),
        "limit": st.integers(1, 4),
        "tasks": st.lists(task, max_size=30),
    }
)


@pytest.fixture
def hygiene_db(db: Db) -> Db:
    db.upgrade()
    return db


def load_queue(db: Db, q: dict) -> list[str]:
    users = [str(uuid.uuid4()) for _ in q["credits"]]
    ids = [str(uuid.uuid4()) for _ in q["tasks"]]
    with db.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM tasks"))
        conn.execute(sa.text("DELETE FROM users"))
        conn.execute(sa.text("UPDATE task_hygiene_settings SET user_concurrency_limit = :l"), {"l": q["limit"]})
        for user, credits in zip(users, q["credits"], strict=True):
            conn.execute(sa.text("INSERT INTO users (id, credits) VALUES (:id, :c)"), {"id": user, "c": credits})
        for tid, t in zip(ids, q["tasks"], strict=True):
            status = "Cancelled" if t["flagged"] and t["status"] == "Queued" else t["status"]
            dep = ids[t["depends_on"]] if t["depends_on"] is not None and t["depends_on"] < len(ids) else None
            conn.execute(
                sa.text(
                    "INSERT INTO tasks (id, task_type, status, created_at, user_id, run_type, legacy_reason, "
                    "dependant_on) "
                    "VALUES (:id, 't', :status, now() - CAST(:age AS interval), :user, :run_type, :reason, :dep)"
                ),
                {
                    "id": tid,
                    "status": status,
                    "age": t["age"],
                    "user": users[t["user"]],
                    "run_type": t["run_type"],
                    "reason": "missing_run_type" if t["flagged"] else None,
                    "dep": dep,
                },
            )
    return users


def in_progress_per_user(db: Db) -> Counter[str]:
    return Counter(
        {
            r["user_id"]: r["n"]
            for r in db.rows("SELECT user_id::text, count(*) AS n FROM tasks WHERE status = 'In Progress' GROUP BY 1")
        }
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=queue, run_type=st.sampled_from(["gpu", "cloud", "local"]))
def test_claiming_until_none_is_left_claims_exactly_the_count(hygiene_db: Db, q: dict, run_type: str) -> None:
    db = hygiene_db
    load_queue(db, q)
    before = in_progress_per_user(db)
    expected = db.scalar("SELECT claimable_task_count(:r)", r=run_type)
    claimed = 0
    with db.engine.connect() as conn:
        while conn.execute(sa.text("SELECT id FROM claim_next_task('w', :r)"), {"r": run_type}).first():
            conn.commit()
            claimed += 1
        conn.commit()
    assert claimed == expected
    after = in_progress_per_user(db)
    for user, n in after.items():
        assert n <= max(q["limit"], before[user]), "a claim never pushes a user over the limit"


def test_parallel_claimers_never_claim_twice_nor_exceed_the_limit(hygiene_db: Db) -> None:
    db = hygiene_db
    tasks = [
        {"user": n % 4, "run_type": "cloud", "status": "Queued", "age": "1 hour", "depends_on": None, "flagged": False}
        for n in range(120)
    ]
    load_queue(db, {"credits": [10, 10, 10, 10], "limit": 3, "tasks": tasks})
    expected = db.scalar("SELECT claimable_task_count('gpu')")
    assert expected == 12
    claimed: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def claimer(worker: str) -> None:
        engine = sa.create_engine(db.engine.url, poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                while True:
                    claim = sa.text("SELECT id::text FROM claim_next_task(:w, 'gpu')")
                    row = conn.execute(claim, {"w": worker}).first()
                    conn.commit()
                    if row is None:
                        return
                    with lock:
                        claimed.append(row[0])
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=claimer, args=(f"w{n}",)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert len(claimed) == len(set(claimed)) == expected
    assert max(in_progress_per_user(db).values()) == 3
