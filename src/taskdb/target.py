"""Which ``tasks`` table taskdb works on, decided before anything changes.

taskdb's SQL names its tables unqualified, so the table is ``tasks`` as the connection's search_path resolves
it. Today every taskdb object lives in ``public`` (functions pin ``search_path`` to it), so the table must be
``public.tasks``, or absent with ``public`` first in the search_path (0001 then creates it there). Refused,
before any change, with the schemas named:

- ``tasks`` in more than one schema and no ``TASKDB_SCHEMA``: which one is the queue is not taskdb's guess
  (it would otherwise repair another application's ``public.tasks``);
- ``tasks`` resolving to another schema (a search_path such as ``app``), or ``TASKDB_SCHEMA`` naming one:
  not supported yet, rather than repairing half of it and failing at the functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from taskdb.db import rows
from taskdb.errors import TargetRefused

SUPPORTED_SCHEMA = "public"

# One read: the schemas holding a tasks table, where the search_path resolves it (or would create it), and
# the estimated size of public.tasks.
TARGET_SQL = """
SELECT ARRAY(SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relname = 'tasks' AND c.relkind IN ('r', 'p')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_temp\\_%'
             ORDER BY 1) AS schemas,
       (SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = to_regclass('tasks')) AS resolved,
       current_schema()::text AS first_schema,
       current_setting('search_path') AS search_path,
       (SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass('public.tasks')) AS estimate
"""


@dataclass(frozen=True)
class TasksTable:
    schema: str
    exists: bool
    estimated_rows: int | None  # pg_class.reltuples: free to read, exact enough to say what size this is

    @property
    def qualified(self) -> str:
        return f"{self.schema}.tasks"

    def describe(self) -> str:
        if not self.exists:
            return f"{self.qualified} (absent: 0001_baseline creates it)"
        rows_text = "row count not estimated yet" if self.estimated_rows is None else f"~{self.estimated_rows:,} rows"
        return f"{self.qualified} ({rows_text})"


def resolve(conn: Connection, command: str) -> TasksTable:
    """The table ``command`` would work on; raises :class:`TargetRefused` (exit 2) where it must not guess."""
    configured = os.environ.get("TASKDB_SCHEMA") or None
    found = rows(conn, TARGET_SQL)[0]
    schemas = list(found["schemas"])
    on_path = found["resolved"] or found["first_schema"]  # where unqualified names land: taskdb's SQL uses them
    if configured is None and len(schemas) > 1:
        raise TargetRefused(
            f"{command}: a tasks table exists in several schemas ({', '.join(schemas)}); nothing was changed. "
            f"Name the queue's schema with TASKDB_SCHEMA (taskdb supports {SUPPORTED_SCHEMA} today)."
        )
    if configured not in (None, SUPPORTED_SCHEMA) or on_path != SUPPORTED_SCHEMA:
        where = (f"TASKDB_SCHEMA={configured}" if configured not in (None, SUPPORTED_SCHEMA)
                 else f"the search_path ({found['search_path']}) resolves tasks to {on_path}.tasks")
        raise TargetRefused(
            f"{command}: {where}, and taskdb works only on {SUPPORTED_SCHEMA}.tasks for now; nothing was changed. "
            f"Put {SUPPORTED_SCHEMA} first in the role's search_path if the queue is {SUPPORTED_SCHEMA}.tasks."
        )
    estimate = found["estimate"]
    return TasksTable(SUPPORTED_SCHEMA, found["resolved"] is not None,
                      None if estimate is None or estimate < 0 else int(estimate))
