"""Online under load: the application's writers while taskdb upgrades a half-migrated tasks table, side by side
with a naive one-transaction migration of identical data.

    python benchmarks/online.py --rows 100000 1000000 5000000 [--rate 25] [--out docs/benchmarks.md]

For each size: a throwaway PostgreSQL (taskdb.testing, durable settings: fsync and synchronous_commit on),
the incident's half-migrated schema plus the application's own index on (status, created_at), N tasks of
which about 60 % are legacy rows without user_id / run_type (a third derivable from the project, a third
from params, a third not at all) and a few percent Queued. The database is copied (CREATE DATABASE ...
TEMPLATE) so both migrations meet identical rows. Four writer processes keep the application's traffic
going at a steady rate: insert a healthy task, claim one (FOR UPDATE SKIP LOCKED), complete one, and update
a legacy row. Every statement's latency is recorded, before and during the migration, with every error.
Rows lost = rows before + rows inserted - rows after.
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing as mp
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from report import machine, write_section  # benchmarks/report.py (this script's folder is on sys.path)

from taskdb import seeds
from taskdb.config import normalize_url
from taskdb.testing import start_postgres

ROOT = Path(__file__).resolve().parents[1]
DURABLE = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "512MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
}
WARMUP_S, BEFORE_S, AFTER_S = 2.0, 6.0, 2.0
# taskdb's log line as a step starts ("INFO  [taskdb.steps] 0003_backfill: backfill / flag ..."): its revision
STEP_STARTS = re.compile(r"\[taskdb\.steps\] (\d{4}_\w+): ")

# The application's traffic: one statement per operation, each in its own transaction (autocommit).
WRITES = {
    "insert": "INSERT INTO tasks (task_type, params, status, user_id, run_type) "
    "VALUES ('app', '{}', 'Queued', md5('u' || (random() * 999)::int)::uuid, 'cloud') RETURNING id",
    "claim": "UPDATE tasks SET status = 'In Progress', worker_id = 'bench', updated_at = now() WHERE id = ("
    "SELECT id FROM tasks WHERE status = 'Queued' AND run_type = 'cloud' AND user_id IS NOT NULL "
    "ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id",
    "complete": "UPDATE tasks SET status = 'Complete', updated_at = now() WHERE id = ("
    "SELECT id FROM tasks WHERE status = 'In Progress' AND worker_id = 'bench' "
    "LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id",
    # the GitLab lesson: the application still updates legacy rows while constraints are being added
    "update_legacy": "UPDATE tasks SET attempts = attempts + 1 WHERE id = CAST(%(id)s AS uuid) RETURNING id",
}

# What a hurried engineer would write: everything in one transaction, constraints validated at once.
NAIVE_MIGRATION = """
BEGIN;
ALTER TABLE tasks ADD COLUMN legacy_reason text;
UPDATE tasks t SET
    user_id = coalesce(t.user_id, (SELECT p.user_id FROM projects p WHERE p.id = t.project_id),
                       (SELECT u.id FROM users u WHERE u.id = CAST(nullif(t.params ->> 'user_id', '') AS uuid))),
    run_type = coalesce(CASE lower(btrim(t.run_type)) WHEN 'gpu' THEN 'cloud' WHEN 'cloud' THEN 'cloud'
                             WHEN 'local' THEN 'local' END,
                        CASE lower(btrim(t.params ->> 'run_type')) WHEN 'gpu' THEN 'cloud' WHEN 'cloud' THEN 'cloud'
                             WHEN 'local' THEN 'local' END)
WHERE t.user_id IS NULL OR t.run_type IS NULL OR t.run_type NOT IN ('cloud', 'local');
UPDATE tasks SET legacy_reason = 'missing_user_id',
                 status = CASE WHEN status = 'Queued' THEN 'Cancelled' ELSE status END
WHERE user_id IS NULL OR run_type IS NULL;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_valid
    CHECK (status IN ('Queued', 'In Progress', 'Complete', 'Failed', 'Cancelled'));
ALTER TABLE tasks ADD CONSTRAINT tasks_healthy_has_owner_and_run_type
    CHECK (legacy_reason IS NOT NULL OR (user_id IS NOT NULL AND run_type IN ('cloud', 'local')));
