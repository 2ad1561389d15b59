"""Which ``tasks`` table taskdb works on, decided before anything changes, and the connection pinned to it.

The table is ``tasks`` in the schema named by ``TASKDB_SCHEMA`` (or Alembic's ``-x schema=``), else where
the connection's search_path resolves it (where 0001 would create it when there is none). Every object taskdb
creates lives beside it: the connection is pinned to that schema (taskdb.db.pin_schema), so each transaction
taskdb opens sets ``search_path`` to it, and the functions pin their own ``search_path`` to it. Refused,
before any change, with the schemas named:

- ``tasks`` in more than one schema and no schema configured: which one is the queue is not taskdb's guess
  (it would otherwise repair another application's ``public.tasks``);
- no schema configured, no ``tasks`` where the search_path looks, but one elsewhere (0001 would otherwise
  create an empty queue beside the real one);
- a configured schema that does not exist, or a search_path that names no existing schema.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from taskdb.db import APPLICATION_NAME, autocommit_connection, pin_schema, quote_ident, rows
from taskdb.errors import TargetRefused

SCHEMA_ENV = "TASKDB_SCHEMA"

# One read: the schemas holding a tasks table, the one taskdb would work in (configured, else where the
# search_path resolves tasks, else where it would create it), whether it exists, and the table's size there.
TARGET_SQL = """
WITH target AS (
    SELECT coalesce(CAST(:configured AS text),
                    (SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE c.oid = to_regclass('tasks')),
                    current_schema()::text) AS schema
)
SELECT ARRAY(SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relname = 'tasks' AND c.relkind IN ('r', 'p')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_temp\\_%'
             ORDER BY 1) AS schemas,
       target.schema,
       EXISTS (SELECT FROM pg_namespace WHERE nspname = target.schema) AS schema_exists,
       here.oid IS NOT NULL AS present,
       here.reltuples::bigint AS estimate,
       current_setting('search_path') AS search_path
FROM target
LEFT JOIN (pg_class here JOIN pg_namespace hn ON hn.oid = here.relnamespace)
       ON here.relname = 'tasks' AND here.relkind IN ('r', 'p') AND hn.nspname = target.schema
"""


@dataclass(frozen=True)
class TasksTable:
    schema: str
    exists: bool
    estimated_rows: int | None  # pg_class.reltuples: free to read, exact enough to say what size this is

    @property
    def qualified(self) -> str:
        """For people: ``app.tasks``, quoted only where the name needs it (``"My Schema".tasks``)."""
        plain = re.fullmatch(r"[a-z_][a-z0-9_]*", self.schema)
        return f"{self.schema if plain else quote_ident(self.schema)}.tasks"

    def describe(self) -> str:
        if not self.exists:
            return f"{self.qualified} (absent: 0001_baseline creates it)"
        rows_text = "row count not estimated yet" if self.estimated_rows is None else f"~{self.estimated_rows:,} rows"
        return f"{self.qualified} ({rows_text})"


def configured_schema(override: str | None = None) -> str | None:
    """The schema the user named: ``-x schema=`` (``override``), else ``TASKDB_SCHEMA``; None for neither."""
    return override or os.environ.get(SCHEMA_ENV) or None


def resolve(conn: Connection, command: str, configured: str | None = None) -> TasksTable:
    """The table ``command`` would work on; raises :class:`TargetRefused` (exit 2) where it must not guess."""
    configured = configured_schema(configured)
    if configured is not None and ("$" in configured or "\x00" in configured):
        raise TargetRefused(
            f"{command}: {SCHEMA_ENV}={configured!r}: taskdb cannot work in a schema whose name holds $ or NUL "
            "(it writes the name into function bodies); nothing was changed."
        )
    found = rows(conn, TARGET_SQL, {"configured": configured})[0]
    schemas, schema = list(found["schemas"]), found["schema"]
    if configured is None and len(schemas) > 1:
        raise TargetRefused(
            f"{command}: a tasks table exists in several schemas ({', '.join(schemas)}); nothing was changed. "
            f"Name the queue's schema with {SCHEMA_ENV} (or -x schema=)."
        )
    if schema is None:
        raise TargetRefused(
            f"{command}: the search_path ({found['search_path']}) names no schema that exists, so there is no "
            f"tasks table to work on; nothing was changed. Set {SCHEMA_ENV} or fix the role's search_path."
        )
    if configured is None and schemas and not found["present"]:
        raise TargetRefused(
            f"{command}: the search_path ({found['search_path']}) finds no tasks table, but {', '.join(schemas)} "
            f"has one; nothing was changed. Name the queue's schema with {SCHEMA_ENV} (or -x schema=); "
            f"{SCHEMA_ENV}={schema} creates a new queue in {schema}."
        )
    if not found["schema_exists"]:
        raise TargetRefused(
            f"{command}: schema {schema} ({SCHEMA_ENV}) does not exist; nothing was changed. "
            f"Create it (CREATE SCHEMA {quote_ident(schema)}) or name the schema that holds tasks."
        )
    estimate = found["estimate"]
    return TasksTable(schema, bool(found["present"]), None if estimate is None or estimate < 0 else int(estimate))


def pin(conn: Connection, command: str, configured: str | None = None) -> TasksTable:
    """Resolve the table and pin ``conn`` to its schema."""
    table = resolve(conn, command, configured)
    pin_schema(conn, table.schema)
    return table


@contextmanager
def connection(url: str, command: str = "taskdb", application_name: str = APPLICATION_NAME) -> Iterator[Connection]:
    """An AUTOCOMMIT connection pinned to the queue's schema: what every command works on."""
    with autocommit_connection(url, application_name) as conn:
        pin(conn, command)
        yield conn
