"""`taskdb downgrade REV --plan`: what a downgrade would do, read-only.

For each revision it would undo, newest first: what its downgrade restores from ``task_hygiene_log`` (per actor,
the tasks and columns put back, computed by the restore's own batches and conditions:
:func:`taskdb.backfill.restore_preview`), the objects it drops (what ``taskdb_owned_objects`` says that revision
created, and its frozen ``drop_objects`` SQL), and what it keeps on purpose (tables holding rows, roles, enum
labels). Where ``task_hygiene_log`` itself would be dropped, the rows of actors no revision restores (the pg_cron
cleanup, ``taskdb cleanup``) are counted: their record goes with it.

The catalog part and the per-actor totals of the log (one grouped count) are one READ ONLY transaction; the
restore counts walk the log in READ ONLY batches (no snapshot held across a big log), so they may move if the
application writes meanwhile: the downgrade then restores less (a later change by the application always wins).
"""

from __future__ import annotations

from typing import Any

from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from taskdb import api, cron, report, target
from taskdb.backfill import restore_preview
from taskdb.catalog import OWNED_TABLE, table_exists
from taskdb.db import read_only_transaction, rows, scalar
from taskdb.errors import ConfigError
from taskdb.locks import LockPolicy, find_blockers
from taskdb.migration import actor
from taskdb.sql import split_statements

# What a downgrade does with each kind of object taskdb records as its own (taskdb_owned_objects.kind).
KEPT_KINDS = {
    "role": "roles are cluster-wide (another database may grant to them): never dropped",
    "enum_label": "PostgreSQL cannot drop an enum label: it stays",
}


def downgrade_plan(conn: Connection, target_revision: str) -> dict[str, Any]:
    """The plan as a JSON-ready dict. ``conn`` is AUTOCOMMIT; nothing is written."""
    policy = LockPolicy.from_env()
    script = ScriptDirectory.from_config(api.alembic_config(None))
    with read_only_transaction(conn, lock_timeout_ms=policy.lock_timeout_ms, isolation="REPEATABLE READ"):
        table = target.resolve(conn, "taskdb downgrade --plan")
        current = report.revision(conn)
        undone = revisions_to_undo(script, current, target_revision)
        steps = [catalog_part(conn, rev) for rev in undone]
        drops_log = any("task_hygiene_log" in statement for step in steps for statement in step["statements"])
        restorers = {actor(author) for rev in undone for author in getattr(rev.module, "RESTORES", ())}
        not_restored = (
            rows(conn, "SELECT actor, count(*) AS log_rows FROM task_hygiene_log GROUP BY actor ORDER BY actor")
            if table_exists(conn, "task_hygiene_log")
            else []
        )
        blockers = find_blockers(conn, ["tasks", "users", "projects"]) if undone else []
    has_log = table_exists(conn, "task_hygiene_log")
    restored: set[str] = set()
    for step, rev in zip(steps, undone, strict=True):
        # an actor restored by a newer revision of the range has nothing left for an older one (0004 and 0003)
        authors = [a for a in getattr(rev.module, "RESTORES", ()) if actor(a) not in restored] if has_log else []
        step["restores"] = []
        for a in authors:
            step["restores"].append(
                {
                    "actor": actor(a),
                    **restore_preview(
                        conn, actor=actor(a), lock_timeout_ms=policy.lock_timeout_ms, earlier=sorted(restored)
                    ),
                }
            )
            restored.add(actor(a))
    return {
        "table": table.describe(),
        "current_revision": current,
        "target": target_revision,
        "revisions": steps,
        # log rows no revision in this range restores: kept as they are; gone with the log if it is dropped
        "log_not_restored": [dict(r) for r in not_restored if r["actor"] not in restorers],
        "log_dropped": drops_log,
        "blocking_sessions": blockers,
    }


def revisions_to_undo(script: ScriptDirectory, current: str | None, target_revision: str) -> list[Script]:
    """The revisions a downgrade from ``current`` to ``target_revision`` undoes, newest first."""
    if current is None:
        return []
    try:
        if target_revision != "base":
            resolved = script.get_revision(target_revision)
            if resolved is None:
                raise CommandError(f"unknown revision {target_revision!r}")
            target_revision = resolved.revision
        if target_revision == current:
            return []
        return [r for r in script.iterate_revisions(current, target_revision) if r.revision != target_revision]
    except (CommandError, RevisionError) as exc:  # unknown, or not below the current revision
        raise ConfigError(
            f"cannot plan a downgrade from {current} to {target_revision!r}: {exc}; `taskdb history` lists the "
            "chain, and a downgrade goes to an older revision or base"
        ) from None


def catalog_part(conn: Connection, rev: Script) -> dict[str, Any]:
    """One revision's downgrade as the catalog sees it now: what it drops and what it keeps."""
    doc = " ".join((rev.module.downgrade.__doc__ or "").strip().split("\n\n", 1)[0].split())
    drops: list[dict[str, Any]] = []
    keeps: list[dict[str, Any]] = []
    for kind, name in owned_by(conn, rev.revision):
        if kind in KEPT_KINDS:
            keeps.append({"kind": kind, "name": name, "why": KEPT_KINDS[kind]})
        elif kind == "table" and table_exists(conn, name) and scalar(conn, f'SELECT EXISTS (SELECT 1 FROM "{name}")'):
            keeps.append({"kind": kind, "name": name, "why": "holds rows taskdb did not create: drop it by hand"})
        elif kind == "column":
            drops.append({"kind": kind, "name": name, "rows_with_a_value": column_values_estimate(conn, name)})
        else:
            drops.append({"kind": kind, "name": name})
    if rev.revision == cron.CRON_REVISION:
        drops += [
            {"kind": "pg_cron job", "name": str(job["jobname"]), "cron_database": str(job["cron_database"])}
            for job in cron.recorded_jobs(conn)
        ]
    frozen = getattr(rev.module, "SQL", {}).get("drop_objects", "")
    return {
        "revision": rev.revision,
        "title": doc,
        "drops": drops,
        "keeps": keeps,
        "statements": [first_line(statement) for statement in split_statements(frozen)],
    }


def first_line(statement: str) -> str:
    """A statement's first line of code (its leading comments skipped): enough to say what it drops."""
    return next(line.strip() for line in statement.splitlines() if line.strip() and not line.lstrip().startswith("--"))


def owned_by(conn: Connection, revision: str) -> list[tuple[str, str]]:
    """What ``revision`` recorded as created by it, newest first (the order a downgrade undoes it)."""
    if not table_exists(conn, OWNED_TABLE):
        return []
    return [
        (r["kind"], r["name"])
        for r in rows(
            conn, f"SELECT kind, name FROM {OWNED_TABLE} WHERE revision = :r ORDER BY seq DESC", {"r": revision}
        )
    ]


def column_values_estimate(conn: Connection, qualified: str) -> int | None:
    """Rows whose ``table.column`` holds a value, estimated from the planner's statistics (no scan of a big
    table); None before ANALYZE has seen the column."""
    table, column = qualified.split(".", 1)
    return scalar(
        conn,
        """
        SELECT round(c.reltuples * (1 - s.null_frac))::bigint
        FROM pg_stats s JOIN pg_class c ON c.relname = s.tablename
        JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = s.schemaname
        WHERE s.schemaname = current_schema() AND s.tablename = :t AND s.attname = :c AND c.reltuples >= 0
    """,
        {"t": table, "c": column},
    )
