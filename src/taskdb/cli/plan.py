"""`taskdb plan`: what `taskdb upgrade` would do, read-only (the library's taskdb.plan, printed)."""

from __future__ import annotations

import argparse
from typing import Any

from taskdb import plan
from taskdb.cli.common import EXAMPLES, add_json_flag, connection, print_json

# (key in plan()["rows"], label, indent): the order a DBA reads them in
ROW_LINES = (
    ("tasks", "tasks", 0),
    ("needs_work", "rows the backfill will touch", 0),
    ("backfilled", "made healthy", 1),
    ("status_normalised", "status spelling normalised", 2),
    ("user_from_project_owner", "user_id from the project owner", 2),
    ("user_from_params", "user_id from params.user_id", 2),
    ("user_from_orchestrator", "user_id from the orchestrator task", 2),
    ("run_type_normalised", "run_type normalised ('GPU' -> cloud)", 2),
    ("run_type_from_params", "run_type from params.run_type", 2),
    ("run_type_from_orchestrator", "run_type from the orchestrator task", 2),
    ("user_id_references_no_user", "user_id that references no user", 2),
    ("flagged", "flagged in legacy_reason (kept, never deleted)", 1),
    ("flagged_cancelled", "of which Queued (or unknown status) -> Cancelled", 2),
    ("cleanup_stale", "Queued longer than queued_ttl -> Cancelled by the cleanup", 0),
    ("cleanup_children", "their Queued children -> Cancelled by tasks_cancel_children", 0),
    ("queued_now", "Queued now (what a naive count counts)", 0),
    ("queued_no_longer_counted", "of which the claimable count stops counting", 1),
    ("ready_cloud", "ready after the upgrade: cloud (gpu)", 0),
    ("ready_local", "ready after the upgrade: local", 0),
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "plan",
        help="show what `taskdb upgrade` would do; read-only, never writes",
        description="Pending revisions with the lock each step takes and whether it scans tasks; exact counts "
        "of rows to backfill per source, to flag per reason, to cancel; Queued rows the claimable count will "
        "stop counting; pg_cron readiness; sessions that would block the upgrade. Runs in one READ ONLY "
        "transaction.",
        epilog="Examples:\n  taskdb plan\n  taskdb plan --json | jq .rows",
        formatter_class=EXAMPLES,
    )
    add_json_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, url: str) -> int:
    with connection(url, "taskdb plan") as conn:
        result = plan.plan(conn)
    if args.json:
        print_json(result)
    else:
        print("\n".join(render(result)))
    return 0


def render(result: dict[str, Any]) -> list[str]:
    lines = [
        f"taskdb plan for database {result['database']} (PostgreSQL {result['server_version']}): "
        f"revision {result['current_revision'] or '<none>'} -> {result['head']}",
        f"table: {result['table']}",
        "",
    ]
    if not result["pending"]:
        lines.append("Nothing pending: the database is at head.")
    else:
        lines.append(f"Pending revisions ({len(result['pending'])}):")
        for rev in result["pending"]:
            lines.append(f"  {rev['revision']}: {rev['title']}")
            for step in rev["steps"]:
                scan = "scans tasks" if step["scans_tasks"] else "no scan"
                lines.append(f"    - {step['what']}\n        lock: {step['lock']}; {scan}")
    counts = result["rows"]
    lines.append("")
    if counts is None:
        lines.append("Rows: there is no tasks table yet; 0001_baseline creates it.")
    else:
        lines.append(f"Rows (one snapshot; queued_ttl {counts['queued_ttl']}):")
        for key, label, indent in ROW_LINES:
            lines.append(f"  {'  ' * indent}{label:<{62 - 2 * indent}} {counts[key]:>9}")
            if key == "flagged_cancelled":  # a row may have several reasons
                for reason, n in sorted(counts["flag_reasons"].items()):
                    lines.append(f"      reason {reason:<51} {n:>9}")
    lines.append("")
    lines.extend(result["pg_cron"]["summary"])
    policy = result["lock_policy"]
    blockers = result["blocking_sessions"]
    lines.append("")
    if not blockers:
        lines.append("Blocking sessions: none hold a lock on tasks, users or projects.")
    else:
        lines.append(
            f"Blocking sessions: {len(blockers)} hold locks the upgrade's DDL must wait for (each attempt waits "
            f"{policy['lock_timeout_ms']} ms, {policy['attempts']} attempts, then exit 3):"
        )
        lines.extend(describe_blocker(b) for b in blockers)
    return lines


def describe_blocker(b: dict[str, Any]) -> str:
    return (
        f"  pid {b['pid']} ({b['application_name'] or 'no application_name'}, {b['state']}, transaction "
        f"open {b['xact_age']}) holds {b['mode']} on {b['relation']}: {b['query']}"
    )
