"""What one scrape of `taskdb metrics` costs on a large upgraded queue.

    python benchmarks/metrics_cost.py [--rows 1000000] [--queued 20000 200000] [--out docs/benchmarks.md]

For each Queued backlog: a throwaway PostgreSQL (taskdb.testing), an empty database upgraded to head, then
``--rows`` tasks as an upgraded queue holds them (1,000 users, a tenth without credits; cloud and local; 1% flagged
and Failed; the backlog Queued, spread over 10 days so that some are stale, some past queued_ttl; the rest Complete),
a task_hygiene_log with one cancellation per 20 tasks over 30 days and a run history; VACUUM ANALYZE. Then 25 scrapes
through :class:`taskdb.metrics.Scraper` (one connection kept, one READ ONLY transaction each, as
``taskdb metrics --listen`` does) after 3 to warm up, and EXPLAIN (ANALYZE, BUFFERS) of the scrape's query. Reported:
the median and slowest scrape (wall clock, round trips included), the query's execution time and the buffers it
touched.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from report import machine, write_section  # benchmarks/report.py (this script's folder is on sys.path)

from taskdb import api
from taskdb.config import normalize_url
from taskdb.metrics import Scraper
from taskdb.metrics.collector import SQL
from taskdb.testing import start_postgres

WARMUP, SCRAPES = 3, 25


def build(engine: sa.Engine, rows: int, queued: int) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO users (id, credits) SELECT md5('u' || n)::uuid, CASE WHEN n % 10 = 0 THEN 0 ELSE 100 END "
            "FROM generate_series(0, 999) n".replace("%", "%%")
        )
        conn.exec_driver_sql(
            f"""
            INSERT INTO tasks (id, task_type, params, status, attempts, created_at, user_id, run_type, legacy_reason)
            SELECT md5('t' || n)::uuid, 'bulk', '{{}}',
                   CASE WHEN n <= {queued} THEN 'Queued' WHEN n % 100 = 0 THEN 'Failed' ELSE 'Complete' END,
                   1,
                   now() - CASE WHEN n <= {queued} THEN (n % 14400) * interval '1 minute'
                                ELSE (n % 43200) * interval '1 minute' END,
                   CASE WHEN n > {queued} AND n % 100 = 0 THEN NULL ELSE md5('u' || (n % 1000))::uuid END,
                   CASE WHEN n % 3 = 0 THEN 'local' ELSE 'cloud' END,
                   CASE WHEN n > {queued} AND n % 100 = 0 THEN 'missing_user_id' END
            FROM generate_series(1, {rows}) n
            """.replace("%", "%%")
        )
        conn.exec_driver_sql(
            f"""
            INSERT INTO task_hygiene_log (task_id, action, reason, previous, applied, acted_at, actor)
            SELECT md5('t' || n)::uuid, 'cancel', 'stale', '{{}}', '{{}}',
                   now() - (n % 43200) * interval '1 minute', 'bench'
            FROM generate_series(1, {rows // 20}) n
            """.replace("%", "%%")
        )
        conn.exec_driver_sql(
            "INSERT INTO task_hygiene_runs (actor, max_age, batch_size, started_at, finished_at, cancelled) "
            "SELECT 'bench', interval '7 days', 10000, now() - n * interval '1 day', "
            "now() - n * interval '1 day' + interval '1 second', 50 FROM generate_series(1, 365) n"
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")


def explain(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {SQL['scrape']}").scalar_one()[0]
    top = plan["Plan"]
    return {
        "execution_ms": plan["Execution Time"],
        "planning_ms": plan["Planning Time"],
        "buffers": top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0),
    }


def bench(rows: int, queued: int, backend: str | None) -> dict[str, Any]:
    with start_postgres(backend) as server:
        url = normalize_url(server.url(server.create_database("bench")))
        api.upgrade(url)
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        started = time.perf_counter()
        build(engine, rows, queued)
        build_s = time.perf_counter() - started
        scraper = Scraper(url)
        times = []
        try:
            for n in range(WARMUP + SCRAPES):
                started = time.perf_counter()
                figures = scraper.read()
                if n >= WARMUP:
                    times.append(time.perf_counter() - started)
        finally:
            scraper.close()
        found = explain(engine)
        engine.dispose()
        return {
            "rows": rows,
            "queued": queued,
            "build_s": build_s,
            "median_ms": statistics.median(times) * 1000,
            "max_ms": max(times) * 1000,
            "claimable": figures["claimable_cloud"] + figures["claimable_local"],
            "stale": figures["stale_count"],
            **found,
            "major": server.major,
            "backend": server.backend,
        }


def report(results: list[dict[str, Any]], command: str) -> str:
    first = results[0]
    lines = [
        "## `taskdb metrics` cost per scrape (`benchmarks/metrics_cost.py`)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d}, PostgreSQL {first['major']} ({first['backend']} backend), {machine()}; "
        "the machine was shared with other work while it ran, so the slowest scrape is noisy. An upgraded queue: "
        "1,000 users (a tenth without credits), cloud and local tasks, 1% flagged, the Queued backlog spread over "
        "10 days (stale ones and ones past queued_ttl among them), the rest Complete; one logged cancellation per "
        f"20 tasks and a year of cleanup runs. {SCRAPES} scrapes through one kept connection (as `--listen` "
        f"does), after {WARMUP} to warm up; wall clock includes the transaction's round trips (BEGIN READ ONLY, "
        "search_path, lock and statement timeouts, the query, COMMIT). Query ms and buffers: EXPLAIN (ANALYZE, "
        f"BUFFERS) of the one query (8 kB pages, shared hit + read). Command: `{command}`",
        "",
        "| rows | Queued | scrape ms (median) | scrape ms (slowest) | query ms | planning ms | buffers | "
        "claimable / stale |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    lines += [
        f"| {r['rows']:,} | {r['queued']:,} | {r['median_ms']:.1f} | {r['max_ms']:.1f} | {r['execution_ms']:.1f} | "
        f"{r['planning_ms']:.1f} | {r['buffers']:,} | {r['claimable']:,.0f} / {r['stale']:,.0f} |"
        for r in results
    ]
    lines += [
        "",
        "What it says: a scrape never reads the whole table. It reads the Queued rows through their partial "
        "index, several times (queue_health's counts, claimable_task_count per run type inside it, the "
        "per-run-type and flagged counts), the flagged rows through tasks_flagged_idx (queue_health's "
        "flagged_count: 1% of the table here, most of the buffers at 20,000 Queued) and the last day's "
        "cancellations through the log's partial index. Its cost follows the Queued backlog and the flagged rows, "
        "not the table's size: tens of milliseconds for a healthy queue, under a second for a backlog of "
        "200,000, well inside the 5 s default --timeout.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queued", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--backend", default="local")
    parser.add_argument("--out", default=None, help="replace the metrics section of this Markdown file")
    args = parser.parse_args()
    results = []
    for queued in args.queued:
        print(f"== {args.rows:,} rows, {queued:,} Queued", file=sys.stderr)
        results.append(bench(args.rows, queued, args.backend))
        print(report(results[-1:], ""), file=sys.stderr)
    command = f"python benchmarks/metrics_cost.py --rows {args.rows} --queued " + " ".join(map(str, args.queued))
    section = report(results, command)
    print(section)
    if args.out:
        write_section(Path(args.out), "metrics", section)


if __name__ == "__main__":
    main()
