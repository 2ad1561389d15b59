"""`taskdb demo`."""

from __future__ import annotations

import argparse

from taskdb.cli.common import EXAMPLES


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo",
        help="reproduce the incident on a throwaway PostgreSQL and repair it",
        description="Start a throwaway PostgreSQL and load the incident. Ask the autoscaler's question, 'how many\n"
        "tasks can be claimed right now?', as the old count answered it (every Queued row), with the GPU\n"
        "workers it would start; show `taskdb plan`; upgrade to head; ask again through\n"
        "claimable_task_count('gpu'); account for every row the old count counted (flagged, backfilled,\n"
        "cancelled, untouched), from tasks and task_hygiene_log. Nothing outside the throwaway server is touched.",
        epilog="Examples:\n  taskdb demo\n  taskdb demo --backend local 2>&1 | less   # with the upgrade's log",
        formatter_class=EXAMPLES,
    )
    demo.add_argument("--backend", choices=["local", "container", "url"], help="default: TASKDB_PG_BACKEND / auto")
    demo.set_defaults(run=run, needs_url=False)


def run(args: argparse.Namespace, url: str | None) -> int:
    from taskdb.demo import run_demo

    run_demo(args.backend)
    return 0
