"""pytest-alembic's standard tests on taskdb's chain, wired up with the plugin's documented fixtures: an
``alembic_config`` naming taskdb's alembic.ini and migrations, and an ``alembic_engine`` on a throwaway database
(an Engine, as pytest-alembic hands env.py one), once per driver.

``test_model_definitions_match_ddl`` is left out: it compares the chain with ``target_metadata`` (autogenerate),
and taskdb ships none; the head schema is checked against src/taskdb/sql/schema.sql instead
(test_up_down.py::test_migrations_produce_the_declared_schema).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.util import CommandError
from pytest_alembic import Config, MigrationContext

# Imported to be collected here: each runs with the alembic_runner built from the two fixtures below.
from pytest_alembic.tests import (  # noqa: F401
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)

from taskdb import api
from taskdb.upgrade_lock import UPGRADE_LOCK_KEY
from tests.helpers import DRIVERS, with_driver


@pytest.fixture
def alembic_config() -> Config:
    ini = api.alembic_ini()
    return Config(config_options={"file": str(ini), "script_location": str(ini.parent / "migrations")})


@pytest.fixture(params=DRIVERS)
def alembic_engine(request: pytest.FixtureRequest, taskdb_pg_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(with_driver(taskdb_pg_url, request.param), poolclass=sa.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def test_an_engine_handed_in_still_waits_for_the_upgrade_lock(
    alembic_runner: MigrationContext, alembic_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Engine path runs under the same guards as a URL: here, another upgrade holding the lock."""
    monkeypatch.setenv("TASKDB_UPGRADE_LOCK_WAIT_S", "0.5")
    with alembic_engine.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": UPGRADE_LOCK_KEY})
        with pytest.raises(CommandError, match="holds the upgrade lock"):
            alembic_runner.migrate_up_to("heads", return_current=False)
    with alembic_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('tasks') IS NULL")).scalar()
