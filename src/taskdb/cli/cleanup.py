"""`taskdb cleanup`: the pg_cron job's cancellation, run now (for databases without pg_cron)."""

from __future__ import annotations

import argparse
import getpass
from typing import Any

from taskdb import hygiene
from taskdb.cli.common import EXAMPLES, add_json_flag, connection, emit


def register(sub: argparse._SubParsersAction) -> None:
    cleanup = sub.add_parser(
        "cleanup",
        help="cancel Queued tasks older than queued_ttl now (what the pg_cron job does)",
        epilog="Examples:\n  taskdb cleanup --dry-run\n  taskdb cleanup --json",
        formatter_class=EXAMPLES,
    )
    cleanup.add_argument("--dry-run", action="store_true", help="list what would be cancelled; change nothing")
    add_json_flag(cleanup)
    cleanup.set_defaults(run=run)


def run(args: argparse.Namespace, url: str) -> int:
    emit(_cleanup(url, dry_run=args.dry_run), as_json=args.json)
    return 0


def _cleanup(url: str, *, dry_run: bool) -> dict[str, Any]:
    with connection(url, "taskdb cleanup") as conn:
        if dry_run:
            due = hygiene.due_for_cleanup(conn)
            return {"dry_run": True, "would_cancel": len(due), "tasks": due}
        actor = f"taskdb cleanup ({getpass.getuser()})"
        return {"dry_run": False, "cancelled": hygiene.cancel_stale_queued(conn, actor=actor), "actor": actor}
