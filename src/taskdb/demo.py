"""`taskdb demo`: the incident, reproduced on a throwaway PostgreSQL, and repaired by `upgrade head`."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import sqlalchemy as sa

from taskdb import api, seeds
from taskdb.cli.plan import render as render_plan
from taskdb.db import connect, create_engine
from taskdb.plan import plan
from taskdb.report import summary


def _print_summary(title: str, data: dict[str, Any], out: TextIO) -> None:
    print(f"\n== {title} ==", file=out)
    for key, value in data.items():
        if isinstance(value, list):
            print(f"  {key}:", file=out)
            for row in value:
                print("    " + ", ".join(f"{k}={v}" for k, v in row.items()), file=out)
        else:
            print(f"  {key:<40} {value}", file=out)


def run_demo(backend: str | None = None, out: TextIO = sys.stdout) -> dict[str, dict[str, Any]]:
    """Start PostgreSQL, load the incident, show before and the plan, upgrade to head, show after, stop."""
    from taskdb.testing import start_postgres  # the throwaway server is only needed here

    logging.basicConfig(level=logging.INFO, format="%(levelname)-5s [%(name)s] %(message)s", stream=out)
    with start_postgres(backend) as server:
        url = server.url(server.create_database("taskdb_demo"))
        print(f"PostgreSQL {server.major} ({server.backend} backend) at {sa.engine.make_url(url)!r}", file=out)
        engine = create_engine(api_url := url)
        try:
            with engine.begin() as conn:
                seeds.load_schema(conn, "half_migrated")
                seeds.load_incident(conn)
            with engine.connect() as conn:
                before = summary(conn)
            _print_summary("before: the incident database (half-migrated)", before, out)
            print("\n== taskdb plan ==", file=out)
            with connect(engine).execution_options(isolation_level="AUTOCOMMIT") as conn:
                print("\n".join(render_plan(plan(conn))), file=out)
            print("\n== taskdb upgrade head ==", file=out)
            api.upgrade(api_url)
            with engine.connect() as conn:
                after = summary(conn)
            _print_summary("after", after, out)
        finally:
            engine.dispose()
    return {"before": before, "after": after}