ALTER TABLE tasks ADD CONSTRAINT tasks_flagged_not_queued CHECK (legacy_reason IS NULL OR status <> 'Queued');
ALTER TABLE tasks ADD CONSTRAINT tasks_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id);
CREATE INDEX tasks_user_id_idx ON tasks (user_id);
COMMIT;
"""


def build(engine: sa.Engine, rows: int) -> None:
    """The half-migrated table: 40 % healthy, 60 % legacy (a third each: project, params, nothing)."""
    with engine.begin() as conn:
        seeds.load_schema(conn, "half_migrated")
        conn.exec_driver_sql("CREATE INDEX tasks_status_created_at_idx ON tasks (status, created_at)")  # the app's
        conn.exec_driver_sql(
            "INSERT INTO users (id, credits) SELECT md5('u' || n)::uuid, 100 FROM generate_series(0, 999) n"
        )
        conn.exec_driver_sql(
            "INSERT INTO projects (id, user_id) SELECT md5('p' || n)::uuid, md5('u' || (n %% 1000))::uuid "
            "FROM generate_series(0, 1999) n"
        )
        conn.exec_driver_sql(f"""
            INSERT INTO tasks (task_type, params, status, attempts, created_at, user_id, run_type, project_id)
            SELECT 'bulk',
                   CASE WHEN n %% 10 >= 4 AND n %% 3 = 1
                        THEN jsonb_build_object('user_id', md5('u' || (n %% 1000))::uuid, 'run_type', 'GPU')
                        ELSE '{{}}'::jsonb END,
                   CASE WHEN n %% 100 < 3 THEN 'Queued' WHEN n %% 10 = 9 THEN 'Failed' ELSE 'Complete' END,
                   1,
                   now() - (n %% 200000) * interval '1 minute',
                   CASE WHEN n %% 10 < 4 THEN md5('u' || (n %% 1000))::uuid END,
                   CASE WHEN n %% 10 < 4 THEN 'cloud' WHEN n %% 3 = 0 THEN ' gpu' END,
                   CASE WHEN n %% 10 >= 4 AND n %% 3 = 0 THEN md5('p' || (n %% 2000))::uuid END
            FROM generate_series(1, {rows}) n
        """)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")


def writer(kind: str, url: str, rate: float, stop: Any, out: str, legacy_ids: list[str]) -> None:
    """One application connection doing ``kind`` at ``rate`` per second until ``stop``; (start, ms, error)."""
    import psycopg

    samples: list[tuple[float, float, str | None]] = []
    period = 1.0 / rate
    with psycopg.connect(
        url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True, application_name=f"bench-{kind}"
    ) as conn:
        i = 0
        next_at = time.monotonic()
        while not stop.is_set():
            started_wall = time.time()
            started = time.perf_counter()
            error = None
            try:
                params = {"id": legacy_ids[i % len(legacy_ids)]} if kind == "update_legacy" else None
                conn.execute(WRITES[kind], params).fetchall()
            except psycopg.Error as exc:
                error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
            samples.append((started_wall, (time.perf_counter() - started) * 1000, error))
            i += 1
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))
    Path(out).write_text(json.dumps(samples))


# Sampled: what the writers' backends are doing (a wait event, or none: on a CPU or in the OS's run queue),
# and the statement taskdb's session is running (its first words, comments left out).
WAITS_SQL = """
SELECT application_name LIKE 'taskdb%' AS ours,
       CASE WHEN application_name LIKE 'taskdb%'
            THEN left(btrim(regexp_replace(regexp_replace(query, '--[^\\n]*', '', 'g'), '\\s+', ' ', 'g')), 48)
            ELSE coalesce(wait_event_type || ':' || wait_event, 'running') END
