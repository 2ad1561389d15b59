"""The `taskdb` command: parses, calls the library, prints. No logic of its own.

Exit codes: 0 done, 1 failed, 2 usage or connection, 3 lock retries exhausted / another upgrade running.
"""

from __future__ import annotations

import argparse
import logging
import sys

from alembic.util import CommandError

from taskdb import api
from taskdb.config import redact, resolve_url
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
        else:
            api.current(url)
    except TaskdbError as exc:
        print(f"taskdb: {redact(str(exc), url)}", file=sys.stderr)
        return exc.exit_code
    except CommandError as exc:
        print(f"taskdb: {redact(str(exc), url)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
