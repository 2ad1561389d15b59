"""What the revisions share: an AUTOCOMMIT connection for online-safe steps, offline twins, actors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING

from alembic import op
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from taskdb.failpoints import failpoint
from taskdb.sql import beside

if TYPE_CHECKING:
    from taskdb.offline import OfflineScript

log = logging.getLogger("taskdb.migration")


def require_taskdb_environment(revision: str) -> None:
    """Refuse to run a revision in any Alembic environment but taskdb's own.

    taskdb's env.py passes ``taskdb_env=True`` to every ``context.configure`` (it lands in the context's opts).
    An application that put taskdb's versions directory into its own ``version_locations`` would run the
    revisions without the upgrade lock, the schema pin and the standby refusal, and record them in its own
    version table; the check comes before anything is committed, so such a run changes nothing.
    """
    if not op.get_context().opts.get("taskdb_env"):
        raise CommandError(
            f"taskdb revision {revision} runs only through `taskdb upgrade` (or alembic with taskdb's own "
            "alembic.ini), not in another Alembic environment: remove taskdb's versions directory from "
            "version_locations"
        )


def actor(revision: str) -> str:
    """How task_hygiene_log names a revision as the author of a change."""
    return f"taskdb revision {revision}"


@contextmanager
def online_step(revision: str) -> Iterator[Connection]:
    """Commit the migration's transaction and hand out the connection in AUTOCOMMIT mode.

    Online-safe steps open their own short transactions (one per DDL statement or batch) instead of
    holding locks in one long migration transaction.
    """
    require_taskdb_environment(revision)
    context = op.get_context()
    if context.as_sql:
        # every revision checks offline_mode() first and writes its SQL through offline_step instead
        raise CommandError(f"revision {revision}: this step has no offline SQL; run it online (taskdb upgrade)")
    with context.autocommit_block():
        conn = op.get_bind()
        # pg8000 may already have opened a transaction (Alembic reads the isolation level before
        # switching to AUTOCOMMIT); end it so that every statement below really commits on its own.
        conn.exec_driver_sql("COMMIT")
        yield conn
    failpoint("migration.before_stamp")  # the step is done; taskdb_alembic_version does not say so yet


def offline_mode() -> bool:
    """True when Alembic writes SQL instead of running it (``--sql``, ``taskdb sql``)."""
    return bool(op.get_context().as_sql)


@contextmanager
def offline_step(revision: str) -> Iterator[OfflineScript]:
    """The offline twin of :func:`online_step`: an :class:`~taskdb.offline.OfflineScript` that writes the
    revision's step as static SQL which adapts to the database when it runs (see ``taskdb.offline``)."""
    from taskdb.offline import OfflineScript

    require_taskdb_environment(revision)
    script = OfflineScript(revision, op.get_context())
    try:
        yield script
    finally:
        script.close()


def revision_sql(revision_file: str) -> dict[str, str]:
    """The frozen SQL that sits beside a revision file (same name, ``.sql``), split on ``-- name --``."""
    return beside(revision_file)


def revision_module(revision: str) -> ModuleType:
    """Another revision of the chain, loaded by Alembic (0003's downgrade undoes what an interrupted 0004 left)."""
    from alembic import context

    found = context.script.get_revision(revision)
    if found is None:
        raise CommandError(f"revision {revision} is not in taskdb's chain")
    return found.module
