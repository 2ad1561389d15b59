"""`taskdb downgrade REV --plan`: the library's taskdb.downgrade_plan, printed for a DBA."""

from __future__ import annotations

from typing import Any

from taskdb.cli.common import human
from taskdb.cli.plan import describe_blocker


def render(result: dict[str, Any]) -> list[str]:
    lines = [
        f"Table: {result['table']}",
        f"Downgrade: {human(result['current_revision'])} -> {result['target']} (read-only plan: nothing was changed)",
    ]
    if not result["revisions"]:
        lines.append("Nothing to undo: the database is at or below that revision.")
    for step in result["revisions"]:
        lines.append(f"\n{step['revision']}: {step['title']}")
        for restore in step["restores"]:
            columns = ", ".join(
                f"{name} {restore[name]}"
                for name in ("status", "user_id", "run_type", "error_message", "legacy_reason", "updated_at")
                if restore[name]
            )
            lines.append(
                f"  restores {restore['tasks'] or 'no'} tasks from task_hygiene_log ({restore['actor']})"
                + (f": {columns}" if columns else "")
            )
            if restore["kept"]:
                lines.append(
                    f"    keeps {restore['kept']} tasks as they are: the application changed them since "
                    "(its values win)"
                )
            if restore["gone"]:
                lines.append(f"    {restore['gone']} logged tasks no longer exist (deleted since): nothing to restore")
        for drop in step["drops"]:
            extra = ""
            if drop["kind"] == "column":
                extra = (
                    f" (about {drop['rows_with_a_value']} rows hold a value; they go with it)"
                    if drop["rows_with_a_value"] is not None
                    else " (its values go with it)"
                )
            elif drop["kind"] == "pg_cron job":
                extra = f" (in database {drop['cron_database']})"
            elif drop["kind"] == "extension":
                extra = " (only where nothing else uses it)"
            lines.append(f"  drops {drop['kind']} {drop['name']}{extra}")
        for keep in step["keeps"]:
            lines.append(f"  keeps {keep['kind']} {keep['name']}: {keep['why']}")
        for statement in step["statements"]:
            lines.append(f"  runs  {statement}")
    others = result["log_not_restored"]
    if others:
        fate = (
            "the log is dropped with them: keep a copy first (\\copy task_hygiene_log TO 'log.csv' CSV HEADER)"
            if result["log_dropped"]
            else "they stay in task_hygiene_log"
        )
        lines.append("\nNot undone (changes by others than these revisions; " + fate + "):")
        lines += [f"  {row['actor']}: {row['log_rows']} log rows" for row in others]
    blockers = result["blocking_sessions"]
    lines.append("")
    if not blockers:
        lines.append("Blocking sessions: none hold a lock on tasks, users or projects.")
    else:
        lines.append(f"Blocking sessions: {len(blockers)} hold locks the downgrade's DDL must wait for:")
        lines.extend(describe_blocker(b) for b in blockers)
    return lines
