"""Two pods of one deploy start `taskdb upgrade` at the same moment, under the application's writes.

    python benchmarks/two_pods.py --rows 100000 --pairs 3 [--out docs/benchmarks.md]

For each path (a direct connection, PgBouncer in transaction mode with a pool of 3): a fresh copy of the
half-migrated table of benchmarks/online.py (N rows, 60 % legacy), two writer threads inserting and claiming
tasks through the same path, then two `taskdb upgrade` processes started together. Per pair: both exit codes,
which one waited for the upgrade lock, each process's time, and afterwards what must never be: an INVALID
index, a NOT VALID constraint, a task changed twice for the same reason in task_hygiene_log, a writer error.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from online import DURABLE, build  # benchmarks/online.py (this script's folder is on sys.path)
from report import machine, write_section

from taskdb.config import normalize_url
from taskdb.testing import start_postgres
from taskdb.testing.pgbouncer import PgBouncer

ROOT = Path(__file__).resolve().parents[1]
WRITE = (
    "INSERT INTO tasks (task_type, params, status, user_id, run_type) "
    "VALUES ('app', '{}', 'Queued', md5('u' || (random() * 999)::int)::uuid, 'cloud')"
)
CLAIM = (
    "UPDATE tasks SET status = 'In Progress', worker_id = 'pod', updated_at = now() WHERE id = ("
    "SELECT id FROM tasks WHERE status = 'Queued' AND run_type = 'cloud' AND user_id IS NOT NULL "
    "ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)"
)
AFTER = {
    "invalid_indexes": "SELECT count(*) FROM pg_index WHERE indrelid = 'tasks'::regclass AND NOT indisvalid",
    "not_valid_constraints": "SELECT count(*) FROM pg_constraint WHERE conrelid = 'tasks'::regclass "
    "AND NOT convalidated",
    "duplicate_log_rows": "SELECT count(*) - count(DISTINCT (task_id, action, reason, actor)) FROM task_hygiene_log",
}


@dataclass
class Writers:
    conninfo: str
    count: int = 2
    ops: int = 0
    worst_ms: float = 0.0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def work(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True, prepare_threshold=None) as conn:
            while not self.stop.is_set():
                for statement in (WRITE, CLAIM):
                    started = time.perf_counter()
                    try:
                        conn.execute(statement)
                        self.ops += 1
                    except psycopg.Error as exc:
                        self.errors.append(str(exc).strip().splitlines()[0])
                    self.worst_ms = max(self.worst_ms, (time.perf_counter() - started) * 1000)
                time.sleep(0.02)

    def __enter__(self) -> Writers:
        self.threads = [threading.Thread(target=self.work, daemon=True) for _ in range(self.count)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def pair(url: str, conninfo: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKDB_") and k != "DATABASE_URL"}
    env["TASKDB_DATABASE_URL"] = url
    with Writers(conninfo) as writers, tempfile.TemporaryDirectory() as logs:
        started = time.monotonic()
        errs = [Path(logs, f"pod{n}.err") for n in range(2)]
        pods = [
            subprocess.Popen(
                [sys.executable, "-m", "taskdb.cli", "upgrade"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err.open("w"),
            )
            for err in errs
        ]
        seconds: dict[int, float] = {}
        while len(seconds) < len(pods):  # each pod's own end, whichever ends first
            for n, pod in enumerate(pods):
                if n not in seconds and pod.poll() is not None:
                    seconds[n] = time.monotonic() - started
            time.sleep(0.05)
        stderr = [err.read_text() for err in errs]
    return {
        "exits": [pod.returncode for pod in pods],
        "seconds": [round(seconds[n], 1) for n in range(len(pods))],
        "waited": ["holds the upgrade lock" in err for err in stderr],
        "writer_ops": writers.ops,
        "writer_errors": len(writers.errors),
        "writer_worst_ms": round(writers.worst_ms),
    }


def run(rows: int, pairs: int) -> list[dict[str, Any]]:
    results = []
    with start_postgres(settings=DURABLE) as server:
        template = server.create_database()
        engine = sa.create_engine(normalize_url(server.url(template)), poolclass=sa.NullPool)
        build(engine, rows)
        engine.dispose()
        with PgBouncer(server, mode="transaction", pool_size=3) as pooler:
            for path in ("direct", "transaction pooler"):
                for number in range(pairs):
                    name = server.create_database(template=template)
                    url, conninfo = (
                        (server.url(name), server.url(name))
                        if path == "direct"
                        else (pooler.url(name), pooler.conninfo(name))
                    )
                    result = {"path": path, "pair": number + 1, **pair(url, conninfo)}
                    with psycopg.connect(server.url(name), autocommit=True) as conn:
                        result |= {key: conn.execute(sql).fetchone()[0] for key, sql in AFTER.items()}  # type: ignore[index]
                    print(result, flush=True)
                    results.append(result)
    return results


def render(rows: int, results: list[dict[str, Any]]) -> str:
    lines = [
        "## Two pods upgrade at once (`benchmarks/two_pods.py`)",
        "",
        f"{rows:,} rows (benchmarks/online.py's half-migrated table), two writers inserting and claiming through "
        f"the same path, two `taskdb upgrade` started together; {machine()}. The waiting pod holds no transaction "
        "while it waits, so the first one's `CREATE INDEX CONCURRENTLY` never waits for it.",
        "",
        "| path | pair | exits | waited | seconds (each pod) | writer ops | writer errors | writers' worst ms "
        "| INVALID indexes | NOT VALID constraints | duplicate log rows |",
        "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['path']} | {r['pair']} | {r['exits']} | {r['waited']} | {r['seconds']} | {r['writer_ops']} "
            f"| {r['writer_errors']} | {r['writer_worst_ms']} | {r['invalid_indexes']} | {r['not_valid_constraints']} "
            f"| {r['duplicate_log_rows']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the table into this markdown file (e.g. docs/benchmarks.md)")
    args = parser.parse_args()
    results = run(args.rows, args.pairs)
    section = render(args.rows, results)
    print(section)
    if args.out:
        write_section(args.out, "two-pods", section)
    if any(
        r["exits"] != [0, 0]
        or r["writer_errors"]
        or r["invalid_indexes"]
        or r["not_valid_constraints"]
        or r["duplicate_log_rows"]
        for r in results
    ):
        sys.exit(1)


if __name__ == "__main__":
    main()
