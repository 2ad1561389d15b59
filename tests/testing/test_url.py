"""The url backend, against a local server standing in for "an existing server"."""

from __future__ import annotations

import psycopg
import pytest

from taskdb.testing import start_postgres
from taskdb.testing.base import PostgresServer, PostgresUnavailable
from taskdb.testing.url import UrlServer
from tests.testing import checks
from tests.testing.conftest import local_majors

pytestmark = pytest.mark.skipif(not local_majors(), reason="needs a local PostgreSQL to point the URL at")


def test_url_backend_works_like_the_others(local_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKDB_PG_URL", local_server.url())
    with start_postgres(backend="url") as server:
        assert isinstance(server, UrlServer)
        assert (server.backend, server.major, server.port) == ("url", local_server.major, local_server.port)
        assert server.password == local_server.password
        checks.assert_all(server)
    assert not local_server.stopped, "stopping a url server never stops the server it points at"


def test_stop_drops_only_what_it_created(local_server: PostgresServer) -> None:
    keep = local_server.create_database()
    server = UrlServer(url=local_server.url(driver="pg8000"))
    made = [server.create_database(), server.create_database()]
    server.drop_database(made[0])
    assert server.created_databases == [made[1]]
    server.stop()
    server.stop()
    with local_server.connect() as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
    assert keep in names and not set(made) & names
    local_server.drop_database(keep)


def test_url_keeps_query_and_changes_only_database_and_driver(local_server: PostgresServer) -> None:
    server = UrlServer(url=local_server.url() + "?sslmode=disable&application_name=probe")
    try:
        url = server.url("other", "pg8000")
        assert url.startswith("postgresql+pg8000://") and "/other?" in url and "sslmode=disable" in url
        with psycopg.connect(server.url()) as conn:
            assert conn.execute("SHOW application_name").fetchone() == ("probe",)
    finally:
        server.stop()


def test_errors_are_clear_and_never_show_the_password(
    local_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TASKDB_PG_URL", raising=False)
    with pytest.raises(PostgresUnavailable, match=r"needs TASKDB_PG_URL.*To fix this, either"):
        start_postgres(backend="url")
    wrong = local_server.url().replace("@127.0.0.1", "x@127.0.0.1")
    with pytest.raises(PostgresUnavailable) as info:
        UrlServer(url=wrong)
    assert "password authentication failed" in str(info.value)
    assert local_server.password not in str(info.value) and "%40" not in str(info.value)
    with pytest.raises(PostgresUnavailable, match=f"not {local_server.major + 1}"):
        UrlServer(url=local_server.url(), major=local_server.major + 1)
    with pytest.raises(PostgresUnavailable, match="cannot apply server settings"):
        UrlServer(url=local_server.url(), settings={"work_mem": "8MB"})
