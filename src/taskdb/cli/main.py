"""Parse the command line, dispatch to a command module, turn errors into one line and an exit code."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Any

from alembic.util import CommandError
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

import taskdb
from taskdb.cli import cleanup, cron, demo, doctor, metrics, migrate, plan, reset, sql
from taskdb.cli.common import EXAMPLES
from taskdb.cli.progress import setup_logging
from taskdb.config import redact, resolve_url
from taskdb.errors import TaskdbError, connection_lost

COMMANDS = (plan, migrate, sql, doctor, metrics, cleanup, cron, reset, demo)  # the order of `taskdb --help`


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="taskdb",
        description="Repair and guard a PostgreSQL tasks queue table.",
        epilog="Examples:\n  taskdb demo\n  DATABASE_URL=postgresql://app@db/prod taskdb plan\n"
        "  taskdb --url postgresql+pg8000://app@db/prod upgrade --json\n"
        "  PGHOST=db PGDATABASE=app taskdb current\n"
        "  taskdb plan --url 'host=db dbname=app user=me sslmode=require'\n\n"
        f"{textwrap.fill(WHERE, 100)}\n\n"
        "Exit codes: 0 done, 1 failed, 2 usage or connection, 3 lock retries exhausted.",
        formatter_class=EXAMPLES,
    )
    top.add_argument("--version", action="version", version=f"taskdb {taskdb.__version__}")
    for flags, options in GLOBAL_OPTIONS:
        top.add_argument(*flags, **options)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    _global_options_after_the_command(sub)
    return top


WHERE = (
    "Where the database is: --url, else TASKDB_DATABASE_URL, else DATABASE_URL, each a URL (postgresql://… uses "
    "psycopg 3, postgresql+pg8000://… pg8000) or a libpq string ('host=db port=5432 dbname=app'); else libpq's "
    "PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGSERVICE (pg_service.conf). What a URL or string leaves out "
    "comes from the service, then from those variables, as with libpq. TASKDB_DRIVER=pg8000 picks pg8000 where "
    "no driver is named in the URL."
)
GLOBAL_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (
        ("--url",),
        {
            "metavar": "URL",
            "help": "the database: a URL or a libpq 'key=value ...' string "
            "(default: TASKDB_DATABASE_URL, DATABASE_URL, then PG* variables; see the end of taskdb --help)",
        },
    ),
    (
        ("--verbose", "-v"),
        {
            "action": "store_true",
            "help": "also log Alembic's INFO lines (and, for read-only "
            "commands, taskdb's own); history: with each revision's description",
        },
    ),
)
# Commands that only read (or need no database): their INFO log lines only with -v. The others keep their
# progress lines (which revision, which batch, what changed).
QUIET_COMMANDS = frozenset({"plan", "current", "doctor", "heads", "show", "history", "sql", "cron status"})


def _global_options_after_the_command(sub: argparse._SubParsersAction) -> None:
    """``taskdb plan --url … -v`` as well as ``taskdb --url … -v plan`` (also for ``cron status`` and the like);
    given in both places, the one after the command wins."""
    for command in sub.choices.values():
        for flags, options in GLOBAL_OPTIONS:
            command.add_argument(*flags, **options, default=argparse.SUPPRESS)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _global_options_after_the_command(action)


def command_name(args: argparse.Namespace) -> str:
    """``plan``, ``cron status``: the command as typed, subcommand included."""
    return " ".join(part for part in (args.command, getattr(args, "cron_command", None)) if part)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    read_only = command_name(args) in QUIET_COMMANDS or getattr(args, "plan", False)  # downgrade --plan too
    log_handler = setup_logging(verbose=args.verbose, progress=not read_only)
    try:
        return _run(args)
    except BrokenPipeError:
        # `taskdb cleanup --dry-run | head`: the reader left; say nothing more (stdout to /dev/null, so that the
        # interpreter's own flush at exit does not complain either), exit as a program killed by SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        log_handler.close()


def _run(args: argparse.Namespace) -> int:
    url = None
    try:
        if getattr(args, "needs_url", True):
            url = resolve_url(args.url)
        return int(args.run(args, url) or 0)
    except TaskdbError as exc:
        print(f"taskdb: {redact(str(exc), url)}", file=sys.stderr)
        return exc.exit_code
    except CommandError as exc:
        print(f"taskdb: {redact(str(exc), url)}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        # The server ended the session (pg_terminate_backend, a failover): cleanup on the dead connection
        # may have raised on top of the driver's error; say what happened and to rerun, in one line.
        lost = connection_lost(exc)
        if lost is not None:
            print(f"taskdb: {args.command} failed: {redact(str(lost), url)}", file=sys.stderr)
            return lost.exit_code
        if not isinstance(exc, DBAPIError):
            raise
        # a database error no library layer expected: one line, not a traceback
        reason = str(exc.orig or exc).strip().splitlines()[0]
        print(f"taskdb: {args.command} failed: database error: {redact(reason, url)}", file=sys.stderr)
        return 1
