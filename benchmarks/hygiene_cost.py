"""Cost of the hygiene objects on a large tasks table: claimable_task_count, claim_next_task,
queue_health, stale_queued_tasks and cancel_stale_queued_tasks, with their plans.

    python benchmarks/hygiene_cost.py --rows 1000000 --queued 10000 [--backend local] [--out docs/benchmarks-hygiene.md]

Builds a throwaway PostgreSQL (taskdb.testing), an upgraded schema, N healthy tasks of 1,000 users with
`--queued` of them Queued (a tenth of those older than the TTL), then times each call REPEAT times
(median and worst, milliseconds) and keeps one EXPLAIN ANALYZE per call.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import UTC, datetime

import sqlalchemy as sa

from taskdb import api
from taskdb.testing import start_postgres

REPEAT = 20
CALLS = {
    "claimable_task_count('gpu')": "SELECT claimable_task_count('gpu')",
    "claimable_task_count('gpu', true)": "SELECT claimable_task_count('gpu', true)",
    "claim_next_task (rolled back)": "SELECT id FROM claim_next_task('bench', 'gpu')",
    "queue_health": "SELECT * FROM queue_health",
    "stale_queued_tasks (count)": "SELECT count(*) FROM stale_queued_tasks",
}


def load(engine: sa.Engine, rows: int, queued: int) -> None:
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
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")  # as autovacuum would have, users included


def timed(engine: sa.Engine, sql: str) -> tuple[float, float, str]:
    samples = []
    with engine.connect() as conn:
        for _ in range(REPEAT):
            started = time.perf_counter()
            conn.exec_driver_sql(sql).all()
            samples.append((time.perf_counter() - started) * 1000)
            conn.rollback()  # a claim is undone: every sample sees the same queue
        plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {sql}"))
        conn.rollback()
    return statistics.median(samples), max(samples), plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--out", default=None, help="write a Markdown report here")
    args = parser.parse_args()
    with start_postgres(args.backend) as server:
        url = server.url(server.create_database("bench"))
        api.upgrade(url)
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"), poolclass=sa.NullPool)
        started = time.perf_counter()
        load(engine, args.rows, args.queued)
        load_s = time.perf_counter() - started
        results = {name: timed(engine, sql) for name, sql in CALLS.items()}
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            started = time.perf_counter()
            cancelled = conn.exec_driver_sql("SELECT cancel_stale_queued_tasks()").scalar()
            cleanup_ms = (time.perf_counter() - started) * 1000
        engine.dispose()
        lines = [
            f"## Hygiene objects at {args.rows:,} rows ({args.queued:,} Queued)",
            "",
            f"{datetime.now(UTC):%Y-%m-%d}, PostgreSQL {server.major} ({server.backend} backend), "
            f"{platform.machine()}, {platform.processor() or 'cpu'}; load {load_s:.0f} s. "
            f"Command: `python benchmarks/hygiene_cost.py --rows {args.rows} --queued {args.queued}`",
            "",
            f"| call | median ms | worst ms (of {REPEAT}) |",
            "| --- | ---: | ---: |",
            *(f"| `{name}` | {med:.2f} | {worst:.2f} |" for name, (med, worst, _) in results.items()),
            f"| `cancel_stale_queued_tasks()` (one batch, {cancelled} cancelled) | {cleanup_ms:.1f} | |",
            "",
            "<details><summary>plans</summary>",
            "",
            *(f"`{name}`\n```\n{plan}\n```\n" for name, (_, _, plan) in results.items()),
            "</details>",
        ]
        report = "\n".join(lines)
        print(report)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as out:
                out.write("# Benchmarks\n\n" + report + "\n")


if __name__ == "__main__":
    main()
