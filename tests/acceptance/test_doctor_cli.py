"""`taskdb doctor` as monitoring and CI run it: a subprocess, exit codes 0 / 1 / 2, --json, both drivers, and
no password in any output."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from tests.acceptance.test_cli import assert_no_password, taskdb
from tests.helpers import DRIVERS, Db, user_id, with_driver

ALL_CHECKS = ["schema", "revision", "constraints", "indexes", "flagged_queued", "stale_queued", "cleanup_job"]


def url_for(db: Db, driver: str) -> str:
    return db.url if driver == "psycopg" else with_driver(db.url, driver)  # postgresql:// is psycopg 3


def doctor_json(result: subprocess.CompletedProcess[str]) -> dict:
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # one object, nothing else on stdout
    return json.loads(lines[0])


@pytest.fixture
def upgraded(db: Db) -> Db:
    db.load("half_migrated")
    db.upgrade()
    return db


@pytest.mark.parametrize("driver", DRIVERS)
def test_exit_0_then_1_on_the_incident_database(upgraded: Db, driver: str) -> None:
    url = url_for(upgraded, driver)
    human = taskdb("--url", url, "doctor")
    assert human.returncode == 0, human.stdout + human.stderr
    [summary] = human.stdout.splitlines()
    assert summary.startswith("taskdb doctor: healthy: 7 checks (schema, revision, ") and summary.endswith("exit 0")
    machine = taskdb("doctor", "--json", env={"DATABASE_URL": url})
    assert machine.returncode == 0, machine.stderr
    report = doctor_json(machine)
    assert report["status"] == "ok" and report["findings"] == [] and report["checked"] == ALL_CHECKS
    queued = upgraded.scalar("SELECT count(*) FROM tasks WHERE status = 'Queued'")
    assert report["queue_health"]["queued_total"] == queued

    upgraded.execute(
        "INSERT INTO tasks (id, task_type, status, created_at, user_id, run_type) "
        "VALUES (CAST(:id AS uuid), 't', 'Queued', now() - interval '3 days', CAST(:u AS uuid), 'cloud')",
        id=str(uuid.uuid4()),
        u=user_id("bob"),
    )
    upgraded.execute("ALTER TABLE tasks ADD CONSTRAINT tasks_doctor_probe CHECK (attempts < 1000) NOT VALID")
    warned = taskdb("--url", url, "doctor")
    assert warned.returncode == 1, warned.stdout + warned.stderr
    lines = warned.stdout.splitlines()
    assert lines[0].startswith("warning: constraints: constraint tasks_doctor_probe on tasks is NOT VALID")
    assert lines[1].startswith("warning: stale_queued: 1 Queued task(s) older than stale_after") and " -> " in lines[1]
    assert lines[2].startswith("taskdb doctor: 2 warning(s) from 7 checks") and lines[2].endswith("exit 1")
    machine = taskdb("--url", url, "doctor", "--json")
    assert machine.returncode == 1
    report = doctor_json(machine)
    assert report["status"] == "warning" and report["exit_code"] == 1
    assert [(f["check"], f["severity"]) for f in report["findings"]] == [
        ("constraints", "warning"),
        ("stale_queued", "warning"),
    ]
    assert all(f["message"] and f["fix"] for f in report["findings"])
    assert report["queue_health"]["stale_count"] == 1
    for result in (human, machine, warned):
        assert_no_password(upgraded, result)


@pytest.mark.parametrize("driver", DRIVERS)
def test_exit_2_when_it_cannot_check(db: Db, driver: str) -> None:
    url = url_for(db, driver)
    empty = taskdb("--url", url, "doctor")
    assert empty.returncode == 2, empty.stdout + empty.stderr
    assert empty.stdout.startswith("error: schema: cannot check: database ") and "has no taskdb objects" in empty.stdout
    db.load("half_migrated")
    db.upgrade("0004_constraints")
    machine = taskdb("--url", url, "doctor", "--json")
    assert machine.returncode == 2
    report = doctor_json(machine)
    assert report["status"] == "error" and report["checked"] == ["schema", "revision"]
    assert [f["check"] for f in report["findings"]] == ["schema", "revision"]
    assert "not upgraded to 0005_hygiene" in report["findings"][0]["message"]
    for result in (empty, machine):
        assert_no_password(db, result)


@pytest.mark.parametrize("driver", DRIVERS)
def test_exit_2_without_a_url_or_a_server_and_the_password_stays_hidden(driver: str) -> None:
    missing = taskdb("doctor", "--json")
    assert missing.returncode == 2
    report = doctor_json(missing)
    assert report["status"] == "error" and report["findings"][0]["check"] == "connection"
    assert "no database URL" in report["findings"][0]["message"]
    scheme = "postgresql" if driver == "psycopg" else f"postgresql+{driver}"
    unreachable = taskdb("--url", f"{scheme}://app:s3cr%40t@127.0.0.1:1/prod", "doctor")
    assert unreachable.returncode == 2
    assert unreachable.stdout.startswith("error: connection: cannot check: cannot connect to ")
    assert "app:***@127.0.0.1" in unreachable.stdout
    assert "s3cr" not in unreachable.stdout + unreachable.stderr


def test_fail_on_error_prints_warnings_and_fails_only_on_errors(upgraded: Db, other_db: Db) -> None:
    upgraded.execute(
        "INSERT INTO tasks (id, task_type, status, created_at, user_id, run_type) "
        "VALUES (CAST(:id AS uuid), 't', 'Queued', now() - interval '3 days', CAST(:u AS uuid), 'cloud')",
        id=str(uuid.uuid4()),
        u=user_id("bob"),
    )
    gate = taskdb("--url", upgraded.url, "doctor", "--fail-on", "error")
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert gate.stdout.splitlines()[0].startswith("warning: stale_queued: 1 Queued task(s) older than stale_after")
    machine = taskdb("--url", upgraded.url, "doctor", "--json", "--fail-on", "error")
    report = doctor_json(machine)
    assert (machine.returncode, report["status"], report["exit_code"]) == (0, "warning", 0)
    assert taskdb("--url", upgraded.url, "doctor").returncode == 1  # the default: warnings fail
    other_db.load("half_migrated")
    other_db.upgrade("0004_constraints")
    assert taskdb("--url", other_db.url, "doctor", "--fail-on", "error").returncode == 2  # cannot check: still 2
    bad = taskdb("--url", upgraded.url, "doctor", "--fail-on", "nothing")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
