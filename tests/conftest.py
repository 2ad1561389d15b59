"""Fixtures. The servers and fresh databases come from the taskdb pytest plugin (``pg_server``,
``pg_url``, ``pg_target_server``), which starts a real PostgreSQL with pg_cron preloaded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.helpers import Db, with_driver


@pytest.fixture
def db(pg_url: str) -> Iterator[Db]:
    """A fresh, empty database on the session's server, dropped after the test."""
    engine = sa.create_engine(with_driver(pg_url, "psycopg"), poolclass=sa.NullPool)
    try:
        yield Db(pg_url, engine)
    finally:
        engine.dispose()


@pytest.fixture
def other_db(pg_server, pg_database_factory) -> Iterator[Db]:
    """A second fresh database on the same server (for side-by-side comparisons)."""
    url = pg_server.url(pg_database_factory())
    engine = sa.create_engine(with_driver(url, "psycopg"), poolclass=sa.NullPool)
    try:
        yield Db(url, engine)
    finally:
        engine.dispose()
