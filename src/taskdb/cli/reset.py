"""`taskdb reset`: drop and recreate a local development database, upgrade it, load sample data."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from taskdb.cli.common import EXAMPLES, add_json_flag, print_json
from taskdb.reset import SEEDS, reset


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "reset",
        help="drop and recreate a local development database, upgrade it, load sample data",
        description="Drop the database the URL names (ending its other sessions), create it again, upgrade it to "
        "head and load a seed: none (empty tables at head), demo (a small healthy queue) or incident (the "
        "incident's half-migrated database, loaded before the upgrade, so you get it repaired; with "
        "--no-upgrade it stays half-migrated for trying `taskdb plan` and `taskdb upgrade`). Refuses a host "
        "that is not local (loopback, localhost, a Unix socket) unless --force; always prints which database "
        "it drops first; never asks.",
        epilog="Examples:\n  taskdb --url postgresql://me@localhost/taskdb_dev reset --seed incident\n"
        "  taskdb reset --seed incident --no-upgrade && taskdb plan\n"
        "  taskdb reset --seed demo --json",
        formatter_class=EXAMPLES,
    )
    parser.add_argument("--seed", choices=SEEDS, default="none", help="sample data to load (default: none)")
    parser.add_argument(
        "--no-upgrade",
        dest="upgrade",
        action="store_false",
        help="do not upgrade: an empty database (--seed none) or the half-migrated incident (--seed incident)",
    )
    parser.add_argument("--force", action="store_true", help="reset even when the host is not local")
    add_json_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, url: str) -> int:
    # Progress goes to stderr with --json, so that stdout holds one JSON object.
    out = sys.stderr if args.json else sys.stdout

    def announce(message: str) -> None:
        print(f"taskdb reset: {message}", file=out, flush=True)

    result = reset(url, args.seed, upgrade=args.upgrade, force=args.force, announce=announce)
    if args.json:
        print_json(asdict(result))
        return 0
    tasks = ", ".join(f"{n} {status}" for status, n in result.tasks_by_status.items()) or "no task"
    announce(
        f'database "{result.database}" on {result.host} is ready: revision {result.revision or "<none>"}, '
        f"seed {result.seed}, tasks: {tasks}"
    )
    return 0
