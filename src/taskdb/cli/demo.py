"""`taskdb demo`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo",
        help="reproduce the incident on a throwaway PostgreSQL and repair it",
        description="Start a throwaway PostgreSQL, load the incident scenario, show the plan, upgrade, "
        "show before and after, stop the server. Nothing outside the throwaway server is touched.",
    )
    demo.add_argument("--backend", choices=["local", "container", "url"], help="default: TASKDB_PG_BACKEND / auto")
    demo.set_defaults(run=run, needs_url=False)


def run(args: argparse.Namespace, url: str | None) -> int:
    from taskdb.demo import run_demo

    run_demo(args.backend)
    return 0
