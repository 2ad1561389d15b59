"""Checks every backend must pass; the backend tests call them on their own servers."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from taskdb.testing.base import PostgresServer

URL_HOSTILE = set("@:/%#?&=")


def assert_password_hidden(server: PostgresServer) -> None:
    """The password is URL-hostile, percent-encoded in URLs and never in repr()."""
    password = server.password
    assert set(password) >= URL_HOSTILE, "the password must exercise percent-encoding"
    assert password not in repr(server)
    assert password not in str(server)
    url = server.url("db")
    assert password not in url  # encoded: '@', ':', '/', '%', '#', '?' never appear raw
    assert url.startswith(f"postgresql://{server.user}:") and url.endswith(f"@127.0.0.1:{server.port}/db")
    assert server.url("db", "psycopg").startswith("postgresql+psycopg://")
    assert server.url("db", "pg8000").startswith("postgresql+pg8000://")


def assert_drivers_connect(server: PostgresServer, dbname: str = "postgres") -> None:
    """The password in the URL works for psycopg (plain URL and SQLAlchemy) and pg8000."""
    with psycopg.connect(server.url(dbname)) as conn:  # the URL as users paste it, read by libpq
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (server.user, dbname)
    for driver in ("psycopg", "pg8000"):
        engine = sa.create_engine(server.url(dbname, driver), poolclass=NullPool)
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT current_database()")).scalar() == dbname
        finally:
            engine.dispose()


def assert_password_required(server: PostgresServer) -> None:
    """TCP connections really check the password (a trust rule would make the URL tests meaningless)."""
    kwargs = server.connect_kwargs()
    kwargs["password"] = server.password + "x"
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(**kwargs).close()
    assert "password authentication failed" in str(info.value)
    assert server.password not in str(info.value)


def assert_pg_cron_ready(server: PostgresServer) -> str:
    """pg_cron is preloaded, its extension installs in the cron database only; returns its version."""
    assert server.cron_preloaded
    assert server.setting("listen_addresses") == "127.0.0.1"
    cron_db = server.cron_database
    with server.connect(cron_db) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'").fetchone()
        assert row is not None
        jobid = conn.execute("SELECT cron.schedule('taskdb-testing-probe', '0 3 * * *', 'SELECT 1')").fetchone()
        assert jobid is not None
        assert conn.execute("SELECT cron.unschedule('taskdb-testing-probe')").fetchone() == (True,)
    other = server.create_database()
    try:
        with server.connect(other) as conn, pytest.raises(psycopg.Error, match="can only create extension"):
            conn.execute("CREATE EXTENSION pg_cron")
    finally:
        server.drop_database(other)
    return str(row[0])


def assert_databases(server: PostgresServer) -> None:
    """create (random name, explicit name, from a template) and drop (with a session still open)."""
    name = server.create_database()
    assert name.startswith("taskdb_test_")
    with server.connect(name) as conn:
        conn.execute("CREATE TABLE marker (id int)")
        conn.execute("INSERT INTO marker VALUES (42)")
    copy = server.create_database("taskdb_test_copy_" + name[-8:], template=name)
    with server.connect(copy) as conn:
        assert conn.execute("SELECT id FROM marker").fetchone() == (42,)
    blocker = server.connect(copy)  # an open session must not stop the drop
    try:
        server.drop_database(copy)
    finally:
        blocker.close()
    server.drop_database(name)
    server.drop_database(name)  # already gone: no error
    with server.connect() as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname IN (%s, %s)", (name, copy)).fetchone()
    assert left == (0,)


def assert_all(server: PostgresServer) -> str:
    assert_password_hidden(server)
    assert_drivers_connect(server)
    assert_password_required(server)
    assert_databases(server)
    return assert_pg_cron_ready(server)
