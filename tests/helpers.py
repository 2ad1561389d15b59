"""Helpers shared by the tests: a throwaway database with a few ways to look inside it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from taskdb import api, seeds

DRIVERS = ("psycopg", "pg8000")


def _chain() -> list[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(api.alembic_config(None))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


# taskdb's revisions, base to head (tests that mean "the head" use HEAD, never a revision's name)
REVISIONS = _chain()
HEAD = REVISIONS[-1]

# The constraints on tasks that DESIGN.md makes public.
CONSTRAINTS = frozenset(
    {
        "tasks_status_valid",
        "tasks_attempts_nonnegative",
        "tasks_legacy_reason_known",
        "tasks_healthy_has_owner_and_run_type",
        "tasks_flagged_not_queued",
        "tasks_user_id_fkey",
    }
)


def with_driver(url: str, driver: str) -> str:
    return make_url(url).set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)


def load_incident(url: str) -> None:
    """The incident (half-migrated schema and its rows) into the database at ``url``, owned by whoever
    ``url`` logs in as."""
    engine = sa.create_engine(with_driver(url, "psycopg"), poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            seeds.load_schema(conn, "half_migrated")
            seeds.load_incident(conn)
    finally:
        engine.dispose()


@dataclass
class Db:
    """A throwaway database: its plain URL and a few helpers to look inside."""

    url: str
    engine: sa.Engine

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), params)

    def load(self, shape: str = "half_migrated", *, status_enum: bool = False, incident: bool = True) -> None:
        with self.engine.begin() as conn:
            seeds.load_schema(conn, shape, status_enum=status_enum)
            if incident and shape == "half_migrated":
                seeds.load_incident(conn)
            elif incident:
                seeds.load_legacy_rows(conn)

    def upgrade(self, revision: str = "head", driver: str = "psycopg") -> None:
        api.upgrade(with_driver(self.url, driver), revision)

    def downgrade(self, revision: str = "base", driver: str = "psycopg") -> None:
        api.downgrade(with_driver(self.url, driver), revision)

    def snapshot(self, table: str = "tasks") -> dict[str, dict[str, Any]]:
        """Every row of ``table`` as text, keyed by id: compares whole rows, every column."""
        return {r["id"]: r["row"] for r in self.rows(f"SELECT id::text AS id, to_jsonb(t) AS row FROM {table} t")}

    def columns(self, table: str = "tasks") -> list[str]:
        return [
            r["column_name"]
            for r in self.rows(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = :t AND table_schema = current_schema() ORDER BY ordinal_position",
                t=table,
            )
        ]


def schema_db(url: str, schema: str) -> Db:
    """The database at ``url`` seen through a search_path of ``schema`` (created if missing); dispose its engine."""
    engine = sa.create_engine(
        with_driver(url, "psycopg"), poolclass=sa.NullPool, connect_args={"options": f"-c search_path={schema}"}
    )
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    return Db(url, engine)


def task_id(name: str) -> str:
    """The id the seeds give the row named ``name`` (md5('task-<name>')::uuid)."""
    import hashlib
    import uuid

    return str(uuid.UUID(hashlib.md5(f"task-{name}".encode()).hexdigest()))


def user_id(name: str) -> str:
    import hashlib
    import uuid

    return str(uuid.UUID(hashlib.md5(f"user-{name}".encode()).hexdigest()))
