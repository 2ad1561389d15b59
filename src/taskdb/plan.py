"""`taskdb plan`: what an upgrade would do, read-only.

Everything runs in READ ONLY transactions (never the session's ``default_transaction_read_only``, which
behind a transaction pooler would land on a connection the application writes on), and the counts come from
one REPEATABLE READ, READ ONLY transaction, so they describe one moment of the table. The per-row prediction is
``predict`` in ``sql/plan.sql``; the tests hold it to what the upgrade then really does.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from taskdb import api, cron, report, steps, target, version_table
from taskdb.catalog import columns, table_exists
from taskdb.db import read_only_transaction, rows, scalar
from taskdb.locks import LockPolicy, find_blockers
from taskdb.sql import queries

# queued_ttl's column default in task_hygiene_settings (0005), for databases that do not have the table yet.
DEFAULT_QUEUED_TTL = "7 days"


_PLACEHOLDER = re.compile(r"\$\{(\w+)(?::([^}]*))?\}")


def plan(conn: Connection) -> dict[str, Any]:
    """The whole plan as a JSON-ready dict. ``conn`` is AUTOCOMMIT; nothing is written."""
    policy = LockPolicy.from_env()
    # a plan waits for no lock: an ALTER queued on tasks must not queue readers behind the plan
    with read_only_transaction(conn, lock_timeout_ms=policy.lock_timeout_ms, isolation="REPEATABLE READ"):
        result: dict[str, Any] = {
            "table": target.resolve(conn, "taskdb plan").describe(),
            "database": scalar(conn, "SELECT current_database()"),
            "server_version": scalar(conn, "SELECT current_setting('server_version')"),
            **revisions(conn),
        }
        result["rows"] = predict_summary(conn) if table_exists(conn, "tasks") else None
        result["blocking_sessions"] = find_blockers(conn, ["tasks", "users", "projects"])
    result["lock_policy"] = {"lock_timeout_ms": policy.lock_timeout_ms, "attempts": policy.attempts}
    with read_only_transaction(conn, lock_timeout_ms=policy.lock_timeout_ms):
        readiness = cron.detect(conn)
    result["pg_cron"] = readiness.as_dict() | {"summary": readiness.describe()}
    return result


def revisions(conn: Connection) -> dict[str, Any]:
    """The database's revision, head, and the pending revisions with their steps."""
    script = ScriptDirectory.from_config(api.alembic_config(None))
    current = report.revision(conn)
    if current is None:  # an earlier taskdb's row in the application's alembic_version: the upgrade adopts it
        current = version_table.legacy_revision(conn, version_table.taskdb_revisions(script))
    head = script.get_current_head()
    pending = list(reversed(list(script.iterate_revisions(head, current)))) if head != current else []
    return {
        "current_revision": current,
        "head": head,
        "pending": [
            {
                "revision": rev.revision,
                "title": (rev.doc or "").strip().splitlines()[0] if rev.doc else "",
                # the steps the upgrade will run, from the revision's own STEPS (taskdb.steps)
                "steps": [asdict(fact) for fact in steps.facts(rev.module.STEPS)],
            }
            for rev in pending
        ],
    }


def queued_ttl(conn: Connection) -> str:
    if table_exists(conn, "task_hygiene_settings"):
        return str(scalar(conn, "SELECT queued_ttl::text FROM task_hygiene_settings"))
    return DEFAULT_QUEUED_TTL


# For the summary query, in plan's transaction (SET LOCAL: gone at its end). Its CTEs have no statistics, so the
# planner's row estimates multiply up to 1e40 and more: JIT then compiles it for ~1.2 s (as long as the whole query
# takes at 100,000 rows), and a CTE it guesses to be one row may be joined in a nested loop, rescanning the other
# side for each row (the quadratic time of issue 15). Every join in it is on one key, so hash and merge joins serve.
SUMMARY_SETTINGS = ("SET LOCAL jit = off", "SET LOCAL enable_nestloop = off")


def predict_summary(conn: Connection) -> dict[str, Any]:
    """The counts the upgrade will produce (backfill sources, flag reasons, cancellations, ready work). Runs in
    plan's transaction."""
    ttl = queued_ttl(conn)
    for setting in SUMMARY_SETTINGS:
        conn.exec_driver_sql(setting)
    summary = dict(conn.execute(sa.text(render(conn, "summary")), {"queued_ttl": ttl}).one()._mapping)
    summary["queued_ttl"] = ttl
    return summary


def predict_rows(conn: Connection) -> list[dict[str, Any]]:
    """The per-task prediction (for tests and for a DBA's own queries)."""
    return rows(conn, render(conn, "predict"), {"queued_ttl": queued_ttl(conn)})


def render(conn: Connection, query: str) -> str:
    """Fill ``query``'s placeholders for this database: missing columns and tables read as NULL / empty."""
    sql = queries("plan")
    cols = columns(conn, "tasks")
    column_types = {"user_id": "uuid", "run_type": "text", "legacy_reason": "text", "dependant_on": "uuid",
                    "project_id": "uuid"}  # fmt: skip
    no_users = "(SELECT NULL::uuid AS id, NULL::numeric AS credits WHERE false)"  # 0001 creates the table
    users = "users" if table_exists(conn, "users") else no_users
    project_owners = (
        f"(SELECT pr.id AS project_id, u.id AS user_id FROM projects pr JOIN {users} u ON u.id = pr.user_id)"
        if table_exists(conn, "projects")
        else "(SELECT NULL::uuid AS project_id, NULL::uuid AS user_id WHERE false)"
    )
    values = {
        **{name: (f"t.{name}" if name in cols else f"NULL::{kind}") for name, kind in column_types.items()},
        "users": users,
        "project_owners": project_owners,
    }

    def fill(match: re.Match[str]) -> str:
        name, argument = match.group(1), match.group(2)
        if argument is not None:  # an inline helper: its expression, with ${x} = the argument
            return inline_helper(name, argument)
        if name == "predict":
            return _PLACEHOLDER.sub(fill, sql["predict"])
        return values[name]

    return _PLACEHOLDER.sub(fill, sql[query])


def inline_helper(name: str, argument: str) -> str:
    """plan.sql's inline copy of the helper function ``taskdb_<name>``, applied to the SQL ``argument``."""
    body = "\n".join(line for line in queries("plan")[name].splitlines() if not line.lstrip().startswith("--"))
    return body.replace("${x}", argument)
