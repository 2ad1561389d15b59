"""`taskdb sql [RANGE]`: the upgrade as offline SQL for a DBA to review and apply with psql (no database needed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taskdb import api
from taskdb.cli.common import EXAMPLES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "sql",
        help="print the upgrade as SQL to review and apply with psql (offline; no database needed)",
        description="The SQL of the migration chain (Alembic --sql mode): static, idempotent SQL that reads the "
        "catalog when it runs, so one script fits an empty, a legacy or a half-migrated database. DDL in short "
        "transactions under lock_timeout; the backfill as a temporary procedure committing each batch; indexes "
        "CONCURRENTLY. Apply with: psql -v ON_ERROR_STOP=1 -X -f upgrade.sql (rerun after any failure).",
        epilog="Examples:\n  taskdb sql --output upgrade.sql\n  taskdb sql 0003_backfill:head\n"
        "  psql -v ON_ERROR_STOP=1 -X -f upgrade.sql \"$DATABASE_URL\"\n"
        "  taskdb sql > up.sql && taskdb sql --squawk-config > .squawk.toml && squawk up.sql",
        formatter_class=EXAMPLES,
    )
    parser.add_argument(
        "range", nargs="?", default="base:head", metavar="RANGE",
        help="FROM:TO revisions, e.g. 0003_backfill:head (default: base:head); the script starts at FROM",
    )
    parser.add_argument("--output", "-o", metavar="FILE", help="write the script to FILE instead of stdout")
    parser.add_argument(
        "--squawk-config", action="store_true",
        help="print the .squawk.toml taskdb's CI lints this SQL with (each excluded rule says why) and exit",
    )
    parser.set_defaults(run=run, needs_url=False)


def run(args: argparse.Namespace, url: str | None) -> int:
    if args.squawk_config:
        sys.stdout.write(api.squawk_config())
        return 0
    script = api.sql(args.range)
    if args.output:
        Path(args.output).write_text(script, encoding="utf-8")
        print(f"taskdb: wrote the upgrade {args.range} to {args.output}; review it, then apply it with "
              f"psql -v ON_ERROR_STOP=1 -X -f {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(script)
    return 0
