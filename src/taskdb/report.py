"""Read-only reports on the tasks table: the demo's before and after, and what an upgrade did."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

from taskdb import version_table
from taskdb.catalog import table_exists
from taskdb.db import rows, scalar
from taskdb.sql import queries

DEMO_SQL = queries("demo")


def old_count(conn: Connection) -> dict[str, int]:
    """The count the autoscaler trusted in the incident: every Queued row (and how many are legacy rows,
    older than 24 hours, and the oldest's age in days). Needs user_id and run_type columns."""
    return rows(conn, DEMO_SQL["old_count"])[0]


def claimable_count(conn: Connection, run_type: str = "gpu") -> int:
    """``claimable_task_count(run_type)``: what the autoscaler calls after the upgrade."""
    return int(scalar(conn, DEMO_SQL["claimable"], {"run_type": run_type}))


def counted_fates(conn: Connection, run_type: str = "gpu") -> list[dict[str, Any]]:
    """After an upgrade: what became of the rows the old count counted, from tasks and task_hygiene_log.

    One dict per group: ``fate`` (flagged, cancelled_stale, cancelled_with_parent, backfilled, untouched,
    moved_on), ``legacy_reason`` (flagged rows), ``now`` (rows still Queued: claimable by a ``run_type``
    worker, other_run_type, not_ready), ``n`` and ``legacy`` (how many had neither user_id nor run_type).
    """
    return rows(conn, DEMO_SQL["counted_fates"], {"run_type": run_type})


def newly_queued(conn: Connection, run_type: str = "gpu") -> int:
    """After an upgrade: tasks ready for a ``run_type`` worker that the old count never saw (their status was
    spelled otherwise until the backfill normalised it)."""
    return int(scalar(conn, DEMO_SQL["newly_queued"], {"run_type": run_type}))


def guards(conn: Connection) -> dict[str, Any]:
    """After an upgrade: tasks' constraints (how many, how many validated, names) and the cleanup's schedule."""
    return rows(conn, DEMO_SQL["guards"])[0]


def revision(conn: Connection, versions: str | None = None) -> str | None:
    """taskdb's revision in the database (None before the first upgrade), from its version table ``versions``
    (default: the configured one, taskdb.version_table.configured)."""
    return version_table.revision(conn, versions or version_table.configured())


def log_high_water(conn: Connection) -> int:
    """The newest task_hygiene_log id: what an upgrade logs after this is its own."""
    return (
        int(scalar(conn, "SELECT coalesce(max(id), 0) FROM task_hygiene_log"))
        if table_exists(conn, "task_hygiene_log")
        else 0
    )


def upgrade_outcome(conn: Connection, *, since_log_id: int) -> dict[str, Any]:
    """What an upgrade did, from the log rows it wrote and the catalog it left (``taskdb upgrade --json``)."""
    out: dict[str, Any] = {"revision": revision(conn), "changes": {}, "flagged_by_reason": {}}
    if table_exists(conn, "task_hygiene_log"):
        logged = rows(
            conn,
            "SELECT action, count(*) AS n FROM task_hygiene_log WHERE id > :since GROUP BY 1 ORDER BY 1",
            {"since": since_log_id},
        )
        out["changes"] = {r["action"]: r["n"] for r in logged}
        reasons = rows(
            conn,
            "SELECT r.reason, count(*) AS n FROM task_hygiene_log l, "
            "unnest(string_to_array(l.applied ->> 'legacy_reason', ',')) AS r (reason) "
            "WHERE l.id > :since AND l.action = 'flag' GROUP BY 1 ORDER BY 1",
            {"since": since_log_id},
        )
        out["flagged_by_reason"] = {r["reason"]: r["n"] for r in reasons}
    if table_exists(conn, "tasks"):
        out["constraints_not_valid"] = [
            r["conname"]
            for r in rows(
                conn,
                "SELECT conname FROM pg_constraint WHERE conrelid = 'tasks'::regclass AND NOT convalidated ORDER BY 1",
            )
        ]
        out["invalid_indexes"] = [
            r["name"]
            for r in rows(
                conn,
                "SELECT indexrelid::regclass::text AS name FROM pg_index WHERE indrelid = 'tasks'::regclass "
                "AND NOT indisvalid ORDER BY 1",
            )
        ]
    if table_exists(conn, "taskdb_cron_jobs"):
        out["cron_jobs"] = rows(conn, "SELECT job, jobname, cron_database, schedule FROM taskdb_cron_jobs ORDER BY job")
    return out
