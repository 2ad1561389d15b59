"""`taskdb metrics` as a monitoring stack runs it: a subprocess logging in as a role granted taskdb_monitor, on the
incident database after `upgrade`, both drivers. Its figures equal queue_health and claimable_task_count; a failed
scrape answers taskdb_up 0 and logs its error once, without the password; nothing is left on a pooled session."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from taskdb.metrics import METRICS, RUN_TYPES, Scraper
from taskdb.metrics.collector import MONITOR_GRANTS_REVISION
from taskdb.testing.base import PostgresServer, free_port
from taskdb.testing.pgbouncer import PgBouncer, pgbouncer_available
from tests.acceptance.test_cli import assert_no_password, taskdb
from tests.helpers import DRIVERS, REVISIONS, Db, user_id, with_driver

NAMES = {spec.name for spec in METRICS}
ALWAYS = {"taskdb_up", "taskdb_scrape_duration_seconds"}  # what a failed scrape still answers
QUEUED_TASK = (
    "INSERT INTO tasks (id, task_type, status, created_at, user_id, run_type) "
    "VALUES (gen_random_uuid(), 't', 'Queued', now() - CAST(:age AS interval), CAST(:user AS uuid), :run_type)"
)


def samples(text: str) -> dict[tuple[str, str | None], float]:
    """A scrape as {(sample name, run_type label or None): value}; fails on anything the parser refuses."""
    return {
        (s.name, s.labels.get("run_type")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def expected(db: Db) -> dict[tuple[str, str | None], float]:
    """What a scrape must say, read as the owner straight from queue_health, claimable_task_count and tasks."""
    [h] = db.rows(
        "SELECT h.*, extract(epoch FROM h.oldest_queued_age)::float8 AS age, "
        "coalesce(extract(epoch FROM h.last_cleanup_at), 0)::float8 AS last_cleanup, "
        "claimable_task_count('cloud') AS cc, claimable_task_count('gpu') AS cg, claimable_task_count('local') AS cl "
        "FROM queue_health h"
    )
    assert h["cc"] == h["cg"]  # 'gpu' is the autoscaler's word for 'cloud'
    queued = dict.fromkeys(RUN_TYPES, 0) | {
        r["run_type"]: r["n"]
        for r in db.rows("SELECT run_type, count(*) AS n FROM tasks WHERE status = 'Queued' GROUP BY run_type")
    }
    runs = db.rows("SELECT count(*) AS n, coalesce(sum(cancelled), 0) AS c FROM task_hygiene_runs")[0]
    return {
        **{("taskdb_queued_tasks", rt): queued[rt] for rt in RUN_TYPES},
        **{("taskdb_ready_tasks", rt): h[f"ready_{rt}"] for rt in RUN_TYPES},
        ("taskdb_claimable_tasks", "cloud"): h["cc"],
        ("taskdb_claimable_tasks", "local"): h["cl"],
        ("taskdb_stale_queued_tasks", None): h["stale_count"],
        ("taskdb_flagged_tasks", None): h["flagged_count"],
        ("taskdb_flagged_queued_tasks", None): db.scalar(
            "SELECT count(*) FROM tasks WHERE status = 'Queued' AND legacy_reason IS NOT NULL"
        ),
        ("taskdb_oldest_queued_task_age_seconds", None): h["age"] or 0,
        ("taskdb_cleanup_last_success_timestamp_seconds", None): h["last_cleanup"],
        ("taskdb_cleanup_runs_total", None): runs["n"],
        ("taskdb_cleanup_cancelled_tasks_total", None): runs["c"],
        ("taskdb_cron_job_installed", None): float(h["cron_job_installed"]),
        # NULL (unknown) where the job lives in another database: cron.database_name is postgres on the test server
        ("taskdb_cron_job_active", None): math.nan if h["cron_job_active"] is None else float(h["cron_job_active"]),
        ("taskdb_up", None): 1.0,
    }


def assert_figures(found: dict[tuple[str, str | None], float], db: Db) -> None:
    for key, value in expected(db).items():
        if math.isnan(value):
            assert math.isnan(found[key]), key
            continue
        slack = 30.0 if key[0] == "taskdb_oldest_queued_task_age_seconds" else 1e-3  # the age grows meanwhile
        assert abs(found[key] - float(value)) <= slack, (key, found[key], value)


@pytest.fixture
def upgraded(db: Db) -> Db:
    db.load("half_migrated")
    db.upgrade()
    return db


@contextmanager
def monitor_roles(db: Db) -> Iterator[Callable[..., str]]:
    """``make(driver) -> url``: a LOGIN role granted taskdb_monitor and nothing else (README, Monitoring: membership
    is enough), dropped at the end."""
    made: list[str] = []

    def make(driver: str = "psycopg") -> str:
        role, password = f"metrics_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        db.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE taskdb_monitor")
        made.append(role)
        url = sa.make_url(with_driver(db.url, driver)).set(username=role, password=password)
        return url.render_as_string(hide_password=False)

    try:
        yield make
    finally:
        for role in made:
            db.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
            db.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


@pytest.fixture
def monitor_role(upgraded: Db) -> Iterator[Callable[..., str]]:
    with monitor_roles(upgraded) as make:
        yield make


def busy_queue(db: Db) -> None:
    """Figures that are not all 0: a stale task, one past queued_ttl that a cleanup cancels, a flagged Queued one
    (its constraint dropped, as doctor's flagged_queued check imagines), a local task."""
    db.execute(QUEUED_TASK, age="3 days", user=user_id("bob"), run_type="cloud")
    db.execute(QUEUED_TASK, age="9 days", user=user_id("bob"), run_type="cloud")
    db.execute(QUEUED_TASK, age="1 minute", user=user_id("dave"), run_type="local")
    assert taskdb("--url", db.url, "cleanup").returncode == 0
    db.execute("ALTER TABLE tasks DROP CONSTRAINT tasks_flagged_not_queued")
    db.execute(
        "INSERT INTO tasks (id, task_type, status, created_at, legacy_reason) "
        "VALUES (gen_random_uuid(), 't', 'Queued', now() - interval '2 hours', 'missing_user_id')"
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_once_reports_queue_health_and_claimable_task_count(
    upgraded: Db, monitor_role: Callable[..., str], driver: str
) -> None:
    busy_queue(upgraded)
    url = monitor_role(driver)
    result = taskdb("--url", url, "metrics", "--once")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    found = samples(result.stdout)
    assert {name for name, _ in found} == NAMES  # every metric, none disappears; counters end in _total
    assert {rt for name, rt in found if name == "taskdb_claimable_tasks"} == set(RUN_TYPES)
    assert_figures(found, upgraded)
    assert found["taskdb_cleanup_cancelled_tasks_total", None] >= 1
    assert found["taskdb_flagged_queued_tasks", None] == 1
    assert found["taskdb_stale_queued_tasks", None] >= 1
    assert found["taskdb_oldest_queued_task_age_seconds", None] > 3 * 86400 - 60
    assert found["taskdb_stale_after_seconds", None] == 86400
    assert found["taskdb_cleanup_late_after_seconds", None] == 2 * 86400  # '15 3 * * *', doubled
    assert found["taskdb_cron_job_installed", None] == 1
    assert found["taskdb_cron_job_installed_timestamp_seconds", None] == pytest.approx(
        upgraded.scalar("SELECT extract(epoch FROM installed_at)::float8 FROM taskdb_cron_jobs WHERE job = :j", j=JOB)
    )
    assert 0 < found["taskdb_scrape_duration_seconds", None] < 5
    assert_no_password(upgraded, result)


JOB = "taskdb_cancel_stale_queued"


def test_an_empty_queue_reports_zeros_and_a_textfile_is_written_whole(
    upgraded: Db, monitor_role: Callable[..., str], tmp_path: Path
) -> None:
    upgraded.execute("UPDATE tasks SET status = 'Complete' WHERE status IN ('Queued', 'In Progress')")
    path = tmp_path / "taskdb.prom"
    path.write_text("# the previous scrape\n")
    result = taskdb("--url", monitor_role("pg8000"), "metrics", "--textfile", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    found = samples(path.read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["taskdb.prom"]  # the temporary file was renamed over it
    for name in ("taskdb_queued_tasks", "taskdb_ready_tasks", "taskdb_claimable_tasks"):
        assert [found[name, rt] for rt in RUN_TYPES] == [0, 0]
    assert found["taskdb_oldest_queued_task_age_seconds", None] == 0
    assert found["taskdb_stale_queued_tasks", None] == 0 and found["taskdb_up", None] == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_failed_scrape_answers_taskdb_up_0_and_says_what_to_grant(
    upgraded: Db, monitor_role: Callable[..., str], driver: str, tmp_path: Path
) -> None:
    """On a database before the revision that grants taskdb_monitor the columns of tasks (its downgrade revokes
    them), membership is not enough: the log says to upgrade."""
    url = monitor_role(driver)
    assert taskdb("--url", url, "metrics", "--once").returncode == 0
    upgraded.downgrade(REVISIONS[REVISIONS.index(MONITOR_GRANTS_REVISION) - 1])
    result = taskdb("--url", url, "metrics", "--once")
    assert result.returncode == 1
    found = samples(result.stdout)
    assert found["taskdb_up", None] == 0 and {name for name, _ in found} == ALWAYS  # no invented figures
    [line] = result.stderr.splitlines()
    assert "permission denied for table tasks" in line
    role = sa.make_url(url).username
    assert f"membership of taskdb_monitor is all the exporter needs: GRANT taskdb_monitor TO {role};" in line
    assert f"before {MONITOR_GRANTS_REVISION}, `taskdb upgrade` (it grants taskdb_monitor SELECT (status, " in line
    scheme = "postgresql" if driver == "psycopg" else f"postgresql+{driver}"
    gone = taskdb("--url", f"{scheme}://app:s3cr%40t@127.0.0.1:1/prod", "metrics", "--textfile", str(tmp_path / "t"))
    assert gone.returncode == 1 and samples((tmp_path / "t").read_text())["taskdb_up", None] == 0
    assert "cannot connect to postgresql" in gone.stderr and "app:***@127.0.0.1" in gone.stderr
    assert "s3cr" not in gone.stderr
    assert_no_password(upgraded, result)


def test_a_scrape_blocked_by_a_lock_gives_up_within_its_timeout(upgraded: Db, monitor_role: Callable[..., str]) -> None:
    url = monitor_role()
    with upgraded.engine.connect() as blocker:
        blocker.execute(sa.text("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE"))  # as an upgrade's DDL would
        started = time.monotonic()
        result = taskdb("--url", url, "metrics", "--once", "--timeout", "0.5")
        blocker.rollback()
    assert time.monotonic() - started < 15
    assert result.returncode == 1 and samples(result.stdout)["taskdb_up", None] == 0
    assert "timeout" in result.stderr and "took longer than --timeout (0.5 s)" in result.stderr


def scrape(port: int) -> dict[tuple[str, str | None], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return samples(response.read().decode())


def wait_for(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            scrape(port)
            return
        except OSError:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "taskdb metrics --listen did not answer"
            time.sleep(0.1)


def listen(url: str, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TASKDB_DATABASE_URL", "DATABASE_URL")}
    return subprocess.Popen(
        [sys.executable, "-m", "taskdb.cli", "--url", url, "metrics", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_listen_serves_every_scrape_logs_an_outage_once_and_stops_on_sigterm(
    upgraded: Db, monitor_role: Callable[..., str], driver: str
) -> None:
    url, port = monitor_role(driver), free_port()
    role = sa.make_url(url).username
    process = listen(url, port)
    try:
        wait_for(port, process)
        assert_figures(scrape(port), upgraded)
        # as on a database before MONITOR_GRANTS_REVISION
        upgraded.execute("REVOKE SELECT (status, run_type, legacy_reason) ON tasks FROM taskdb_monitor")
        for _ in range(3):
            assert {name for name, _ in scrape(port)} == ALWAYS
        upgraded.execute("GRANT SELECT (status, run_type, legacy_reason) ON tasks TO taskdb_monitor")
        upgraded.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        scrape(port)  # the connection was killed under it: this scrape may fail (a new error), the next connects
        assert_figures(scrape(port), upgraded)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out == ""
    assert err.count("permission denied for table tasks") == 1, err  # three failed scrapes, one line
    assert "the database answers again, after 3 failed scrape(s)" in err
    assert "Traceback" not in err and sa.make_url(url).password not in err


@pytest.mark.skipif(not pgbouncer_available(), reason="needs Debian's pgbouncer (scripts/setup)")
@pytest.mark.parametrize("driver", DRIVERS)
def test_scrapes_through_a_transaction_pooler_leave_the_session_untouched(
    upgraded: Db, taskdb_pg_server: PostgresServer, driver: str
) -> None:
    """A pool of one server connection, shared by the scraper and a probe in turn: more scrapes than psycopg's
    prepare threshold (5), and after each the probe finds the server session as it was before any."""
    database = upgraded.url.rsplit("/", 1)[1].split("?")[0]
    with PgBouncer(taskdb_pg_server, mode="transaction", pool_size=1) as pooler:
        probe_sql = (
            "SELECT pg_backend_pid(), current_setting('statement_timeout'), current_setting('lock_timeout'), "
            "current_setting('transaction_read_only'), current_setting('search_path'), "
            "(SELECT count(*) FROM pg_prepared_statements), "
            "(SELECT count(*) FROM pg_settings WHERE source = 'session' AND name NOT IN "
            "('application_name', 'client_encoding', 'DateStyle', 'TimeZone', 'standard_conforming_strings')) "
        )
        with psycopg.connect(pooler.conninfo(database), autocommit=True, prepare_threshold=None) as probe:
            before = probe.execute(probe_sql).fetchone()
            scraper = Scraper(pooler.url(database, driver))
            try:
                seen: list[Any] = []
                for _ in range(7):
                    assert scraper.read()["claimable_cloud"] == upgraded.scalar("SELECT claimable_task_count('cloud')")
                    seen.append(probe.execute(probe_sql).fetchone())
            finally:
                scraper.close()
    assert before is not None and all(found == before for found in seen), (before, seen)


def test_the_readme_documents_every_metric_with_its_type() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = dict(re.findall(r"^\| `(taskdb_\w+)` \| (gauge|counter) \|", readme, re.MULTILINE))
    assert documented == {spec.name: spec.kind for spec in METRICS}
    assert "| `taskdb metrics --listen HOST:PORT" in readme
