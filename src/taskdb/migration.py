"""What the revisions share: an AUTOCOMMIT connection for online-safe steps, the upgrade lock, actors."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import op
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from taskdb.db import scalar
from taskdb.errors import UpgradeInProgress
from taskdb.failpoints import failpoint
from taskdb.sql import parse_queries

if TYPE_CHECKING:
    from taskdb.offline import OfflineScript

log = logging.getLogger("taskdb.migration")

# Session advisory lock key held for a whole `upgrade`/`downgrade` run: two pods of one deploy never
# interleave their steps. (The number is 'taskdb' in ASCII, so it is recognisable in pg_locks.)
UPGRADE_LOCK_KEY = 0x7461736B6462
UPGRADE_LOCK_WAIT_S = 60.0


def actor(revision: str) -> str:
    """How task_hygiene_log names a revision as the author of a change."""
    return f"taskdb revision {revision}"


@contextmanager
def online_step(revision: str) -> Iterator[Connection]:
    """Commit the migration's transaction and hand out the connection in AUTOCOMMIT mode.

    Online-safe steps open their own short transactions (one per DDL statement or batch) instead of
    holding locks in one long migration transaction.
    """
    context = op.get_context()
    if context.as_sql:
        raise CommandError(
            f"revision {revision}: offline SQL (--sql) is for upgrades; downgrade online (taskdb downgrade)"
        )
    with context.autocommit_block():
        conn = op.get_bind()
        # pg8000 may already have opened a transaction (Alembic reads the isolation level before
        # switching to AUTOCOMMIT); end it so that every statement below really commits on its own.
        conn.exec_driver_sql("COMMIT")
        yield conn
    failpoint("migration.before_stamp")  # the step is done; alembic_version does not say so yet


def offline_mode() -> bool:
    """True when Alembic writes SQL instead of running it (``--sql``, ``taskdb sql``)."""
    return bool(op.get_context().as_sql)


@contextmanager
def offline_step(revision: str) -> Iterator[OfflineScript]:
    """The offline twin of :func:`online_step`: an :class:`~taskdb.offline.OfflineScript` that writes the
    revision's step as static SQL which adapts to the database when it runs (see ``taskdb.offline``)."""
    from taskdb.offline import OfflineScript

    script = OfflineScript(revision, op.get_context())
    try:
        yield script
    finally:
        script.close()


def revision_sql(revision_file: str) -> dict[str, str]:
    """The frozen SQL that sits beside a revision file (same name, ``.sql``), split on ``-- name --``."""
    return parse_queries(Path(revision_file).with_suffix(".sql").read_text(encoding="utf-8"))


def acquire_upgrade_lock(conn: Connection, wait_s: float | None = None) -> None:
    """Take the session advisory lock, waiting at most ``wait_s`` (``TASKDB_UPGRADE_LOCK_WAIT_S``)."""
    if wait_s is None:
        wait_s = float(os.environ.get("TASKDB_UPGRADE_LOCK_WAIT_S") or UPGRADE_LOCK_WAIT_S)
    deadline = time.monotonic() + wait_s
    announced = False
    while not scalar(conn, "SELECT pg_try_advisory_lock(:k)", {"k": UPGRADE_LOCK_KEY}):
        holder = scalar(
            conn,
            "SELECT string_agg(pid::text, ', ') FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND ((classid::bigint << 32) | objid::bigint) = :k",
            {"k": UPGRADE_LOCK_KEY},
        )
        if time.monotonic() >= deadline:
            raise UpgradeInProgress(
                f"another taskdb upgrade is running on this database (pid {holder}); waited {wait_s:.0f}s. "
                "Let it finish, then rerun: the upgrade is idempotent."
            )
        if not announced:
            log.warning("another taskdb upgrade is running (pid %s): waiting up to %.0fs", holder, wait_s)
            announced = True
        time.sleep(0.5)


def release_upgrade_lock(conn: Connection) -> None:
    scalar(conn, "SELECT pg_advisory_unlock(:k)", {"k": UPGRADE_LOCK_KEY})
