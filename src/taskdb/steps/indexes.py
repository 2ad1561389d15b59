"""Indexes built CONCURRENTLY (writers go on), an INVALID leftover of an interrupted build rebuilt."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from taskdb.catalog import (
    index_is_valid,
    owned,
    record_owned,
)
from taskdb.constraints import Index
from taskdb.db import in_schema, schema_qualified, transaction
from taskdb.failpoints import failpoint
from taskdb.locks import LockPolicy, run_locked
from taskdb.offline import literal
from taskdb.sql import SCHEMA_TOKEN, beside, fill
from taskdb.steps.base import SHARE_UPDATE, Facts, Online, Step

if TYPE_CHECKING:
    from taskdb.offline import OfflineScript

log = logging.getLogger("taskdb.constraints")
SQL = beside(__file__)


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
        [f"COMMENT ON INDEX {index.name} IS {literal(index.why)}"],
        relations=[index.table],
        policy=policy,
    )


@dataclass(frozen=True)
class BuildIndex(Step):
    index: Index

    def facts(self) -> Iterator[Facts]:
        yield Facts(
            f"CREATE INDEX CONCURRENTLY {self.index.name} ON {self.index.table} "
            + self.index.definition.replace(f"{SCHEMA_TOKEN}.", ""),
            SHARE_UPDATE.format(table=self.index.table),
            self.index.table == "tasks",  # it reads the whole table it indexes
        )

    def online(self, run: Online) -> None:
        ensure_index(run.conn, self.index, run.revision)

    def offline(self, sql: OfflineScript) -> None:
        index = self.index
        owned_name = literal(f"{index.table}.{index.name}")
        with sql.transaction():  # an INVALID leftover stops the script; recorded as taskdb's before the build
            sql.emit(fill(SQL["index_check"], "index_check", name_literal=literal(index.name)))
            sql.emit(
                fill(
                    SQL["index_record"],
                    "index_record",
                    owned_name=owned_name,
                    revision=literal(sql.revision),
                    name_literal=literal(index.name),
                )
            )
        with sql.outside_transaction():
            sql.emit(f"SET lock_timeout = {sql.lock_timeout}")
            sql.emit("SET statement_timeout = 0")
            sql.emit(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index.name} ON {index.table} {index.definition}")
            sql.emit("RESET statement_timeout")
            sql.emit("RESET lock_timeout")
        with sql.transaction():
            comment = literal(index.why)
            sql.emit(
                fill(SQL["index_comment"], "index_comment", owned_name=owned_name, name=index.name, comment=comment)
            )
