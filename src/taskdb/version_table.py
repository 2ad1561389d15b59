"""taskdb's own Alembic version table: ``taskdb_alembic_version`` unless configured, in the queue's schema.

The name: ``-x version_table=NAME`` (alembic's command line), else ``TASKDB_VERSION_TABLE``, else
``taskdb_version_table`` in alembic.ini's ``[alembic]`` section, else ``taskdb_alembic_version`` (:func:`resolve`).
migrations/env.py resolves it for Alembic; the commands that read it without Alembic (plan, doctor, reset, the
upgrade's report) use :func:`configured`: the environment, then the alembic.ini taskdb runs with.

The application usually has an Alembic history of its own, in ``alembic_version``: taskdb never reads, changes
or deletes a row of it that is not a taskdb revision. A database that an earlier taskdb stamped in
``alembic_version`` is adopted by the next upgrade (online: :func:`adopt`, under the upgrade lock; offline: the
script's ``adopt_version`` block): taskdb's row moves to its own table, every other row stays where it is.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence

from alembic.script import ScriptDirectory
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.engine import Connection

from taskdb import sql
from taskdb.db import rows, scalar
from taskdb.errors import ConfigError

log = logging.getLogger("taskdb.migration")

DEFAULT = "taskdb_alembic_version"
APPLICATION_TABLE = "alembic_version"  # where earlier taskdb versions recorded theirs, beside the app's
ENV_VAR = "TASKDB_VERSION_TABLE"
X_ARGUMENT = "version_table"  # alembic -x version_table=NAME
INI_OPTION = "taskdb_version_table"  # alembic.ini, [alembic] section

# Alembic names the primary key <table>_pkc; PostgreSQL cuts names at 63 bytes, and <63 bytes>_pkc would be cut
# back to the table's own name (a clash), so the name leaves room for the suffix.
MAX_BYTES = 63 - len("_pkc")
_PLAIN = re.compile(r"[a-z_][a-z0-9_]*")


def taken() -> frozenset[str]:
    """The relation names taskdb's head schema declares in the queue's schema (sql/schema.sql): tables, views,
    indexes and constraints (a key's index has its name), so never a version table's name."""
    found = sql.declared_names(sql.load("schema"))
    return frozenset(
        found["table"]
        | found["view"]
        | found["index"]
        | found["constraint"]
        | {n for names in sql.declared_inline_constraints(sql.load("schema")).values() for n in names}
    )


def validate(name: str, source: str) -> str:
    """``name`` if it is a plain lower-case identifier that SQL needs not quote, else :class:`ConfigError`."""
    if name == APPLICATION_TABLE:
        raise ConfigError(
            f"{source} = {APPLICATION_TABLE!r} is refused: that is the application's own Alembic "
            f"table, and taskdb keeps its revision apart from it; leave it unset "
            f"({DEFAULT}) or name another table"
        )
    if name in taken():
        raise ConfigError(
            f"{source} = {name!r} is refused: taskdb's queue already has a relation of that name; "
            f"leave it unset ({DEFAULT}) or name another table"
        )
    quoted = psycopg.dialect().identifier_preparer.quote(name)  # quotes keywords and anything not plain
    if not _PLAIN.fullmatch(name) or len(name.encode()) > MAX_BYTES or quoted != name:
        raise ConfigError(
            f"{source} = {name!r} is not a plain lower-case identifier (a-z, 0-9 and _, not "
            f"starting with a digit, not an SQL keyword, at most {MAX_BYTES} bytes): name the "
            f"table e.g. {DEFAULT}"
        )
    return name


def resolve(x_argument: str | None, environ: Mapping[str, str] | None = None, ini: str | None = None) -> str:
    """The version table's name: ``-x version_table=``, else ``TASKDB_VERSION_TABLE``, else alembic.ini's
    ``taskdb_version_table``, else ``taskdb_alembic_version``; validated (:func:`validate`)."""
    env = os.environ if environ is None else environ
    for source, value in (
        (f"-x {X_ARGUMENT}", x_argument),
        (ENV_VAR, env.get(ENV_VAR)),
        (f"alembic.ini {INI_OPTION}", ini),
    ):
        if value:
            return validate(value, source)
    return DEFAULT


def configured(environ: Mapping[str, str] | None = None) -> str:
    """The name outside Alembic (plan, doctor, reset, the upgrade's report): the environment, then the
    alembic.ini taskdb runs its migrations with (taskdb.api.alembic_ini)."""
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        return resolve(None, env)
    from alembic.config import Config

    from taskdb.api import alembic_ini  # taskdb.api imports this module (through taskdb.report)

    return resolve(None, env, Config(str(alembic_ini())).get_main_option(INI_OPTION))


def create_sql(table: str) -> str:
    """Alembic's own definition of a version table (MigrationContext._version), under ``table``."""
    return f"CREATE TABLE {table} (version_num varchar(32) NOT NULL, CONSTRAINT {table}_pkc PRIMARY KEY (version_num))"


def revision(conn: Connection, table: str) -> str | None:
    """taskdb's revision in this database, from its version table ``table`` (None before its first upgrade)."""
    if scalar(conn, f"SELECT to_regclass('{table}') IS NULL"):
        return None
    return scalar(conn, f"SELECT version_num FROM {table}")


def taskdb_revisions(script: ScriptDirectory) -> list[str]:
    """Every revision id of taskdb's chain: the only rows of ``alembic_version`` taskdb ever looks at."""
    return [r.revision for r in script.walk_revisions()]


def legacy_revisions(conn: Connection, ours: Sequence[str]) -> list[str]:
    """taskdb's revisions still recorded in the application's ``alembic_version`` (only ours are looked at)."""
    if scalar(conn, f"SELECT to_regclass('{APPLICATION_TABLE}') IS NULL"):
        return []
    return [
        str(r["version_num"])
        for r in rows(
            conn,
            f"SELECT version_num FROM {APPLICATION_TABLE} WHERE version_num = ANY (CAST(:ours AS text[]))",
            {"ours": list(ours)},
        )
    ]


def adopt(conn: Connection, ours: Sequence[str], table: str) -> str | None:
    """Move taskdb's row from ``alembic_version`` to taskdb's own table ``table``, in the caller's transaction;
    the revision moved, or None (nothing to adopt: ``table`` exists, or ``alembic_version`` holds no taskdb
    revision). The application's rows are neither read nor touched."""
    if scalar(conn, f"SELECT to_regclass('{table}') IS NOT NULL"):
        return None
    found = legacy_revision(conn, ours)
    if found is None:
        return None
    conn.exec_driver_sql(create_sql(table))
    conn.exec_driver_sql(f"INSERT INTO {table} (version_num) VALUES ('{found}')")
    conn.exec_driver_sql(f"DELETE FROM {APPLICATION_TABLE} WHERE version_num = '{found}'")
    log.info("taskdb's revision %s moved from %s to %s", found, APPLICATION_TABLE, table)
    return found


def legacy_revision(conn: Connection, ours: Sequence[str]) -> str | None:
    """The one taskdb revision in ``alembic_version``; None for none, or for several (a branch merged into the
    app's chain: left for a person to sort out)."""
    found = legacy_revisions(conn, ours)
    return found[0] if len(found) == 1 else None
