"""What taskdb's constraints and indexes are (Check, ForeignKey, Index, the WriteGuard and its SQL), and how a
downgrade or a repair drops what taskdb added, never what it adopted (taskdb_owned_objects).

Adding them is a step: taskdb.steps.constraints (NOT VALID, VALIDATE, NOT NULL through a validated CHECK, the
write guard) and taskdb.steps.indexes (CONCURRENTLY).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from taskdb.catalog import columns, constraint, forget_owned, owned
from taskdb.db import execute_script, scalar, schema_qualified, transaction
from taskdb.locks import LockPolicy, run_locked

log = logging.getLogger("taskdb.constraints")


@dataclass(frozen=True)
class Check:
    name: str
    table: str
    expression: str
    why: str


@dataclass(frozen=True)
class ForeignKey:
    name: str
    table: str
    column: str
    references: str  # "users(id)"
    why: str


@dataclass(frozen=True)
class Index:
    name: str
    table: str
    definition: str  # what follows ON table, e.g. "(user_id)"
    why: str


def not_null_check_name(table: str, column: str) -> str:
    return f"{table}_{column}_not_null"


def drop_not_nulls(conn: Connection, revision: str, policy: LockPolicy | None = None) -> None:
    """Undo the NOT NULLs ``revision`` set (never one the table already had)."""
    for qualified in owned(conn, "not_null", revision):
        table, column = qualified.split(".", 1)

        def drop(c: Connection, table: str = table, column: str = column, qualified: str = qualified) -> None:
            if column in columns(c, table):
                c.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN {column} DROP NOT NULL")
            forget_owned(c, "not_null", qualified)

        run_locked(conn, drop, relations=[table], policy=policy)


def drop_constraint(conn: Connection, table: str, name: str, policy: LockPolicy | None = None) -> None:
    if constraint(conn, table, name) is not None:
        run_locked(conn, [f"ALTER TABLE {table} DROP CONSTRAINT {name}"], relations=[table], policy=policy)


def drop_owned(conn: Connection, revision: str, policy: LockPolicy | None = None) -> None:
    """Undo what ``revision`` added: its indexes, NOT NULLs and constraints, never adopted ones."""
    for qualified in owned(conn, "index", revision):
        table, name = qualified.split(".", 1)
        run_locked(
            conn,
            [f"DROP INDEX CONCURRENTLY IF EXISTS {schema_qualified(conn, name)}"],
            relations=[table],
            policy=policy,
            in_transaction=False,
        )
        with transaction(conn):
            forget_owned(conn, "index", qualified)
    drop_not_nulls(conn, revision, policy)
    for qualified in reversed(owned(conn, "constraint", revision)):
        table, name = qualified.split(".", 1)

        def drop(c: Connection, table: str = table, name: str = name, qualified: str = qualified) -> None:
            c.execute(sa.text(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}"))
            forget_owned(c, "constraint", qualified)

        run_locked(conn, drop, relations=[table], policy=policy)


# -- the write guard: no moment in which a legacy row cannot be updated --------------------------------------


@dataclass(frozen=True)
class WriteGuard:
    """A temporary BEFORE INSERT OR UPDATE trigger that enforces ``checks`` on *new* row versions only.

    A NOT VALID CHECK refuses every UPDATE of a row that breaks it (GitLab's incident: legacy rows could no
    longer be updated in production). While the guard stands, a write that would break a check is refused
    exactly as the check will refuse it (SQLSTATE 23514, the check's name), except an UPDATE of a row that
    already broke that check: a legacy row a backfill has not reached yet. So: guard, catch-up backfill (the
    set of rows breaking a check can then only shrink, to none), add the checks NOT VALID, drop the guard.
    """

    trigger: str
    function: str
    table: str
    checks: tuple[Check, ...]


def _broken_check(guard: WriteGuard, row: str) -> str:
    """A query over ``row`` (NEW or OLD) yielding the names of the checks it breaks (a CHECK passes NULL)."""
    rules = ",\n                ".join(f"('{c.name}', ({c.expression}) IS NOT FALSE)" for c in guard.checks)
    return (
        f"SELECT r.name FROM (SELECT {row}.*) AS t\n"
        f"        CROSS JOIN LATERAL (VALUES\n                {rules}) AS r(name, ok)\n"
        "        WHERE NOT r.ok"
    )


def write_guard_sql(guard: WriteGuard) -> str:
    """The guard's function and trigger (idempotent)."""
    return f"""
CREATE OR REPLACE FUNCTION {guard.function}() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, @schema@, pg_temp AS $guard$
DECLARE
    broken text;
BEGIN
    -- taskdb (revision 0004) while it adds its checks: refuse what they will refuse, but never the update
    -- of a row that already breaks the check (a legacy row the catch-up backfill has not reached yet).
    {_broken_check(guard, "NEW")}
        LIMIT 1 INTO broken;
    IF broken IS NULL THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND broken IN ({_broken_check(guard, "OLD")}) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'check_violation', CONSTRAINT = broken, TABLE = TG_TABLE_NAME,
        SCHEMA = TG_TABLE_SCHEMA,
        MESSAGE = 'new row for relation "' || TG_TABLE_NAME || '" violates check constraint "' || broken || '"';
END
$guard$;
COMMENT ON FUNCTION {guard.function}() IS 'temporary: taskdb revision 0004 enforces its checks on new row versions \
while it adds them; dropped when they exist';
-- only where absent (a rerun finds it): DROP TRIGGER would take ACCESS EXCLUSIVE, and queue every reader of
-- {guard.table} behind it; CREATE TRIGGER takes SHARE ROW EXCLUSIVE, and the function above is already replaced
DO $guard_trigger$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = '{guard.table}'::regclass AND tgname = '{guard.trigger}' AND NOT tgisinternal) THEN
        CREATE TRIGGER {guard.trigger} BEFORE INSERT OR UPDATE ON {guard.table}
            FOR EACH ROW EXECUTE FUNCTION {guard.function}();
    END IF;
END
$guard_trigger$;
"""


def drop_write_guard_sql(guard: WriteGuard) -> str:
    return (
        f"DROP TRIGGER IF EXISTS {guard.trigger} ON {guard.table};\n"
        "-- the guard's own trigger function, created moments before by the same revision: no client calls it\n"
        "-- squawk-ignore ban-drop-function\n"
        f"DROP FUNCTION IF EXISTS {guard.function}();\n"
    )


def install_write_guard(conn: Connection, guard: WriteGuard, policy: LockPolicy | None = None) -> None:
    """Create (or replace) the guard: CREATE TRIGGER takes SHARE ROW EXCLUSIVE for a moment."""
    run_locked(
        conn,
        lambda c: execute_script(c, write_guard_sql(guard)),
        relations=[guard.table],
        policy=policy,
        label=f"CREATE TRIGGER {guard.trigger}",
    )


def drop_write_guard(conn: Connection, guard: WriteGuard, policy: LockPolicy | None = None) -> None:
    """Drop the guard (also a leftover of an interrupted run); nothing to do when it is gone."""
    if scalar(conn, "SELECT to_regprocedure(:f) IS NOT NULL", {"f": f"{guard.function}()"}):
        run_locked(
            conn,
            lambda c: execute_script(c, drop_write_guard_sql(guard)),
            relations=[guard.table],
            policy=policy,
            label=f"DROP TRIGGER {guard.trigger}",
        )
