"""`taskdb sql [--downgrade] [RANGE]`: the upgrade (or a downgrade) as offline SQL for a DBA to review and apply
with psql (no database needed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taskdb import api
from taskdb.cli.common import EXAMPLES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "sql",
        help="print the upgrade (or, with --downgrade, a downgrade) as SQL to review and apply with psql "
        "(offline; no database needed)",
        description="The SQL of the migration chain (Alembic --sql mode): static, idempotent SQL that reads the "
        "catalog when it runs, so one script fits an empty, a legacy or a half-migrated database. DDL in short "
        "transactions under lock_timeout; the backfill as a temporary procedure committing each batch; indexes "
        "CONCURRENTLY. Apply with: psql -v ON_ERROR_STOP=1 -X -f upgrade.sql (rerun after any failure).",
        epilog="Examples:\n  taskdb sql --output upgrade.sql\n  taskdb sql 0003_backfill:head\n"
        '  psql -v ON_ERROR_STOP=1 -X -f upgrade.sql "$DATABASE_URL"\n'
        "  taskdb sql > up.sql && taskdb sql --squawk-config > .squawk.toml && squawk up.sql\n"
        "  taskdb sql --downgrade 0004_constraints --output down.sql",
        formatter_class=EXAMPLES,
    )
    parser.add_argument(
        "range",
        nargs="?",
        default=None,
        metavar="RANGE",
        help="FROM:TO revisions, e.g. 0003_backfill:head (default: base:head; with --downgrade head:base, and TO "
        "alone means head:TO); the script starts at FROM",
    )
    parser.add_argument(
        "--downgrade",
        action="store_true",
        help="a downgrade script: restores from task_hygiene_log and drops what taskdb created, as `taskdb "
        "downgrade` does (`taskdb downgrade TO --plan` says what it will change)",
    )
    parser.add_argument("--output", "-o", metavar="FILE", help="write the script to FILE instead of stdout")
    parser.add_argument(
        "--squawk-config",
        action="store_true",
        help="print the .squawk.toml taskdb's CI lints this SQL with (each excluded rule says why) and exit",
    )
    parser.set_defaults(run=run, needs_url=False)


def run(args: argparse.Namespace, url: str | None) -> int:
    if args.squawk_config:
        sys.stdout.write(api.squawk_config())
        return 0
    script = api.sql(args.range, downgrade=args.downgrade)
    if args.output:
        Path(args.output).write_text(script, encoding="utf-8")
        what = f"downgrade {args.range or 'head:base'}" if args.downgrade else f"upgrade {args.range or 'base:head'}"
        print(
            f"taskdb: wrote the {what} to {args.output}; review it, then apply it with "
            f"psql -v ON_ERROR_STOP=1 -X -f {args.output}",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(script)
    return 0
