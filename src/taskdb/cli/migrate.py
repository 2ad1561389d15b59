"""`taskdb upgrade | downgrade | current | history`: Alembic with the package's safety settings."""

from __future__ import annotations

import argparse

from taskdb import api, downgrade_plan
from taskdb.cli.common import EXAMPLES, add_json_flag, connection, print_json
from taskdb.cli.downgrade_plan import render as render_downgrade_plan


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser(
        "upgrade",
        help="upgrade the database (default: to head)",
        description="Apply the pending revisions online: short lock_timeout with retries on every DDL, "
        "keyset-batched backfill, constraints added NOT VALID then validated. Safe to rerun.",
        epilog="Examples:\n  taskdb upgrade\n  taskdb upgrade 0004_constraints\n"
        "  TASKDB_LOCK_TIMEOUT_MS=500 taskdb upgrade",
        formatter_class=EXAMPLES,
    )
    up.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    add_json_flag(up)
    up.set_defaults(run=run_upgrade)
    down = sub.add_parser(
        "downgrade",
        help="downgrade to REVISION (base: undo everything taskdb did)",
        epilog="Examples:\n  taskdb downgrade base --plan\n  taskdb downgrade 0004_constraints\n"
        "  taskdb downgrade base",
        formatter_class=EXAMPLES,
    )
    down.add_argument("revision", help="target revision, or base")
    down.add_argument("--plan", action="store_true",
                      help="only show what the downgrade would restore (from task_hygiene_log), drop and keep; "
                      "read-only, works on a standby")
    add_json_flag(down)
    down.set_defaults(run=run_downgrade)
    current = sub.add_parser("current", help="show the database's revision")
    current.set_defaults(run=run_current)
    history = sub.add_parser("history", help="list the revisions of the chain, newest first (no database needed)")
    history.add_argument("--verbose", "-v", action="store_true", help="with each revision's description")
    history.set_defaults(run=run_history, needs_url=False)


def run_upgrade(args: argparse.Namespace, url: str) -> int:
    outcome = api.upgrade(url, args.revision, raise_taskdb_errors=True)
    if args.json:  # the summary object on stdout; the log stays on stderr
        print_json(outcome)
    else:
        changes = ", ".join(f"{n} {action}" for action, n in outcome["changes"].items()) or "no row changed"
        print(f"taskdb: {outcome['from_revision'] or '<none>'} -> {outcome['to_revision']} in "
              f"{outcome['seconds']:.1f}s; {changes}")
    return 0


def run_downgrade(args: argparse.Namespace, url: str) -> int:
    if args.plan:
        with connection(url, "taskdb downgrade --plan") as conn:
            result = downgrade_plan.downgrade_plan(conn, args.revision)
        if args.json:
            print_json(result)
        else:
            print("\n".join(render_downgrade_plan(result)))
        return 0
    api.downgrade(url, args.revision, raise_taskdb_errors=True)
    if args.json:
        print_json({"downgraded_to": args.revision})
    return 0


def run_current(args: argparse.Namespace, url: str) -> int:
    api.current(url)
    return 0


def run_history(args: argparse.Namespace, url: str | None) -> int:
    api.history(verbose=args.verbose)
    return 0
