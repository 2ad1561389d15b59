"""Alembic environment for taskdb.

The database URL comes from ``-x url=...``, else ``TASKDB_DATABASE_URL``, else ``DATABASE_URL``
(never from alembic.ini). A caller may instead hand in a Connection or an Engine via
``config.attributes["connection"]`` (the Alembic cookbook's "sharing a connection" recipe; the tests do, and
pytest-alembic hands in its ``alembic_engine``). Each revision runs in its own transaction
(``transaction_per_migration``): the online-safe steps commit as they go, so a crash leaves finished revisions
recorded. taskdb's revision is recorded in its own version table, in the queue's schema (version_table_name).
"""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

from alembic import context
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from taskdb import offline, target, version_table
from taskdb.config import normalize_url, redact, resolve_url
from taskdb.db import connect, create_engine, pin_schema, pinned_schema, require_primary, unpin_schema
from taskdb.errors import ConfigError, TaskdbError, connection_lost
from taskdb.upgrade_lock import UpgradeLock

config = context.config
log = logging.getLogger("taskdb.migration")
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    from logging.config import fileConfig

    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    """``-x url=``, else TASKDB_DATABASE_URL, else DATABASE_URL (taskdb.config.resolve_url)."""
    return resolve_url(context.get_x_argument(as_dictionary=True).get("url"))


def version_table_name() -> str:
    """taskdb's version table: ``-x version_table=``, else TASKDB_VERSION_TABLE, else ``taskdb_version_table`` in
    alembic.ini's [alembic] section, else taskdb_alembic_version (taskdb.version_table.resolve)."""
    try:
        return version_table.resolve(
            context.get_x_argument(as_dictionary=True).get(version_table.X_ARGUMENT),
            ini=config.get_main_option(version_table.INI_OPTION),
        )
    except ConfigError as exc:
        if getattr(config.cmd_opts, "cmd", None):  # Alembic's own command line prints a CommandError in one line
            raise CommandError(str(exc)) from None
        raise  # taskdb's CLI and API: a usage error, exit 2, whatever the command


def run_migrations_offline() -> None:
    """Emit the SQL of the chain (``alembic upgrade base:head --sql``, ``taskdb sql``) without a database.

    The script takes the upgrade lock, checks the database is where the range starts, and is idempotent,
    version table included (taskdb.offline). It holds no URL, so no password.
    """
    url = context.get_x_argument(as_dictionary=True).get("url") or "postgresql+psycopg://"
    versions = version_table_name()
    context.configure(
        url=url,
        literal_binds=True,
        transaction_per_migration=True,
        dialect_opts={"paramstyle": "named"},
        version_table=versions,
        output_buffer=offline.VersionStatements(config.output_buffer or sys.stdout, versions),
        taskdb_schema=target.configured_schema(schema_argument()),
        taskdb_version_table=versions,
        taskdb_env=True,
    )
    with context.begin_transaction():
        offline.begin_script(
            context.get_context(),
            context.script,
            context.get_starting_revision_argument(),
            context.get_revision_argument(),
            command=command_name(),
        )
        context.run_migrations()
        offline.end_script(context.get_context())


# Alembic commands that run this file only to read the version table (current, check, show current,
# history -i): no upgrade lock, and they work on a standby. (heads, branches, show REV never run this file.)
READ_ONLY_COMMANDS = frozenset({"current", "check", "show", "history"})


def command_name() -> str:
    """``upgrade``, ``downgrade``, ``current``...: from the taskdb API, else from Alembic's own command line."""
    named = config.attributes.get("taskdb_command")
    if named:
        return str(named)
    cmd = getattr(config.cmd_opts, "cmd", None)
    return getattr(cmd[0], "__name__", "migration") if cmd else "migration"


def schema_argument() -> str | None:
    """``-x schema=...``: the queue's schema, as TASKDB_SCHEMA names it (taskdb.target)."""
    return context.get_x_argument(as_dictionary=True).get("schema")


