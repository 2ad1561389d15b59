"""The `taskdb` command as users run it: a subprocess, exit codes, JSON, and no password in any output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.helpers import DRIVERS, HEAD, REVISIONS, Db, task_id, user_id, with_driver

URL_VARS = ("TASKDB_DATABASE_URL", "DATABASE_URL")


def taskdb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    return subprocess.run(
        [sys.executable, "-m", "taskdb.cli", *args],
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_no_password(db: Db, result: subprocess.CompletedProcess[str]) -> None:
    password = make_url(db.url).password
    assert password, "the test server's password is what this checks"
    output = result.stdout + result.stderr
    assert password not in output and quote(password, safe="") not in output


@pytest.mark.parametrize("driver", DRIVERS)
def test_upgrade_then_cleanup_then_cron_status(db: Db, driver: str) -> None:
    db.load("half_migrated")
    url = db.url if driver == "psycopg" else with_driver(db.url, driver)
    upgrade = taskdb("--url", url, "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    assert_no_password(db, upgrade)
    db.execute(
        "INSERT INTO tasks (id, task_type, status, created_at, user_id, run_type) "
        "VALUES (CAST(:id AS uuid), 't', 'Queued', now() - interval '8 days', CAST(:u AS uuid), 'cloud')",
        id=task_id("late"),
        u=user_id("alice"),
    )
    dry = taskdb("--url", url, "cleanup", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["would_cancel"] == 1 and planned["tasks"][0]["id"] == task_id("late")
    assert db.scalar("SELECT status FROM tasks WHERE id = :id", id=task_id("late")) == "Queued"  # dry run
    done = json.loads(taskdb("--url", url, "cleanup", "--json").stdout)
    assert done["cancelled"] == 1
    assert db.scalar(
        "SELECT actor FROM task_hygiene_log WHERE task_id = :id AND action = 'cancel'", id=task_id("late")
    ).startswith("taskdb cleanup (")
    status = taskdb("--url", url, "cron", "status", "--json", env={"DATABASE_URL": "ignored://"})
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["readiness"]["library_loaded"] is True
    assert {j["job"] for j in report["jobs"]} == {"taskdb_cancel_stale_queued", "taskdb_purge_cron_history"}
    for result in (dry, status):
        assert_no_password(db, result)


def test_exit_code_2_without_a_url_or_server() -> None:
    missing = taskdb("upgrade")
    assert missing.returncode == 2 and missing.stderr.startswith("taskdb: no database URL")
    unreachable = taskdb("--url", "postgresql://app:s3cr%40t@127.0.0.1:1/prod", "upgrade")
    assert unreachable.returncode == 2
    assert "app:***@127.0.0.1" in unreachable.stderr and "s3cr" not in unreachable.stderr


def test_exit_code_3_when_a_lock_cannot_be_had(db: Db) -> None:
    db.upgrade("0003_backfill")
    engine = sa.create_engine(with_driver(db.url, "psycopg"), poolclass=sa.NullPool)
    with engine.connect() as blocker:
        blocker.execute(sa.text("LOCK TABLE tasks IN ACCESS SHARE MODE"))
        result = taskdb("--url", db.url, "upgrade", env={"TASKDB_LOCK_TIMEOUT_MS": "100", "TASKDB_LOCK_ATTEMPTS": "2"})
        blocker.rollback()
    engine.dispose()
    assert result.returncode == 3, result.stderr
    assert "Failed after 2 attempts" in result.stderr and "blocked by: pid" in result.stderr
    assert_no_password(db, result)


def test_cleanup_on_a_database_not_yet_upgraded_says_so(db: Db) -> None:
    result = taskdb("--url", db.url, "cleanup", "--dry-run")
    assert result.returncode == 1
    assert "run `taskdb upgrade` first" in result.stderr


@pytest.mark.parametrize("driver", DRIVERS)
def test_plan_prints_a_table_and_json_and_writes_nothing(db: Db, driver: str) -> None:
    db.load("half_migrated")
    url = db.url if driver == "psycopg" else with_driver(db.url, driver)
    before = db.snapshot()
    human = taskdb("--url", url, "plan")
    assert human.returncode == 0, human.stderr
    assert f"Pending revisions ({len(REVISIONS)}):" in human.stdout and "0004_constraints" in human.stdout
    assert "reason missing_user_id" in human.stdout and "pg_cron:" in human.stdout
    machine = taskdb("plan", "--json", env={"DATABASE_URL": url})
    assert machine.returncode == 0, machine.stderr
    result = json.loads(machine.stdout)
    assert result["head"] == HEAD and result["rows"]["needs_work"] > 0
    assert db.snapshot() == before
    assert not db.scalar("SELECT to_regclass('taskdb_alembic_version') IS NOT NULL")
    assert_no_password(db, human)
    assert_no_password(db, machine)


@pytest.mark.parametrize("driver", DRIVERS)
def test_upgrade_json_reports_what_the_plan_predicted(db: Db, driver: str) -> None:
    """The plan's counts, then the upgrade's summary and its log: the same numbers."""
    db.load("half_migrated")
    url = db.url if driver == "psycopg" else with_driver(db.url, driver)
    predicted = json.loads(taskdb("--url", url, "plan", "--json").stdout)["rows"]
    done = taskdb("--url", url, "upgrade", "--json", env={"TASKDB_BACKFILL_BATCH_SIZE": "10"})
    assert done.returncode == 0, done.stderr
    assert_no_password(db, done)
    summary = json.loads(done.stdout)
    assert summary["from_revision"] is None and summary["to_revision"] == HEAD
    assert summary["changes"]["backfill"] == predicted["backfilled"]
    assert summary["changes"]["flag"] == predicted["flagged"]
    assert summary["changes"].get("cancel", 0) == predicted["cleanup_stale"] + predicted["cleanup_children"]
    assert summary["flagged_by_reason"] == predicted["flag_reasons"]
    assert summary["constraints_not_valid"] == [] and summary["invalid_indexes"] == []
    # not a terminal: one plain log line per backfill batch, on stderr
    batches = [line for line in done.stderr.splitlines() if "0003_backfill: sweep" in line and "batch of" in line]
    assert len(batches) >= predicted["needs_work"] // 10
    assert all(" done, " in line and " remaining" in line for line in batches)


def test_upgrade_on_a_terminal_draws_a_progress_bar(db: Db) -> None:
    import pty

    db.load("half_migrated")
    env = {k: v for k, v in os.environ.items() if k not in URL_VARS} | {
        "TASKDB_BACKFILL_BATCH_SIZE": "10",
        "COLUMNS": "120",
        "TERM": "xterm",
    }
    main, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "taskdb.cli", "--url", db.url, "upgrade"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
        close_fds=True,
    )
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=300) == 0, output.decode(errors="replace")
    os.close(main)
    text = output.decode(errors="replace")
    assert "backfill 0003_backfill" in text and "━" in text  # rich's bar
    assert "batch of" not in text  # the bar replaces the per-batch lines
    assert f"-> {HEAD}" in text
