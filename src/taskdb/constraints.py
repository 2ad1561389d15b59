"""Constraints added the online-safe way, and repaired when a previous run stopped halfway.

- CHECK and FOREIGN KEY: ``ADD ... NOT VALID`` (a brief lock, no scan) then ``VALIDATE CONSTRAINT`` in
  its own transaction (SHARE UPDATE EXCLUSIVE: writers keep writing while it scans).
- NOT NULL: ``CHECK (col IS NOT NULL) NOT VALID`` -> VALIDATE -> ``SET NOT NULL`` (PostgreSQL 12+ uses
  the validated CHECK instead of scanning) -> drop the CHECK.
- Indexes: ``CREATE INDEX CONCURRENTLY``; an INVALID leftover of a failed build is dropped and rebuilt.

Every step first looks at the catalog, so rerunning after any failure finishes the work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from taskdb.catalog import columns, constraint, forget_owned, index_is_valid, owned, record_owned
from taskdb.db import execute_script, in_schema, rows, scalar, schema_qualified, sqlstate, transaction
from taskdb.errors import ConstraintViolated
from taskdb.failpoints import failpoint
from taskdb.locks import LockPolicy, run_locked

log = logging.getLogger("taskdb.constraints")

CHECK_VIOLATION = "23514"
FOREIGN_KEY_VIOLATION = "23503"


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


def _comment(kind: str, name: str, table: str, why: str) -> str:
    return f"COMMENT ON {kind} {name} ON {table} IS '{why.replace(chr(39), chr(39) * 2)}'"


def _add_sql(item: Check | ForeignKey) -> str:
    if isinstance(item, Check):
        return f"ALTER TABLE {item.table} ADD CONSTRAINT {item.name} CHECK ({item.expression}) NOT VALID"
    return (
        f"ALTER TABLE {item.table} ADD CONSTRAINT {item.name} FOREIGN KEY ({item.column}) "
        f"REFERENCES {item.references} NOT VALID"
    )


def add_not_valid(
    conn: Connection, item: Check | ForeignKey, revision: str | None, policy: LockPolicy | None = None
) -> None:
    """Add the constraint without scanning: from now on every insert and update must satisfy it.

    A constraint of that name that already exists is adopted as it is (and not recorded as taskdb's).
    """
    if constraint(conn, item.table, item.name) is not None:
        return
    relations = [item.table]
    if isinstance(item, ForeignKey):
        relations.append(item.references.split("(")[0])

    def add(c: Connection) -> None:
        c.execute(sa.text(_add_sql(item)))
        c.execute(sa.text(_comment("CONSTRAINT", item.name, item.table, item.why)))
        if revision:
            record_owned(c, "constraint", f"{item.table}.{item.name}", revision)

    run_locked(conn, add, relations=relations, policy=policy, label=_add_sql(item))
    failpoint("constraints.after_add_not_valid")


def validate(conn: Connection, table: str, name: str, policy: LockPolicy | None = None) -> None:
    """VALIDATE a NOT VALID constraint; a violation becomes an error naming up to 10 offending rows."""
    state = constraint(conn, table, name)
    if state is None or state.validated:
        return
    try:
        run_locked(conn, [f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}"], relations=[table], policy=policy)
    except DBAPIError as exc:
        if sqlstate(exc) not in (CHECK_VIOLATION, FOREIGN_KEY_VIOLATION) or state.kind != "c":
            raise
        expression = state.definition.removeprefix("CHECK ").removesuffix(" NOT VALID")
        bad = rows(conn, f"SELECT id::text AS id FROM {table} WHERE NOT {expression} LIMIT 10")
        raise ConstraintViolated(table, name, [r["id"] for r in bad]) from None
    failpoint("constraints.after_validate")


def not_null_check_name(table: str, column: str) -> str:
    return f"{table}_{column}_not_null"


def ensure_not_null(conn: Connection, table: str, column: str, revision: str, policy: LockPolicy | None = None) -> bool:
    """Make ``column`` NOT NULL without a long ACCESS EXCLUSIVE scan. False (and a warning) if rows are NULL.

    A column that some rows leave NULL keeps accepting NULL: taskdb invents no values.
    """
    if columns(conn, table)[column].not_null:
        return True
    check = Check(not_null_check_name(table, column), table, f"{column} IS NOT NULL", "temporary: taskdb NOT NULL")
    add_not_valid(conn, check, None, policy)
    try:
        validate(conn, table, check.name, policy)
    except ConstraintViolated:
        nulls = scalar(conn, f"SELECT count(*) FROM {table} WHERE {column} IS NULL")
        run_locked(conn, [f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {check.name}"], relations=[table])
        log.warning("%s.%s stays nullable: %s rows hold NULL and taskdb invents no values", table, column, nulls)
        return False

    def set_not_null(c: Connection) -> None:
        c.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL")
        c.exec_driver_sql(f"ALTER TABLE {table} DROP CONSTRAINT {check.name}")
        record_owned(c, "not_null", f"{table}.{column}", revision)
        failpoint("constraints.set_not_null_uncommitted")  # the transaction is still open

    failpoint("constraints.before_set_not_null")
    run_locked(conn, set_not_null, relations=[table], policy=policy)
    return True


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


def ensure_index(conn: Connection, index: Index, revision: str, policy: LockPolicy | None = None) -> None:
    """CREATE INDEX CONCURRENTLY, first dropping an INVALID leftover of an interrupted build."""
    if index_is_valid(conn, index.name) is True and f"{index.table}.{index.name}" not in owned(conn, "index"):
        return  # an index of that name the database already had: adopted as it is
    if index_is_valid(conn, index.name) is False:
        log.warning("index %s is INVALID (an earlier build was interrupted): rebuilding it", index.name)
        run_locked(
            conn,
            [f"DROP INDEX CONCURRENTLY IF EXISTS {schema_qualified(conn, index.name)}"],
            relations=[index.table],
            policy=policy,
            in_transaction=False,
        )
    if index_is_valid(conn, index.name) is None:
        # recorded as taskdb's before the build, so that an INVALID leftover is known to be ours
        with transaction(conn):
            record_owned(conn, "index", f"{index.table}.{index.name}", revision)
        failpoint("index.before_create_concurrently")
        # outside a transaction: the statement names the schema itself (db.schema_qualified)
        create = (
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index.name} ON {schema_qualified(conn, index.table)} "
            f"{in_schema(conn, index.definition)}"
        )

        def build(c: Connection) -> None:
            # A lock_timeout in one of the build's waits (for writers, for old snapshots) leaves the index
            # INVALID: the retry must rebuild it, not skip it because of IF NOT EXISTS.
            if index_is_valid(c, index.name) is False:
                c.execute(sa.text(f"DROP INDEX CONCURRENTLY IF EXISTS {schema_qualified(c, index.name)}"))
            c.execute(sa.text(create))

        run_locked(conn, build, relations=[index.table], policy=policy, in_transaction=False, label=create)
        failpoint("index.after_create_concurrently")
    run_locked(
        conn,
        [f"COMMENT ON INDEX {index.name} IS '{index.why}'"],
        relations=[index.table],
        policy=policy,
    )


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
DROP TRIGGER IF EXISTS {guard.trigger} ON {guard.table};
CREATE TRIGGER {guard.trigger} BEFORE INSERT OR UPDATE ON {guard.table}
    FOR EACH ROW EXECUTE FUNCTION {guard.function}();
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
