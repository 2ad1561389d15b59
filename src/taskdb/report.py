"""Read-only summaries of the tasks table, for the demo (and later `taskdb plan` / `doctor`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

from taskdb import version_table
from taskdb.catalog import columns, table_exists
from taskdb.db import rows, scalar

# Every Queued row, whoever owns it and whatever it runs on: what a count that forgets the legacy rows sees.
NAIVE_QUEUED_SQL = "SELECT count(*) AS n FROM tasks WHERE status::text = 'Queued'"


def summary(conn: Connection) -> dict[str, Any]:
    """Counts a DBA looks at before and after an upgrade."""
    cols = columns(conn, "tasks")
    has_owner = "user_id" in cols and "run_type" in cols
    flagged = "legacy_reason" in cols
    out: dict[str, Any] = {
        "tasks": rows(conn, "SELECT count(*) AS n FROM tasks")[0]["n"],
        "queued, any owner or run type": rows(conn, NAIVE_QUEUED_SQL)[0]["n"],
        "queued older than 24 h": rows(
            conn,
            "SELECT count(*) AS n FROM tasks WHERE status::text = 'Queued' "
            "AND created_at < now() - interval '24 hours'",
        )[0]["n"],
    }
    if has_owner:
        out["queued without user_id and run_type"] = rows(
            conn,
            "SELECT count(*) AS n FROM tasks WHERE status::text = 'Queued' AND user_id IS NULL AND run_type IS NULL",
        )[0]["n"]
        out["without user_id or valid run_type"] = rows(
            conn,
            "SELECT count(*) AS n FROM tasks WHERE user_id IS NULL OR run_type IS NULL "
            "OR run_type NOT IN ('cloud', 'local')",
        )[0]["n"]
        out["queued, owned, run_type cloud"] = rows(
            conn,
            "SELECT count(*) AS n FROM tasks WHERE status::text = 'Queued' AND user_id IS NOT NULL "
            "AND run_type = 'cloud'" + (" AND legacy_reason IS NULL" if flagged else ""),
        )[0]["n"]
    else:
        out["without user_id or valid run_type"] = out["tasks"]
    if scalar(conn, "SELECT to_regprocedure('claimable_task_count(text, boolean)') IS NOT NULL"):
        out["claimable_task_count('gpu')"] = scalar(conn, "SELECT claimable_task_count('gpu')")
        out["stale_queued_tasks"] = scalar(conn, "SELECT count(*) FROM stale_queued_tasks")
        out["cleanup cron job installed / active"] = " / ".join(
            str(v) for v in rows(conn, "SELECT cron_job_installed, cron_job_active FROM queue_health")[0].values()
        )
    if flagged:
        out["flagged (legacy_reason)"] = rows(
            conn,
            "SELECT legacy_reason, count(*) AS n FROM tasks WHERE legacy_reason IS NOT NULL "
            "GROUP BY 1 ORDER BY 2 DESC",
        )
    if table_exists(conn, "task_hygiene_log"):
        out["task_hygiene_log"] = rows(
            conn, "SELECT action, count(*) AS n FROM task_hygiene_log GROUP BY 1 ORDER BY 1"
        )
    out["constraints"] = rows(
        conn,
        "SELECT conname AS name, convalidated AS validated FROM pg_constraint "
        "WHERE conrelid = 'tasks'::regclass AND contype IN ('c', 'f') ORDER BY conname",
    )
    return out


def revision(conn: Connection, versions: str | None = None) -> str | None:
    """taskdb's revision in the database (None before the first upgrade), from its version table ``versions``
    (default: the configured one, taskdb.version_table.configured)."""
    return version_table.revision(conn, versions or version_table.configured())


def log_high_water(conn: Connection) -> int:
    """The newest task_hygiene_log id: what an upgrade logs after this is its own."""
    return int(scalar(conn, "SELECT coalesce(max(id), 0) FROM task_hygiene_log")) if table_exists(
        conn, "task_hygiene_log") else 0


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
        out["constraints_not_valid"] = [r["conname"] for r in rows(
            conn, "SELECT conname FROM pg_constraint WHERE conrelid = 'tasks'::regclass AND NOT convalidated "
                  "ORDER BY 1")]
        out["invalid_indexes"] = [r["name"] for r in rows(
            conn, "SELECT indexrelid::regclass::text AS name FROM pg_index WHERE indrelid = 'tasks'::regclass "
                  "AND NOT indisvalid ORDER BY 1")]
    if table_exists(conn, "taskdb_cron_jobs"):
        out["cron_jobs"] = rows(
            conn, "SELECT job, jobname, cron_database, schedule FROM taskdb_cron_jobs ORDER BY job")
    return out