FROM pg_stat_activity
WHERE state = 'active' AND (application_name LIKE 'bench-%' OR application_name LIKE 'taskdb%')
"""


def sample_waits(url: str, stop: Any, out: str, interval_s: float = 0.02) -> None:
    """Every ``interval_s`` until ``stop``: (time, is taskdb's session, its statement or the writer's wait)."""
    import psycopg

    samples: list[tuple[float, bool, str]] = []
    with psycopg.connect(
        url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True, application_name="sampler"
    ) as conn:
        while not stop.is_set():
            now = time.time()
            samples.extend((now, ours, what) for ours, what in conn.execute(WAITS_SQL).fetchall())
            time.sleep(interval_s)
    Path(out).write_text(json.dumps(samples))


def statement_at(ours: list[tuple[float, str]], t: float, interval_s: float = 0.05) -> str | None:
    """taskdb's statement sampled last before ``t`` (``ours`` sorted by time), if still in flight then."""
    i = bisect.bisect_right(ours, (t, "\uffff")) - 1
    return ours[i][1] if i >= 0 and t - ours[i][0] <= interval_s else None


@dataclass
class Run:
    migration: str
    seconds: float
    latency: dict[str, dict[str, float]]  # window -> p50 / p99 / worst / n
    errors: list[str]
    rows_lost: int
    exit_code: int
    phases: dict[str, float]  # revision -> seconds (taskdb only; from its log lines as they arrive)
    worst_by_kind: dict[str, tuple[float, str]]  # writer kind -> (worst ms during, revision running then)
    by_revision: dict[str, dict[str, float]]  # revision -> p50 / p99 / worst / n of the statements it saw start
    waits: dict[str, dict[str, int]]  # revision -> wait event -> samples of writer statements in flight
    by_statement: dict[str, dict[str, float]]  # taskdb's statement in flight -> writers that started meanwhile


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": statistics.median(values) if values else 0.0,
        "p99": percentile(values, 0.99),
        "worst": max(values, default=0.0),
    }


def run_under_load(url: str, migration: str, rate: float, tmp: Path) -> Run:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        before_rows = conn.exec_driver_sql("SELECT count(*) FROM tasks").scalar()
        legacy_ids = [
            str(r[0]) for r in conn.exec_driver_sql("SELECT id FROM tasks WHERE user_id IS NULL ORDER BY id LIMIT 2000")
        ]
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    files = {kind: tmp / f"{migration}-{kind}.json" for kind in WRITES}
    procs = [ctx.Process(target=writer, args=(kind, url, rate, stop, str(files[kind]), legacy_ids)) for kind in WRITES]
    waits_file = tmp / f"{migration}-waits.json"
    procs.append(ctx.Process(target=sample_waits, args=(url, stop, str(waits_file))))
    for p in procs:
        p.start()
    time.sleep(WARMUP_S + BEFORE_S)
    env = os.environ | {"DATABASE_URL": url}  # not on the command line, where `ps` shows the password
    started_wall = time.time()
    started = time.perf_counter()
    command = (
        [sys.executable, "-m", "taskdb.cli", "upgrade"]
        if migration == "taskdb"
        else [sys.executable, "-c", NAIVE_RUNNER, NAIVE_MIGRATION]
    )
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    starts: list[tuple[str, float]] = []  # each revision's first step line, timed as it arrives
    stderr = []
    for line in proc.stderr or ():
        stderr.append(line)
        if (match := STEP_STARTS.search(line)) and (not starts or starts[-1][0] != match.group(1)):
            starts.append((match.group(1), time.perf_counter() - started))
    returncode = proc.wait()
    seconds = time.perf_counter() - started
    ends = [t for _, t in starts[1:]] + ([seconds] if starts else [])
    phases = {revision: end - start for (revision, start), end in zip(starts, ends, strict=True)}
    spans = [
        (revision, started_wall + start, started_wall + end)
        for (revision, start), end in zip(starts, ends, strict=True)
    ]
    ended_wall = time.time()
    time.sleep(AFTER_S)
    stop.set()
    for p in procs:
        p.join(timeout=120)
    if returncode != 0:
        print("".join(stderr)[-3000:], file=sys.stderr)
    samples = [(kind, *s) for kind, f in files.items() for s in json.loads(f.read_text())]
    inserted = sum(1 for kind, _, _, err in samples if kind == "insert" and err is None)
    with engine.connect() as conn:
        after_rows = conn.exec_driver_sql("SELECT count(*) FROM tasks").scalar()
    engine.dispose()
    windows = {
        "before": [ms for _, t, ms, _ in samples if started_wall - BEFORE_S <= t < started_wall],
        "during": [ms for _, t, ms, _ in samples if started_wall <= t <= ended_wall],
    }
    sampled = json.loads(waits_file.read_text())
    waits: dict[str, dict[str, int]] = {}
    for t, ours_, wait in sampled:
        rev = next((rev for rev, a, b in spans if a <= t < b), None)
        if rev and not ours_:
            waits.setdefault(rev, {}).setdefault(wait, 0)
            waits[rev][wait] += 1
    ours = sorted((t, what) for t, ours_, what in sampled if ours_)
    during_statement: dict[str, list[float]] = {}
    for _, t, ms, _ in samples:
        if started_wall <= t <= ended_wall and (statement := statement_at(ours, t)):
            during_statement.setdefault(statement, []).append(ms)
    by_revision = {rev: summarise([ms for _, t, ms, _ in samples if a <= t < b]) for rev, a, b in spans}
    worst_by_kind = {}
    for kind in WRITES:
        during = [(ms, t) for k, t, ms, _ in samples if k == kind and started_wall <= t <= ended_wall]
        if during:
            ms, t = max(during)
            worst_by_kind[kind] = (ms, next((rev for rev, a, b in spans if a <= t < b), ""))
    return Run(
        migration=migration,
        seconds=seconds,
        latency={w: summarise(v) for w, v in windows.items()},
        errors=sorted({err for _, _, _, err in samples if err}),
        rows_lost=before_rows + inserted - after_rows,
        exit_code=returncode,
        phases=phases,
        worst_by_kind=worst_by_kind,
        by_revision=by_revision,
        waits=waits,
        by_statement={q: summarise(v) for q, v in during_statement.items()},
    )


