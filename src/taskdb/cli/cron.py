"""`taskdb cron status`: pg_cron readiness, the jobs taskdb installed, and their state."""

from __future__ import annotations

import argparse
from typing import Any

from taskdb import cron
from taskdb.cli.common import add_json_flag, connection, emit
from taskdb.db import rows, scalar


def register(sub: argparse._SubParsersAction) -> None:
    cron_cmd = sub.add_parser("cron", help="the pg_cron cleanup job")
    cron_sub = cron_cmd.add_subparsers(dest="cron_command", required=True, metavar="ACTION")
    status = cron_sub.add_parser("status", help="pg_cron readiness, the jobs taskdb installed, their state")
    add_json_flag(status)
    status.set_defaults(run=run_status)


def run_status(args: argparse.Namespace, url: str) -> int:
    emit(_status(url), as_json=args.json)
    return 0


def _status(url: str) -> dict[str, Any]:
    with connection(url) as conn:
        readiness = cron.detect(conn)
        health = (
            rows(conn, "SELECT cron_job_installed, cron_job_active, last_cleanup_at::text, cleanup_lag::text "
                       "FROM queue_health")[0]
            if scalar(conn, "SELECT to_regclass('queue_health') IS NOT NULL")
            else {}
        )
        return {"readiness": readiness.as_dict(), "jobs": cron.recorded_jobs(conn), "health": health}
