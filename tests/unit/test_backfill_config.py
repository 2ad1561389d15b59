"""The backfill's batch window adapts towards its target duration, within bounds; explicit sizes stay fixed.

The window's rule is a statement of sql/backfill.sql (the offline procedure runs it too): those tests ask the
database, with both drivers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from taskdb.backfill import BackfillConfig
from tests.helpers import DRIVERS, Db, with_driver


@pytest.fixture(params=DRIVERS)
def conn(request: pytest.FixtureRequest, db: Db) -> Iterator[Connection]:
    engine = sa.create_engine(with_driver(db.url, request.param), poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def test_window_moves_towards_the_target_at_most_twofold_per_batch(conn: Connection) -> None:
    config = BackfillConfig(target_batch_ms=50)
    assert config.next_size(conn, 1000, 100) == 500  # twice too slow: halve
    assert config.next_size(conn, 1000, 1000) == 500  # far too slow: still only halve
    assert config.next_size(conn, 1000, 40) == 1250
    assert config.next_size(conn, 1000, 1) == 2000  # far too fast: at most double
    assert config.next_size(conn, 150, 1000) == 100  # never below the minimum
    assert config.next_size(conn, 40_000, 1) == 50_000  # nor above the maximum


def test_fixed_size_without_a_target(conn: Connection) -> None:
    assert BackfillConfig(target_batch_ms=0).next_size(conn, 10, 1) == 10


@pytest.mark.parametrize(
    ("env", "size", "target"),
    [
        ({}, 1000, 50.0),
        ({"TASKDB_BACKFILL_BATCH_SIZE": "10"}, 10, 0.0),  # an explicit size means that size
        ({"TASKDB_BACKFILL_BATCH_SIZE": "10", "TASKDB_BACKFILL_TARGET_MS": "20"}, 10, 20.0),
        ({"TASKDB_BACKFILL_TARGET_MS": "0"}, 1000, 0.0),
    ],
)
def test_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], size: int, target: float) -> None:
    for name in ("TASKDB_BACKFILL_BATCH_SIZE", "TASKDB_BACKFILL_TARGET_MS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = BackfillConfig.from_env()
    assert (config.batch_size, config.target_batch_ms) == (size, target)


def test_negative_target_is_refused() -> None:
    with pytest.raises(ValueError, match="target_batch_ms"):
        BackfillConfig(target_batch_ms=-1).validate()