NAIVE_RUNNER = """
import os, sys, psycopg
with psycopg.connect(os.environ['DATABASE_URL'].replace('postgresql+psycopg://', 'postgresql://'),
                     autocommit=True) as conn:
    conn.execute(sys.argv[1])
"""


def bench(rows: int, rate: float, backend: str | None, tmp: Path) -> dict[str, Any]:
    with start_postgres(backend, settings=DURABLE) as server:
        template = server.create_database("bench_template")
        url_template = normalize_url(server.url(template))
        engine = sa.create_engine(url_template, poolclass=sa.NullPool)
        started = time.perf_counter()
        build(engine, rows)
        build_s = time.perf_counter() - started
        legacy = sa.text(
            "SELECT count(*) FILTER (WHERE user_id IS NULL), count(*) FILTER (WHERE status = 'Queued') FROM tasks"
        )
        with engine.connect() as conn:
            legacy_rows, queued = conn.execute(legacy).one()
        engine.dispose()
        admin = sa.create_engine(normalize_url(server.url("postgres")), poolclass=sa.NullPool)
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for name in ("bench_taskdb", "bench_naive"):
                conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE bench_template")
        admin.dispose()
        runs = [run_under_load(normalize_url(server.url(f"bench_{m}")), m, rate, tmp) for m in ("naive", "taskdb")]
        return {
            "rows": rows,
            "legacy_rows": legacy_rows,
            "queued": queued,
            "build_s": build_s,
            "major": server.major,
            "backend": server.backend,
            "runs": runs,
        }


