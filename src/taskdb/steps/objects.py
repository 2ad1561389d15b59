"""Create a revision's SQL objects (tables, functions, views, triggers, grants) from its frozen SQL, in one
short transaction: nothing half-created is ever visible."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection

from taskdb.catalog import ensure_roles
from taskdb.db import execute_script, scalar, transaction
from taskdb.locks import run_locked
from taskdb.offline import literal, text_array
from taskdb.sql import beside, fill, split_statements
from taskdb.steps.base import Facts, Online, Step

if TYPE_CHECKING:
    from taskdb.offline import OfflineScript

SQL = beside(__file__)


def _indented(statements: str, spaces: int) -> str:
    return "\n".join(textwrap.indent(s.strip() + ";", " " * spaces) for s in split_statements(statements))


def grants_if_role(conn: Connection, role: str, grants: str) -> None:
    """Run ``grants`` where ``role`` exists (a group role an earlier revision made where it could)."""
    if scalar(conn, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :role)", {"role": role}):
        execute_script(conn, grants)


def grants_if_role_sql(role: str, grants: str) -> str:
    """A DO block running ``grants`` only where ``role`` exists."""
    return fill(SQL["grants_if_role"], "grants_if_role", role=literal(role), grants=_indented(grants, 8))


@dataclass(frozen=True)
class CreateObjects(Step):
    """The ``names`` sections of the revision's frozen ``sql``, in order, in one transaction.

    ``locked``: the existing relations the sections lock (a view or function on tasks: ACCESS SHARE; CREATE
    TRIGGER: SHARE ROW EXCLUSIVE, as ``lock`` says): then the transaction runs under lock_timeout with
    retries (taskdb.locks.run_locked), and a lock failure names who holds them. ``roles``: group
    roles created where the migration role may (never dropped: roles are cluster-wide), and then the
    ``grants`` section."""

    what: str
    sql: Mapping[str, str]
    names: Sequence[str]
    locked: Sequence[str] = ()
    roles: Sequence[str] = ()
    lock: str = "none on tasks"
    before: str | None = None

    def facts(self) -> Iterator[Facts]:
        yield Facts(self.what, self.lock, False)

    def online(self, run: Online) -> None:
        def create(conn: Connection) -> None:
            for name in self.names:
                execute_script(conn, self.sql[name])
            if self.roles and ensure_roles(conn, tuple(self.roles), run.revision):
                execute_script(conn, self.sql["grants"])

        if self.locked:
            run_locked(run.conn, create, relations=self.locked, label=self.what)
        else:
            with transaction(run.conn):
                create(run.conn)

    def offline(self, sql: OfflineScript) -> None:
        with sql.transaction():
            for name in self.names:
                sql.frozen(self.sql[name])
            if self.roles:
                roles, grants = text_array(self.roles), _indented(self.sql["grants"], 4)
                revision = literal(sql.revision)
                sql.emit(
                    fill(SQL["roles_and_grants"], "roles_and_grants", roles=roles, revision=revision, grants=grants)
                )