def run_with(connection: Connection, versions: str) -> None:
    """Pin the connection to the queue's schema, refuse a standby, take the upgrade lock on a connection of its
    own (taskdb.upgrade_lock), run the chain.

    The lock is checked after each revision: if its session ended, the run stops before the next one. taskdb's
    revision is recorded in ``versions``, in the queue's schema.
    """
    command = command_name()
    pinned_before = pinned_schema(connection)
    try:
        if command not in READ_ONLY_COMMANDS:
            require_primary(connection, f"taskdb {command}")
        table = target.pin(connection, f"taskdb {command}", schema_argument())
    finally:
        if connection.in_transaction():
            connection.rollback()  # nothing may stay open while we wait for the lock
    try:
        if command in READ_ONLY_COMMANDS:
            context.configure(
                connection=connection,
                transaction_per_migration=True,
                taskdb_env=True,
                version_table=versions,
                version_table_schema=table.schema,
            )
            with context.begin_transaction():
                context.run_migrations()
            if version_table.revision(connection, versions) is None and (
                legacy := version_table.legacy_revisions(connection, version_table.taskdb_revisions(context.script))
            ):
                log.warning(
                    "taskdb's revision %s is still recorded in the application's %s: the next "
                    "`taskdb upgrade` moves it to %s",
                    ", ".join(legacy),
                    version_table.APPLICATION_TABLE,
                    versions,
                )
            if connection.in_transaction():
                connection.rollback()
            return
        log.info("taskdb %s: %s", command, table.describe())
        run_locked_chain(connection, command, table.schema, versions)
    finally:  # a connection handed in goes back as it came
        if pinned_before is None:
            unpin_schema(connection)
        else:
            pin_schema(connection, pinned_before)


def run_locked_chain(connection: Connection, command: str, schema: str, versions: str) -> None:
    with UpgradeLock(connection.engine, command) as lock:
        # an earlier taskdb's row in the application's alembic_version moves to taskdb's own table
        version_table.adopt(connection, version_table.taskdb_revisions(context.script), versions)
        connection.commit()
        context.configure(
            connection=connection,
            transaction_per_migration=True,
            version_table=versions,
            version_table_schema=schema,
            on_version_apply=lambda **_: lock.check(connection),
            taskdb_env=True,  # the revisions refuse to run in any other environment (taskdb.migration)
        )
        try:
            with context.begin_transaction():
                context.run_migrations()
        finally:
            if connection.in_transaction():
                connection.rollback()  # after a failure the transaction is aborted; either way it is done


def run_migrations_online() -> None:
    """Run the migrations on one connection, under the upgrade lock.

    ``config.attributes["connection"]`` may hand in a Connection (used as it is, given back as it came) or an
    Engine (pytest-alembic's ``alembic_engine``): taskdb connects to the Engine's URL as it does to a URL of its
    own (a pooler-safe engine without a pool, taskdb.db.create_engine), so the same guards apply.
    """
    versions = version_table_name()
    shared = config.attributes.get("connection")
    if isinstance(shared, Connection):
        run_with(shared, versions)
        return
    if shared is not None and not isinstance(shared, Engine):
        raise CommandError(
            f"config.attributes['connection'] must be a SQLAlchemy Connection or Engine, not {type(shared).__name__}"
        )
    if isinstance(shared, Engine) and not (shared.url.host or shared.url.database or shared.url.query):
        # an Engine made with creator= or connect_args only: its URL says nothing of where it connects
        raise CommandError(
            "config.attributes['connection'] is an Engine whose URL names no host or database "
            "(made with creator= or connect_args?): taskdb connects to an Engine's URL; hand in a "
            "Connection from it instead"
        )
    try:
        url = database_url() if shared is None else normalize_url(shared.url.render_as_string(hide_password=False))
    except TaskdbError as exc:
        fail(exc)
    run_on_url(url, versions)


def fail(exc: TaskdbError) -> NoReturn:
    """Stop on a taskdb error: the taskdb CLI and API (``raise_taskdb_errors``) get it as itself, so the CLI maps
    its type to an exit code; Alembic's own command line prints it as a CommandError, in one line."""
    if config.attributes.get("raise_taskdb_errors"):
        raise exc
    raise CommandError(str(exc)) from None


def run_on_url(url: str, versions: str) -> None:
    engine = create_engine(url)
    try:
        try:
            connection = connect(engine)
        except TaskdbError as exc:
            fail(exc)
        with connection:
            try:
                run_with(connection, versions)
                return
            except TaskdbError as exc:
                exc.args = (redact(str(exc), url),)
                fail(exc)
            except SQLAlchemyError as exc:
                lost = connection_lost(exc)
                if lost is None:
                    raise
            # The server ended the session (pg_terminate_backend, a failover): one line saying so and to rerun,
            # raised outside the handler so that the cleanup's failure on the dead connection is not chained.
            lost.args = (redact(str(lost), url),)
            fail(lost)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
