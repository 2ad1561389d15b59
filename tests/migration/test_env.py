"""What env.py does with ``config.attributes["connection"]`` (the Alembic cookbook's "sharing a connection"):
a Connection is migrated as it is and given back as it came; an Engine whose URL says nothing of where it
connects, or anything else, is refused before any connection is made."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.util import CommandError

from taskdb import api
from taskdb.db import pin_schema, pinned_schema
from tests.helpers import DRIVERS, HEAD, Db, with_driver


@pytest.mark.parametrize("pinned", [None, "public"])
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_connection_handed_in_is_migrated_and_given_back_as_it_came(db: Db, driver: str, pinned: str | None) -> None:
    engine = sa.create_engine(with_driver(db.url, driver), poolclass=sa.NullPool)
    config = api.alembic_config(None, command="upgrade")  # no URL: the connection is the only way in
    try:
        with engine.connect() as conn:
            if pinned is not None:
                pin_schema(conn, pinned)
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            assert pinned_schema(conn) == pinned
            assert not conn.in_transaction()
            assert conn.execute(sa.text("SELECT version_num FROM taskdb_alembic_version")).scalar() == HEAD
    finally:
        engine.dispose()
    assert db.scalar("SELECT count(*) FROM pg_proc WHERE proname = 'claim_next_task'") == 1


def _engine_without_url(url: str) -> sa.Engine:
    return sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url), poolclass=sa.NullPool)


@pytest.mark.parametrize(
    ("handed_in", "message"),
    [
        (lambda url: url, r"must be a SQLAlchemy Connection or Engine, not str"),
        (_engine_without_url, r"is an Engine whose URL names no host or database"),
    ],
    ids=["a string", "an Engine made with creator="],
)
def test_what_is_no_connection_or_usable_engine_is_refused(db: Db, handed_in: Any, message: str) -> None:
    config = api.alembic_config(None, command="upgrade")
    config.attributes["connection"] = handed_in(db.url)
    with pytest.raises(CommandError, match=message):
        command.upgrade(config, "head")
    assert db.scalar("SELECT to_regclass('tasks') IS NULL")
