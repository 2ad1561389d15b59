"""Keep taskdb's objects out of your application's Alembic autogenerate (``revision --autogenerate``, ``check``).

In your application's env.py, wherever it calls ``context.configure`` for autogenerate::

    from taskdb import autogenerate as taskdb_autogenerate

    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=taskdb_autogenerate.include_object,
        include_name=taskdb_autogenerate.include_name,
    )

Your own filters go beside them with :func:`combine`: ``include_object=taskdb_autogenerate.combine(
taskdb_autogenerate.include_object, my_include_object)``.

Hidden is what is taskdb's alone (:data:`TASKDB_OBJECTS`): its tables (with their keys, indexes and sequences) and
its version table, and on your ``tasks`` the column ``legacy_reason`` and the indexes and constraints taskdb names.
Your ``users``, ``projects`` and ``tasks`` stay yours, and so does every other column of ``tasks``: ``user_id``
and ``run_type`` included (your application writes them; taskdb only adds them where they are missing). A change
you make to any of them is proposed as usual. An object with one of taskdb's names is hidden on both sides, found
in the database or declared in your model: taskdb creates and changes it, never your migrations. (Alembic matches a
foreign key by what it references, not by name, so one your model declares on ``tasks.user_id`` meets taskdb's.)

The names have one source: the head schema taskdb declares (``taskdb/sql/schema.sql``, which
tests/migration/test_up_down.py checks against the revisions), plus taskdb's version table. Names match in any
schema, so this works with ``include_schemas=True`` and a queue in its own schema (``TASKDB_SCHEMA``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from taskdb import sql, version_table
from taskdb.errors import ConfigError

# Created by revision 0001 only where absent, and otherwise adopted as they are: your application's tables.
APPLICATION_TABLES = frozenset({"users", "projects", "tasks"})
# The columns of the application's tables that are taskdb's alone: the application neither writes nor reads
# them. (0002 also adds user_id, run_type and the other columns taskdb uses where they are missing, but those
# are the application's: it writes them, so its model declares them.)
TASKDB_COLUMNS: Mapping[str, frozenset[str]] = {"tasks": frozenset({"legacy_reason"})}

# include_object(object, name, type_, reflected, compare_to) or include_name(name, type_, parent_names)
FilterFunction = Callable[..., bool]


@dataclass(frozen=True)
class TaskdbObjects:
    """The names of the objects taskdb creates, by kind (as PostgreSQL's catalog has them)."""

    tables: frozenset[str]  # taskdb's own tables, its version table included
    views: frozenset[str]
    indexes: frozenset[str]  # taskdb's indexes on the application's tables (its own tables' go with them)
    constraints: frozenset[str]  # taskdb's named constraints on the application's tables, and on its own
    columns: Mapping[str, frozenset[str]] = field(default_factory=dict)  # {application table: taskdb's columns}
    triggers: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()

    def covers(self, type_: str, name: str | None, table: str | None = None) -> bool:
        """Whether the object ``name`` of Alembic's kind ``type_`` (on ``table``) is taskdb's.

        Anything on one of taskdb's tables is taskdb's; on the application's tables only the names taskdb
        gave (an unnamed object, a foreign key your model declares without a name, is never taskdb's).
        """
        if name is None:
            return False
        if type_ == "table":
            return name in self.tables or name in self.views
        if table is not None and table in self.tables:
            return True
        if type_ == "column":
            return table is not None and name in self.columns.get(table, frozenset())
        if type_ == "index":
            return name in self.indexes
        if type_ in {
            "unique_constraint",
            "foreign_key_constraint",
            "primary_key_constraint",
            "check_constraint",
            "constraint",
        }:
            return name in self.constraints or name in self.indexes  # PostgreSQL: a unique index is both
        return False


def _version_tables() -> frozenset[str]:
    """taskdb's version table under its default name and the one configured here (TASKDB_VERSION_TABLE, taskdb's
    alembic.ini); a configured name taskdb refuses is no table of taskdb's, and must not break the app's env.py."""
    try:
        return frozenset({version_table.DEFAULT, version_table.configured()})
    except ConfigError:
        return frozenset({version_table.DEFAULT})


def declared_objects(schema_sql: str) -> TaskdbObjects:
    """taskdb's objects as the head schema declares them (``schema.sql``), the application's tables left out."""
    found = sql.declared_names(schema_sql)
    for table, names in sql.declared_inline_constraints(schema_sql).items():
        if table not in APPLICATION_TABLES:
            found["constraint"] |= names
    return TaskdbObjects(
        # the version table under its default name and the one configured here (TASKDB_VERSION_TABLE, alembic.ini)
        tables=frozenset(found["table"] - APPLICATION_TABLES) | _version_tables(),
        views=frozenset(found["view"]),
        indexes=frozenset(found["index"]),
        constraints=frozenset(found["constraint"]),
        columns=TASKDB_COLUMNS,
        triggers=frozenset(found["trigger"]),
        functions=frozenset(found["function"]),
    )


TASKDB_OBJECTS = declared_objects(sql.load("schema"))


def _table_of(object_: Any) -> str | None:
    """The name of the table a column, index or constraint belongs to (None when it has none)."""
    table = getattr(object_, "table", None)
    return getattr(table, "name", None)


def include_object(object_: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic's ``include_object``: False for taskdb's objects, found in the database or declared in a model."""
    table = None if type_ == "table" else _table_of(object_)
    return not TASKDB_OBJECTS.covers(type_, name, table)


def include_name(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
    """Alembic's ``include_name``: the database's names of taskdb's objects are not even reflected.

    Every schema passes (yours may hold the queue, ``TASKDB_SCHEMA``); use it together with
    :func:`include_object`, which also hides a model's object that bears one of taskdb's names.
    """
    table = parent_names.get("table_name")
    if type_ == "schema":
        return True
    if type_ == "foreign_key_constraint" and table not in TASKDB_OBJECTS.tables:
        # Alembic matches foreign keys by what they reference, not by name: one your model declares (named or
        # not) must meet taskdb's tasks_user_id_fkey; include_object hides it only where your model has none.
        return True
    return not TASKDB_OBJECTS.covers(type_, name, table)


def combine(*filters: FilterFunction) -> FilterFunction:
    """One filter that lets through only what every filter given lets through (``include_object`` or
    ``include_name`` alike): ``combine(taskdb_autogenerate.include_object, my_include_object)``."""

    def all_filters(*args: Any) -> bool:
        return all(f(*args) for f in filters)

    return all_filters
