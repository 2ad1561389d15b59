"""Cost of the hygiene objects on a large tasks table: claimable_task_count, claim_next_task,
queue_health, stale_queued_tasks and cancel_stale_queued_tasks, with their plans.

    python benchmarks/hygiene_cost.py --rows 5000000 --queued 10000 [--backend local] [--out docs/benchmarks.md]

Builds a throwaway PostgreSQL (taskdb.testing), an upgraded schema, N healthy tasks of 1,000 users with
`--queued` of them Queued (a tenth of those older than the TTL) and the task_hygiene_log an upgrade's
backfill leaves behind (`--log-rows`, default 60 % of N), then times each call REPEAT times in a
transaction it rolls back (so a claim or a cleanup meets the same queue every time: median and worst,
milliseconds) and keeps the plans of one more call: the functions are opaque to EXPLAIN, so auto_explain
reports every statement they run (log_nested_statements), with actual times and buffers. The calls that
read the log (queue_health, and claimable_task_count for comparison) are timed again with the log emptied
(in a transaction rolled back): what the history costs them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from report import machine, write_section  # benchmarks/report.py (this script's folder is on sys.path)

from taskdb import api
from taskdb.testing import start_postgres

REPEAT = 20
CALLS = {
    "claimable_task_count('gpu')": "SELECT claimable_task_count('gpu')",
    "claimable_task_count('gpu', true)": "SELECT claimable_task_count('gpu', true)",
    "claim_next_task (rolled back)": "SELECT id FROM claim_next_task('bench', 'gpu')",
    "queue_health": "SELECT * FROM queue_health",
    "stale_queued_tasks (count)": "SELECT count(*) FROM stale_queued_tasks",
    "cancel_stale_queued_tasks() (rolled back)": "SELECT cancel_stale_queued_tasks()",
}
# auto_explain to the client (as NOTICEs) for this session only: the plans inside the functions too.
AUTO_EXPLAIN = {
    "log_min_duration": "0",
    "log_analyze": "on",
    "log_buffers": "on",
    "log_timing": "on",
    "log_nested_statements": "on",
    "log_level": "notice",
}


def load(engine: sa.Engine, rows: int, queued: int, log_rows: int) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO users (id, credits) SELECT md5('u' || n)::uuid, 10 FROM generate_series(1, 1000) n"
        )
        # rows - queued finished tasks, then `queued` Queued ones (10 % past the 7-day TTL)
        conn.exec_driver_sql(
            f"""
            INSERT INTO tasks (task_type, status, attempts, created_at, user_id, run_type)
            SELECT 'bulk', CASE WHEN n %% 10 = 0 THEN 'Failed' ELSE 'Complete' END, 1,
                   now() - (n %% 100000) * interval '1 minute', md5('u' || (n %% 1000 + 1))::uuid,
                   CASE WHEN n %% 3 = 0 THEN 'local' ELSE 'cloud' END
            FROM generate_series(1, {rows - queued}) n
            """
        )
        conn.exec_driver_sql(
            f"""
            INSERT INTO tasks (task_type, status, attempts, created_at, user_id, run_type)
            SELECT 'bulk', 'Queued', 0,
                   now() - CASE WHEN n %% 10 = 0 THEN interval '9 days' ELSE (n %% 600) * interval '1 minute' END,
                   md5('u' || (n %% 1000 + 1))::uuid, CASE WHEN n %% 3 = 0 THEN 'local' ELSE 'cloud' END
            FROM generate_series(1, {queued}) n
            """
        )
        # the log as an upgrade leaves it (a row per task its backfill changed), a month old, and a hundredth
        # as many cancellations of the last day (the upgrade's own cleanup, the daily job)
        conn.exec_driver_sql(
            f"""
            INSERT INTO task_hygiene_log (task_id, action, reason, previous, applied, actor, acted_at)
            SELECT id, 'backfill', 'user_id from the project owner', '{{"user_id": null}}',
                   jsonb_build_object('user_id', user_id), 'taskdb revision 0003_backfill', now() - interval '30 days'
            FROM tasks WHERE status <> 'Queued' LIMIT {log_rows}
            """
        )
        conn.exec_driver_sql(
            f"""
            INSERT INTO task_hygiene_log (task_id, action, reason, previous, applied, actor, acted_at)
            SELECT id, 'cancel', 'stale', '{{"status": "Queued"}}', '{{"status": "Cancelled"}}',
                   'pg_cron job taskdb_cancel_stale_queued', now() - (n %% 1440) * interval '1 minute'
            FROM (SELECT id, row_number() OVER () AS n FROM tasks WHERE status = 'Failed' LIMIT {log_rows // 100}) f
            """
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")  # as autovacuum would have, users included


def timed(engine: sa.Engine, sql: str) -> tuple[float, float, str]:
    samples = []
    with engine.connect() as conn:
        for _ in range(REPEAT):
            started = time.perf_counter()
            conn.exec_driver_sql(sql).all()
            samples.append((time.perf_counter() - started) * 1000)
            conn.rollback()  # a claim or a cleanup is undone: every sample sees the same queue
    return statistics.median(samples), max(samples), plans(engine, sql)


# The calls timed a second time with an empty log.
HISTORY_FREE = ("queue_health", "claimable_task_count('gpu')")


def timed_without_log(engine: sa.Engine, sql: str) -> tuple[float, float]:
    """As :func:`timed`, in a transaction that emptied task_hygiene_log (rolled back: the log stays)."""
    samples = []
    with engine.connect() as conn:
        conn.exec_driver_sql("TRUNCATE task_hygiene_log")
        for _ in range(REPEAT):
            conn.exec_driver_sql("SAVEPOINT sample")
            started = time.perf_counter()
            conn.exec_driver_sql(sql).all()
            samples.append((time.perf_counter() - started) * 1000)
            conn.exec_driver_sql("ROLLBACK TO SAVEPOINT sample")
        conn.rollback()
    return statistics.median(samples), max(samples)


def plans(engine: sa.Engine, sql: str) -> str:
    """Every plan the call runs, outermost last (auto_explain reports a statement when it ends)."""
    notices: list[str] = []
    with engine.connect() as conn:
        conn.connection.driver_connection.add_notice_handler(  # type: ignore[union-attr]
            lambda diag: notices.append(diag.message_primary or "")
        )
        conn.exec_driver_sql("LOAD 'auto_explain'")
        for name, value in AUTO_EXPLAIN.items():
            conn.exec_driver_sql(f"SET auto_explain.{name} = '{value}'")
        conn.exec_driver_sql(sql).all()
        conn.rollback()
    return "\n\n".join(n.strip() for n in notices if "plan:" in n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument(
        "--log-rows",
        type=int,
        default=None,
        help="task_hygiene_log rows, as an upgrade leaves them (default: 60 %% of --rows)",
    )
    parser.add_argument("--backend", default=None)
    parser.add_argument("--out", default=None, help="replace the hygiene section of this Markdown file")
    args = parser.parse_args()
    with start_postgres(args.backend) as server:
        url = server.url(server.create_database("bench"))
        api.upgrade(url)
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"), poolclass=sa.NullPool)
        started = time.perf_counter()
        log_rows = int(args.rows * 0.6) if args.log_rows is None else args.log_rows
        load(engine, args.rows, args.queued, log_rows)
        load_s = time.perf_counter() - started
        results = {name: timed(engine, sql) for name, sql in CALLS.items()}
        without_log = {name: timed_without_log(engine, CALLS[name]) for name in HISTORY_FREE}
        with engine.connect() as conn:
            cancelled = conn.exec_driver_sql("SELECT cancel_stale_queued_tasks()").scalar()
            conn.rollback()
        engine.dispose()
        lines = [
            f"## Hygiene objects at {args.rows:,} rows ({args.queued:,} Queued, {log_rows:,} log rows)",
            "",
            f"{datetime.now(UTC):%Y-%m-%d}, PostgreSQL {server.major} ({server.backend} backend), {machine()}; "
            f"load {load_s:.0f} s. Each call {REPEAT} times, rolled back; a cleanup call cancels {cancelled} "
            f"stale tasks (one batch). Command: "
            f"`python benchmarks/hygiene_cost.py --rows {args.rows} --queued {args.queued}"
            f"{' --backend ' + args.backend if args.backend else ''}`. The log holds what an "
            "upgrade's backfill leaves (a row per task it changed, by default 60 % of the rows, a month old).",
            "",
            f"| call | median ms | worst ms (of {REPEAT}) |",
            "| --- | ---: | ---: |",
            *(f"| `{name}` | {med:.2f} | {worst:.2f} |" for name, (med, worst, _) in results.items()),
            "",
            "What the log costs the calls that read it (medians side by side in this run; the goal: at most x1.5):",
            "",
            "| call | with the log, ms | with an empty log, ms | ratio |",
            "| --- | ---: | ---: | ---: |",
            *(
                f"| `{name}` | {results[name][0]:.2f} | {without_log[name][0]:.2f} | "
                f"x{results[name][0] / max(without_log[name][0], 0.001):.2f} |"
                for name in HISTORY_FREE
            ),
            "",
            "<details><summary>plans (auto_explain, nested statements included)</summary>",
            "",
            *(f"`{name}`\n```\n{plan}\n```\n" for name, (_, _, plan) in results.items()),
            "</details>",
        ]
        report = "\n".join(lines)
        print(report)
        if args.out:
            write_section(Path(args.out), "hygiene", report)


if __name__ == "__main__":
    main()
