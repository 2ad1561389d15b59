"""The `taskdb` command: parses, calls the library, prints. No logic of its own.

Exit codes: 0 done, 1 failed, 2 usage or connection, 3 lock retries exhausted / another upgrade running.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alembic.util import CommandError
from sqlalchemy.engine import Connection

from taskdb import api, cron, hygiene
from taskdb.config import redact, resolve_url
from taskdb.db import connect, create_engine, rows, scalar
from taskdb.errors import TaskdbError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskdb",
        description="Repair and guard a PostgreSQL tasks queue table.",
        epilog="Examples:\n  taskdb demo\n  DATABASE_URL=postgresql://app@db/prod taskdb upgrade\n"
        "  taskdb --url postgresql+pg8000://app@db/prod current",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", help="database URL (default: TASKDB_DATABASE_URL, then DATABASE_URL)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="upgrade the database (default: to head)")
    up.add_argument("revision", nargs="?", default="head")
    down = sub.add_parser("downgrade", help="downgrade to REVISION (base: undo everything taskdb did)")
    down.add_argument("revision")
    sub.add_parser("current", help="show the database's revision")
    cleanup = sub.add_parser(
        "cleanup",
        help="cancel Queued tasks older than queued_ttl now (what the pg_cron job does)",
        epilog="Examples:\n  taskdb cleanup --dry-run\n  taskdb cleanup --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cleanup.add_argument("--dry-run", action="store_true", help="list what would be cancelled; change nothing")
    cleanup.add_argument("--json", action="store_true", help="print one JSON object")
    cron_cmd = sub.add_parser("cron", help="the pg_cron cleanup job")
    cron_sub = cron_cmd.add_subparsers(dest="cron_command", required=True)
    status = cron_sub.add_parser("status", help="pg_cron readiness, the jobs taskdb installed, their state")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    demo = sub.add_parser("demo", help="reproduce the incident on a throwaway PostgreSQL and repair it")
    demo.add_argument("--backend", choices=["local", "container", "url"], help="default: TASKDB_PG_BACKEND / auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from taskdb.demo import run_demo

        run_demo(args.backend)
        return 0
    url = None
    try:
        url = resolve_url(args.url)
        logging.basicConfig(level=logging.INFO, format="%(levelname)-5s [%(name)s] %(message)s")
        if args.command == "upgrade":
            api.upgrade(url, args.revision, raise_taskdb_errors=True)
        elif args.command == "downgrade":
            api.downgrade(url, args.revision, raise_taskdb_errors=True)
        elif args.command == "current":
            api.current(url)
        elif args.command == "cleanup":
            _print(_cleanup(url, dry_run=args.dry_run), as_json=args.json)
        else:
            _print(_cron_status(url), as_json=args.json)
    except TaskdbError as exc:
        print(f"taskdb: {redact(str(exc), url)}", file=sys.stderr)
        return exc.exit_code
    except CommandError as exc:
        print(f"taskdb: {redact(str(exc), url)}", file=sys.stderr)
        return 1
    return 0


def _cleanup(url: str, *, dry_run: bool) -> dict[str, Any]:
    with _connection(url) as conn:
        if dry_run:
            due = hygiene.due_for_cleanup(conn)
            return {"dry_run": True, "would_cancel": len(due), "tasks": due}
        actor = f"taskdb cleanup ({getpass.getuser()})"
        return {"dry_run": False, "cancelled": hygiene.cancel_stale_queued(conn, actor=actor), "actor": actor}


def _cron_status(url: str) -> dict[str, Any]:
    with _connection(url) as conn:
        readiness = cron.detect(conn)
        health = (
            rows(conn, "SELECT cron_job_installed, cron_job_active, last_cleanup_at::text, cleanup_lag::text "
                       "FROM queue_health")[0]
            if scalar(conn, "SELECT to_regclass('queue_health') IS NOT NULL")
            else {}
        )
        return {"readiness": readiness.as_dict(), "jobs": cron.recorded_jobs(conn), "health": health}


@contextmanager
def _connection(url: str) -> Iterator[Connection]:
    engine = create_engine(url)
    try:
        with connect(engine).execution_options(isolation_level="AUTOCOMMIT") as conn:
            yield conn
    finally:
        engine.dispose()


def _print(result: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, default=str, sort_keys=True))
        return
    for key, value in result.items():
        if isinstance(value, list):
            print(f"{key}:")
            for item in value:
                print("  " + (", ".join(f"{k}={v}" for k, v in item.items()) if isinstance(item, dict) else str(item)))
        elif isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")


if __name__ == "__main__":
    sys.exit(main())
