"""The full chain on every PostgreSQL this machine can start (local, and the container images for
15 and 17 where a Docker engine runs), with both drivers: incident up, down to base, up again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.helpers import CONSTRAINTS, DRIVERS, HEAD, Db, with_driver


@pytest.fixture
def target_db(taskdb_pg_target_server) -> Iterator[Db]:
    name = taskdb_pg_target_server.create_database()
    url = taskdb_pg_target_server.url(name)
    engine = sa.create_engine(with_driver(url, "psycopg"), poolclass=sa.NullPool)
    try:
        yield Db(url, engine)
    finally:
        engine.dispose()
        taskdb_pg_target_server.drop_database(name)


@pytest.mark.parametrize("driver", DRIVERS)
def test_incident_up_down_up(target_db: Db, driver: str, taskdb_pg_target_server) -> None:
    db = target_db
    assert db.scalar("SHOW shared_preload_libraries") == "pg_cron"
    db.load("half_migrated", status_enum=True)
    original = db.snapshot()
    db.upgrade(driver=driver)
    states = {
        r["conname"]: r["convalidated"]
        for r in db.rows("SELECT conname, convalidated FROM pg_constraint WHERE conrelid = 'tasks'::regclass")
    }
    assert all(states[name] for name in CONSTRAINTS)
    assert (
        db.scalar(
            "SELECT count(*) FROM tasks WHERE status = 'Queued' AND (user_id IS NULL OR legacy_reason IS NOT NULL)"
        )
        == 0
    )
    db.downgrade("base", driver=driver)
    assert db.snapshot() == original
    db.upgrade(driver=driver)
    assert db.scalar("SELECT version_num FROM taskdb_alembic_version") == HEAD
    print(f"ran on {taskdb_pg_target_server.backend} PostgreSQL {taskdb_pg_target_server.major} with {driver}")
