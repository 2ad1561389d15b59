"""`taskdb upgrade | downgrade | stamp | current | heads | show | history`: Alembic with the package's safety
settings."""

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
    down.add_argument(
        "--plan",
        action="store_true",
        help="only show what the downgrade would restore (from task_hygiene_log), drop and keep; "
        "read-only, works on a standby",
    )
    add_json_flag(down)
    down.set_defaults(run=run_downgrade)
    stamp = sub.add_parser(
        "stamp",
        help="record REVISION in taskdb's version table without running anything (the app's alembic_version "
        "is never touched)",
        description="Write REVISION into taskdb_alembic_version in the queue's schema, running no migration: for a "
        "database whose objects are already there (restored from a dump, migrated by hand). It goes the way of "
        "an upgrade: it takes the upgrade lock and refuses a standby or a read-only connection (exit 2). The "
        "application's own alembic_version is never read or changed.",
        epilog="Examples:\n  taskdb stamp 0004_constraints\n  taskdb stamp head\n"
        "  taskdb stamp --purge 0006_cron   # the table held a revision this chain does not know\n"
        "  taskdb stamp base                # forget taskdb's revision (nothing is dropped)",
        formatter_class=EXAMPLES,
    )
    stamp.add_argument("revision", help="the revision to record (an id, head, or base to record none)")
    stamp.add_argument(
        "--purge", action="store_true", help="empty taskdb's version table first (as Alembic's stamp --purge)"
    )
    stamp.set_defaults(run=run_stamp)
    current = sub.add_parser("current", help="show the database's revision")
    current.set_defaults(run=run_current)
    heads = sub.add_parser("heads", help="the chain's head revision (no database needed)")
    heads.set_defaults(run=run_heads, needs_url=False)
    show = sub.add_parser(
        "show",
        help="one revision: id, parent, file and description (no database needed)",
        epilog="Examples:\n  taskdb show 0003_backfill\n  taskdb show head",
        formatter_class=EXAMPLES,
    )
    show.add_argument("revision", help="a revision id (or a unique prefix), or head")
    show.set_defaults(run=run_show, needs_url=False)
    history = sub.add_parser(
        "history", help="list the revisions of the chain, newest first (no database needed; -v: with descriptions)"
    )
    history.set_defaults(run=run_history, needs_url=False)  # -v/--verbose is the global option (taskdb.cli.main)


def run_upgrade(args: argparse.Namespace, url: str) -> int:
    outcome = api.upgrade(url, args.revision, raise_taskdb_errors=True)
    if args.json:  # the summary object on stdout; the log stays on stderr
        print_json(outcome)
    else:
        changes = ", ".join(f"{n} {action}" for action, n in outcome["changes"].items()) or "no row changed"
        print(
            f"taskdb: {outcome['from_revision'] or '<none>'} -> {outcome['to_revision']} in "
            f"{outcome['seconds']:.1f}s; {changes}"
        )
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


def run_stamp(args: argparse.Namespace, url: str) -> int:
    api.stamp(url, args.revision, purge=args.purge, raise_taskdb_errors=True)
    print(f"taskdb: stamped {args.revision} in taskdb's version table (no migration ran)")
    return 0


def run_heads(args: argparse.Namespace, url: str | None) -> int:
    for head in api.heads():
        print(f"{head} (head)")
    return 0


def run_show(args: argparse.Namespace, url: str | None) -> int:
    rev = api.show(args.revision)
    print(f"Rev: {rev['revision']}{' (head)' if rev['is_head'] else ''}")
    print(f"Parent: {rev['parent'] or '<base>'}")
    print(f"Path: {rev['path']}")
    print()
    print("\n".join(f"    {line}".rstrip() for line in rev["doc"].splitlines()))
    return 0


def run_current(args: argparse.Namespace, url: str) -> int:
    api.current(url)
    return 0


def run_history(args: argparse.Namespace, url: str | None) -> int:
    api.history(verbose=args.verbose)
    return 0
