"""What `taskdb plan` costs against the upgrade it predicts, on the same legacy rows, side by side.

    python benchmarks/plan_cost.py --rows 100000 300000 1000000 [--backend local] [--out docs/benchmarks.md]

For each size: a throwaway PostgreSQL (taskdb.testing), a legacy tasks table as issue 15 measured it (no user_id
or run_type column yet: users and run types to derive from params or the project, 'GPU' spellings, a fifth
Queued, orchestrator parent chains, Queued tasks that depend on others) built once, then `taskdb plan` (the
library's taskdb.plan.plan on one connection, as the CLI runs it) and `taskdb upgrade` on the same rows, in that
order, in the same run. Reported: both times, their ratio, plan seconds per 100,000 rows, how long plan's
REPEATABLE READ transaction (its snapshot, which holds back vacuum) stayed open, the temporary files its
queries wrote, and whether the upgrade then did what the plan said (its counts against the upgrade's log).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from report import machine, write_section  # benchmarks/report.py (this script's folder is on sys.path)

from taskdb import api, plan, seeds
from taskdb.config import normalize_url
from taskdb.testing import start_postgres

# Issue 15's figures for the plan before it was set-based (same kind of table, same machine class).
BEFORE = {100_000: (64.8, None), 300_000: (549.7, 14.5)}


def build(engine: sa.Engine, rows: int) -> None:
    """The legacy table: tasks without user_id / run_type columns; what the backfill derives is in params or the
    project. Per ten tasks (n % 10): 0-4 user and run type in params ('GPU', ' gpu', 'cloud', 'Local '), 5-6 a
    project and a run type in params, 7 a run type only (a third of them nothing at all: flagged), 8 the
    orchestrator task n - 3 in params, 9 the orchestrator task n - 1 (a chain of two). A fifth Queued (some
    spelt 'queued', a few ' complete ' or unknown), created over 30 days so that many Queued ones are older than
    the 7-day TTL; every third Queued one depends on a Queued task eight days older (its cleanup cancels them).
    None is created in the three hours before the TTL: none grows stale between the plan (which counts at its
    moment) and the upgrade's cleanup minutes later."""
    with engine.begin() as conn:
        seeds.load_schema(conn, "legacy")
        conn.exec_driver_sql(
            "INSERT INTO users (id, credits) SELECT md5('u' || n)::uuid, CASE WHEN n %% 10 = 0 THEN 0 ELSE 100 END "
            "FROM generate_series(0, 999) n"
        )
        conn.exec_driver_sql(
            "INSERT INTO projects (id, user_id) SELECT md5('p' || n)::uuid, md5('u' || (n %% 1000))::uuid "
            "FROM generate_series(0, 1999) n"
        )
        conn.exec_driver_sql(
            f"""
            INSERT INTO tasks (id, task_type, params, status, attempts, created_at, project_id, dependant_on)
            SELECT md5('t' || n)::uuid, 'bulk',
                   CASE WHEN n % 10 < 5
                        THEN jsonb_build_object('user_id', md5('u' || (n % 1000))::uuid,
                                                'run_type', (ARRAY['GPU', ' gpu', 'cloud', 'Local '])[n % 4 + 1])
                        WHEN n % 10 IN (5, 6) THEN '{{"run_type": "GPU"}}'::jsonb
                        WHEN n % 10 = 7 AND n % 3 = 0 THEN '{{}}'::jsonb
                        WHEN n % 10 = 7 THEN '{{"run_type": "local"}}'::jsonb
                        WHEN n % 10 = 8 THEN jsonb_build_object('orchestrator_task_id_ref', md5('t' || (n - 3))::uuid)
                        ELSE jsonb_build_object('orchestrator_task_id_ref', md5('t' || (n - 1))::uuid) END,
                   CASE WHEN (n / 7) % 5 = 0 THEN CASE WHEN n % 4 = 0 THEN 'queued' ELSE 'Queued' END
                        WHEN n % 101 = 0 THEN ' complete '
                        WHEN n % 997 = 0 THEN 'bogus'
                        WHEN n % 10 = 1 THEN 'Failed'
                        ELSE 'Complete' END,
                   1,
                   now() - (n % 43200) * interval '1 minute'
                   - CASE WHEN n % 43200 BETWEEN 9900 AND 10079 THEN interval '3 hours' ELSE interval '0' END,
                   CASE WHEN n % 10 IN (5, 6) THEN md5('p' || (n % 2000))::uuid END,
                   CASE WHEN (n / 7) % 5 = 0 AND n % 3 = 0 THEN md5('t' || (n + 11550))::uuid END
            FROM generate_series(1, {rows}) n
        """.replace("%", "%%")
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")


def timed_plan(engine: sa.Engine) -> tuple[float, float, dict[str, Any]]:
    """plan.plan on one connection: its total seconds, the seconds its REPEATABLE READ transaction was open
    (from its BEGIN to its COMMIT, as the server saw them sent), and its result."""
    marks: dict[str, float] = {}

    def mark(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("BEGIN ISOLATION LEVEL REPEATABLE READ"):
            marks["begin"] = time.perf_counter()
        elif statement == "COMMIT" and "begin" in marks and "commit" not in marks:
            marks["commit"] = time.perf_counter()

    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        sa.event.listen(conn, "before_cursor_execute", mark)
        started = time.perf_counter()
        result = plan.plan(conn)
        seconds = time.perf_counter() - started
    return seconds, marks["commit"] - marks["begin"], result


def temp_bytes(engine: sa.Engine) -> int:
    """Bytes of temporary files this database's queries have written (pg_stat_database; a session's statistics
    reach it when the session ends, hence the pause)."""
    time.sleep(1.5)
    with engine.connect() as conn:
        return int(
            conn.exec_driver_sql(
                "SELECT temp_bytes FROM pg_stat_database WHERE datname = current_database()"
            ).scalar_one()
        )


def bench(rows: int, backend: str | None) -> dict[str, Any]:
    with start_postgres(backend) as server:
        url = normalize_url(server.url(server.create_database("bench")))
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        started = time.perf_counter()
        build(engine, rows)
        build_s = time.perf_counter() - started
        temp_before = temp_bytes(engine)
        plan_s, snapshot_s, result = timed_plan(engine)
        temp_mb = (temp_bytes(engine) - temp_before) / 2**20
        engine.dispose()
        upgrade = api.upgrade(url)
        counts = result["rows"]
        # the plan's counts against what the upgrade logged (tests/integration/test_plan.py holds them row by row)
        predicted = (
            counts["backfilled"],
            counts["flagged"],
            counts["cleanup_stale"] + counts["cleanup_children"],
            counts["flag_reasons"],
        )
        changes = upgrade["changes"]
        done = (
            changes.get("backfill", 0),
            changes.get("flag", 0),
            changes.get("cancel", 0),
            upgrade["flagged_by_reason"],
        )
        names = ("backfilled", "flagged", "cancelled", "flag reasons")
        return {
            "mismatch": "; ".join(
                f"{name}: plan {want}, upgrade {got}"
                for name, want, got in zip(names, predicted, done, strict=True)
                if want != got
            ),
            "rows": rows,
            "build_s": build_s,
            "plan_s": plan_s,
            "snapshot_s": snapshot_s,
            "temp_mb": temp_mb,
            "upgrade_s": upgrade["seconds"],
            "counts": counts,
            "major": server.major,
            "backend": server.backend,
        }


def report(results: list[dict[str, Any]], command: str) -> str:
    first = results[0]
    lines = [
        "## `taskdb plan` cost (`benchmarks/plan_cost.py`)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d}, PostgreSQL {first['major']} ({first['backend']} backend), {machine()}. "
        "A legacy table (no user_id / run_type columns: users and run types from params or the project, 'GPU' "
        "spellings, a fifth Queued, orchestrator parent chains, Queued tasks depending on others), built once per "
        "size; `taskdb plan` then `taskdb upgrade` on the same rows, in one run. snapshot s: how long plan's "
        "REPEATABLE READ transaction was open; temp files: what its queries wrote to disk (work_mem 4MB, the "
        "default); as the plan said: its backfilled, flagged, cancelled counts and flag reasons equal what the "
        f"upgrade logged. Command: `{command}`",
        "",
        "| rows | plan s | upgrade s | plan / upgrade | plan s per 100k rows | snapshot s | plan temp files MB "
        "| backfilled / flagged / cancelled by the cleanup | as the plan said |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in results:
        c = r["counts"]
        lines.append(
            f"| {r['rows']:,} | {r['plan_s']:.2f} | {r['upgrade_s']:.1f} | {r['plan_s'] / r['upgrade_s']:.3f} | "
            f"{r['plan_s'] * 100_000 / r['rows']:.2f} | {r['snapshot_s']:.2f} | {r['temp_mb']:.0f} | "
            f"{c['backfilled']:,} / {c['flagged']:,} / {c['cleanup_stale'] + c['cleanup_children']:,} | "
            f"{'**no**: ' + r['mismatch'] if r['mismatch'] else 'yes'} |"
        )
    if len(results) > 1:
        lines += ["", "Growth (plan s per row, relative to the smallest size):", ""]
        base = results[0]["plan_s"] / results[0]["rows"]
        lines += [
            f"- x{r['rows'] / first['rows']:g} rows: plan x{r['plan_s'] / first['plan_s']:.2f} "
            f"(per row x{r['plan_s'] / r['rows'] / base:.2f}); upgrade x{r['upgrade_s'] / first['upgrade_s']:.2f}"
            for r in results[1:]
        ]
    lines += [
        "",
        "Before (issue 15, the plan of correlated subqueries): "
        + "; ".join(
            f"{rows:,} rows: plan {plan_s:g} s" + (f" vs upgrade {up_s:g} s (x{plan_s / up_s:.0f})" if up_s else "")
            for rows, (plan_s, up_s) in BEFORE.items()
        )
        + ".",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--backend", default="local")
    parser.add_argument("--out", default=None, help="replace the plan section of this Markdown file")
    args = parser.parse_args()
    results = []
    for rows in args.rows:
        print(f"== {rows:,} rows", file=sys.stderr)
        results.append(bench(rows, args.backend))
        print(report(results[-1:], ""), file=sys.stderr)
    command = "python benchmarks/plan_cost.py --rows " + " ".join(str(r) for r in args.rows)
    section = report(results, command)
    print(section)
    if args.out:
        write_section(Path(args.out), "plan", section)


if __name__ == "__main__":
    main()
