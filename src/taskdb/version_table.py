"""taskdb's own Alembic version table: ``taskdb_alembic_version``, in the queue's schema.

The application usually has an Alembic history of its own, in ``alembic_version``: taskdb never reads, changes
or deletes a row of it that is not a taskdb revision. A database that an earlier taskdb stamped in
``alembic_version`` is adopted by the next upgrade (online: :func:`adopt`, under the upgrade lock; offline: the
script's ``adopt_version`` block): taskdb's row moves to its own table, every other row stays where it is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from taskdb.db import rows, scalar

log = logging.getLogger("taskdb.migration")

VERSION_TABLE = "taskdb_alembic_version"
APPLICATION_TABLE = "alembic_version"  # where earlier taskdb versions recorded theirs, beside the app's

# Alembic's own definition of a version table (MigrationContext._version), under taskdb's name.
CREATE_SQL = (
    f"CREATE TABLE {VERSION_TABLE} (version_num varchar(32) NOT NULL, "
    f"CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num))"
)


def revision(conn: Connection) -> str | None:
    """taskdb's revision in this database (None before its first upgrade)."""
    if scalar(conn, f"SELECT to_regclass('{VERSION_TABLE}') IS NULL"):
        return None
    return scalar(conn, f"SELECT version_num FROM {VERSION_TABLE}")


def taskdb_revisions(script: ScriptDirectory) -> list[str]:
    """Every revision id of taskdb's chain: the only rows of ``alembic_version`` taskdb ever looks at."""
    return [r.revision for r in script.walk_revisions()]


def legacy_revisions(conn: Connection, ours: Sequence[str]) -> list[str]:
    """taskdb's revisions still recorded in the application's ``alembic_version`` (only ours are looked at)."""
    if scalar(conn, f"SELECT to_regclass('{APPLICATION_TABLE}') IS NULL"):
        return []
    return [str(r["version_num"]) for r in rows(
        conn, f"SELECT version_num FROM {APPLICATION_TABLE} WHERE version_num = ANY (CAST(:ours AS text[]))",
        {"ours": list(ours)},
    )]


def adopt(conn: Connection, ours: Sequence[str]) -> str | None:
    """Move taskdb's row from ``alembic_version`` to taskdb's own table, in the caller's transaction; the
    revision moved, or None (nothing to adopt: taskdb's table exists, or ``alembic_version`` holds no taskdb
    revision). The application's rows are neither read nor touched."""
    if scalar(conn, f"SELECT to_regclass('{VERSION_TABLE}') IS NOT NULL"):
        return None
    found = legacy_revision(conn, ours)
    if found is None:
        return None
    conn.exec_driver_sql(CREATE_SQL)
    conn.exec_driver_sql(f"INSERT INTO {VERSION_TABLE} (version_num) VALUES ('{found}')")
    conn.exec_driver_sql(f"DELETE FROM {APPLICATION_TABLE} WHERE version_num = '{found}'")
    log.info("taskdb's revision %s moved from %s to %s", found, APPLICATION_TABLE, VERSION_TABLE)
    return found


def legacy_revision(conn: Connection, ours: Sequence[str]) -> str | None:
    """The one taskdb revision in ``alembic_version``; None for none, or for several (a branch merged into the
    app's chain: left for a person to sort out)."""
    found = legacy_revisions(conn, ours)
    return found[0] if len(found) == 1 else None
