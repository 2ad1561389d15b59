"""Fixtures. The servers and fresh databases come from the taskdb pytest plugin (``taskdb_pg_server``,
``taskdb_pg_url``, ``taskdb_pg_target_server``), which starts a real PostgreSQL with pg_cron preloaded.

``db`` is the queue in ``public`` by default. A module or test that parametrizes it indirectly with ``app``
(``QUEUE_SCHEMAS``) gets the queue in schema ``app`` instead, named by ``TASKDB_SCHEMA`` and seen through a
search_path of ``app``, beside another application's ``public.tasks`` (the incident's rows, its own shape),
which must be byte-identical after the test, with nothing else created in ``public``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from taskdb import seeds
from tests.helpers import Db, schema_db, with_driver

QUEUE_SCHEMAS = pytest.mark.parametrize("db", ["public", "app"], indirect=True)


@pytest.fixture
def db(request: pytest.FixtureRequest, taskdb_pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Db]:
    """A fresh, empty database on the session's server, dropped after the test."""
    schema = getattr(request, "param", "public")
    if schema == "public":
        engine = sa.create_engine(with_driver(taskdb_pg_url, "psycopg"), poolclass=sa.NullPool)
        try:
            yield Db(taskdb_pg_url, engine)
        finally:
            engine.dispose()
        return
    public = sa.create_engine(with_driver(taskdb_pg_url, "psycopg"), poolclass=sa.NullPool)
    queue = schema_db(taskdb_pg_url, schema)
    try:
        with public.begin() as conn:
            seeds.load_schema(conn, "half_migrated")  # another application's queue in public
            seeds.load_incident(conn)
        before = public_schema(public)
        monkeypatch.setenv("TASKDB_SCHEMA", schema)
        yield queue
        assert public_schema(public) == before, "taskdb changed or created something in public"
    finally:
        queue.engine.dispose()
        public.dispose()


def public_schema(engine: sa.Engine) -> dict[str, object]:
    """Every row of public.tasks and public.users, and every object and privilege in public."""
    with engine.connect() as conn:

        def all_rows(sql: str) -> list[str]:
            return [str(r[0]) for r in conn.exec_driver_sql(sql)]

        return {
            "tasks": all_rows("SELECT to_jsonb(t)::text FROM public.tasks t ORDER BY id"),
            "users": all_rows("SELECT to_jsonb(u)::text FROM public.users u ORDER BY id"),
            "relations": all_rows(
                "SELECT relname || ':' || relkind::text || ':' || coalesce(relacl::text, '') "
                "FROM pg_class WHERE relnamespace = 'public'::regnamespace ORDER BY 1"
            ),
            "functions": all_rows(
                "SELECT oid::regprocedure::text FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1"
            ),
            "types": all_rows("SELECT typname FROM pg_type WHERE typnamespace = 'public'::regnamespace ORDER BY 1"),
            "triggers": all_rows(
                "SELECT tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1"
            ),
            "acl": all_rows("SELECT coalesce(nspacl::text, '') FROM pg_namespace WHERE nspname = 'public'"),
        }


@pytest.fixture
def other_db(taskdb_pg_server, taskdb_pg_database_factory) -> Iterator[Db]:
    """A second fresh database on the same server (for side-by-side comparisons)."""
    url = taskdb_pg_server.url(taskdb_pg_database_factory())
    engine = sa.create_engine(with_driver(url, "psycopg"), poolclass=sa.NullPool)
    try:
        yield Db(url, engine)
    finally:
        engine.dispose()