def report(results: list[dict[str, Any]], rate: float, command: str) -> str:
    first = results[0]
    lines = [
        "## Online upgrade under load: taskdb vs a naive one-transaction migration",
        "",
        f"{datetime.now(UTC):%Y-%m-%d}, PostgreSQL {first['major']} ({first['backend']} backend, fsync on), "
        f"{machine()}. Four writer connections at {rate:g} statements/s "
        "each (insert, claim, complete, update a legacy row). Latencies in ms; `before` = the "
        f"{BEFORE_S:g} s before the migration started, `during` = while it ran. Command: `{command}`",
        "",
        "| rows (legacy, Queued) | migration | total s | writers during: p50 / p99 / worst ms | before: p99 / worst "
        "| writer errors | rows lost |",
        "| --- | --- | ---: | --- | --- | ---: | ---: |",
    ]
    for r in results:
        for run in r["runs"]:
            d, b = run.latency["during"], run.latency["before"]
            lines.append(
                f"| {r['rows']:,} ({r['legacy_rows']:,}, {r['queued']:,}) | {run.migration}"
                f"{'' if run.exit_code == 0 else f' (exit {run.exit_code})'} | {run.seconds:.1f} | "
                f"{d['p50']:.1f} / {d['p99']:.1f} / {d['worst']:.0f} (n={d['n']}) | "
                f"{b['p99']:.1f} / {b['worst']:.0f} | "
                f"{len(run.errors)} | {run.rows_lost} |"
            )
    lines += ["", "Ratios (taskdb / naive, same data, same run):", ""]
    for r in results:
        naive, ours = r["runs"]
        lines.append(
            f"- {r['rows']:,} rows: total time x{ours.seconds / naive.seconds:.2f}; worst writer latency during "
            f"x{ours.latency['during']['worst'] / max(naive.latency['during']['worst'], 0.001):.3f}"
        )
    lines += ["", "Where taskdb's time goes (seconds per revision, same runs):", ""]
    for r in results:
        ours = r["runs"][1]
        lines.append(f"- {r['rows']:,} rows: " + ", ".join(f"{rev} {s:.1f}" for rev, s in ours.phases.items()))
    lines += [
        "",
        "Writers during each of taskdb's revisions (statements that started while it ran): p99 / worst ms (n):",
        "",
    ]
    for r in results:
        ours = r["runs"][1]
        lines.append(
            f"- {r['rows']:,} rows: "
            + ", ".join(
                f"{rev} {d['p99']:.0f} / {d['worst']:.0f} ({d['n']})" for rev, d in ours.by_revision.items() if d["n"]
            )
        )
    lines += [
        "",
        "What the writers' statements in flight were doing during each revision (pg_stat_activity sampled "
        "every 20 ms; `running` = no wait event: on a CPU or waiting for one):",
        "",
    ]
    for r in results:
        ours = r["runs"][1]
        parts = []
        for rev, counts in ours.waits.items():
            total = sum(counts.values())
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
            parts.append(f"{rev} " + " ".join(f"{w} {100 * n / total:.0f}%" for w, n in top) + f" (n={total})")
        lines.append(f"- {r['rows']:,} rows: " + "; ".join(parts))
    lines += [
        "",
        "Writers by the statement taskdb was running when they started (sampled), the five with the "
        "worst writer: worst / p99 ms (n):",
        "",
    ]
    for r in results:
        ours = r["runs"][1]
        top = sorted(ours.by_statement.items(), key=lambda kv: -kv[1]["worst"])[:5]
        lines.append(
            f"- {r['rows']:,} rows: " + "; ".join(f"`{q}` {d['worst']:.0f} / {d['p99']:.0f} ({d['n']})" for q, d in top)
        )
    lines += [
        "",
        "Worst writer statement of each kind during taskdb's upgrade, ms (the revision running when it started):",
        "",
    ]
    for r in results:
        ours = r["runs"][1]
        lines.append(
            f"- {r['rows']:,} rows: "
            + ", ".join(f"{kind} {ms:.0f} ({rev or '-'})" for kind, (ms, rev) in ours.worst_by_kind.items())
        )
    errors = {f"{r['rows']:,} {run.migration}": run.errors for r in results for run in r["runs"] if run.errors}
    if errors:
        lines += ["", "Writer errors:", "", *(f"- {k}: {'; '.join(v[:5])}" for k, v in errors.items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    parser.add_argument("--rate", type=float, default=25.0, help="statements per second per writer")
    parser.add_argument("--backend", default="local")
    parser.add_argument("--out", default=None, help="replace the online section of this Markdown file")
    args = parser.parse_args()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"taskdb-bench-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in args.rows:
        print(f"== {rows:,} rows", file=sys.stderr)
        results.append(bench(rows, args.rate, args.backend, tmp))
        print(report(results[-1:], args.rate, ""), file=sys.stderr)
    command = "python benchmarks/online.py --rows " + " ".join(str(r) for r in args.rows) + f" --rate {args.rate:g}"
    section = report(results, args.rate, command)
    print(section)
    if args.out:
        write_section(Path(args.out), "online", section)


if __name__ == "__main__":
    main()
