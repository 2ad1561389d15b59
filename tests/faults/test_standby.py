"""A hot standby (``pg_basebackup -R``, streaming from a throwaway primary) and a read-only connection: every
command that changes something refuses before any change, exit 2, one line saying what and what to do; the
read-only commands work there."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from taskdb.testing.base import PostgresUnavailable
from taskdb.testing.local import LocalServer, installed_majors
from tests.helpers import DRIVERS, load_incident, with_driver

URL_VARS = ("TASKDB_DATABASE_URL", "DATABASE_URL")
DATABASE = "app"


def taskdb(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in URL_VARS and not k.startswith("TASKDB_")}
    return subprocess.run(
        [sys.executable, "-m", "taskdb.cli", "--url", url, *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def standby() -> Iterator[tuple[LocalServer, LocalServer]]:
    if not installed_majors():
        pytest.skip("needs a local PostgreSQL installation (scripts/setup)")
    try:
        primary = LocalServer()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    with primary:
        primary.create_database(DATABASE)
        load_incident(primary.url(DATABASE))
        with LocalServer(standby_of=primary) as replica:
            deadline = time.monotonic() + 60
            while replica.fetch_value("SELECT count(*) FROM pg_stat_wal_receiver") == 0 or not replica.fetch_value(
                "SELECT to_regclass('public.tasks') IS NOT NULL", DATABASE
            ):
                assert time.monotonic() < deadline, "the standby did not catch up"
                time.sleep(0.2)
            yield primary, replica


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("taskdb:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("command", [("upgrade",), ("downgrade", "base"), ("cleanup",), ("cron", "install")])
def test_changing_commands_refuse_a_standby(standby, driver: str, command: tuple[str, ...]) -> None:
    primary, replica = standby
    result = taskdb(with_driver(replica.url(DATABASE), driver), *command)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_line(result)
    assert "is a standby" in line and "Point --url at the primary" in line
    assert primary.fetch_value("SELECT to_regclass('task_hygiene_log') IS NULL", DATABASE)  # nothing changed


@pytest.mark.parametrize("driver", DRIVERS)
def test_read_only_commands_work_on_a_standby(standby, driver: str) -> None:
    _, replica = standby
    url = with_driver(replica.url(DATABASE), driver)
    for command in (("plan", "--json"), ("current",)):
        result = taskdb(url, *command)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr


def test_a_read_only_connection_is_refused_before_any_change(standby) -> None:
    primary, _ = standby
    primary.create_database("readonly")
    load_incident(primary.url("readonly"))
    with primary.connect() as conn:
        conn.execute("ALTER DATABASE readonly SET default_transaction_read_only = on")
    result = taskdb(primary.url("readonly"), "upgrade")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "this connection is read-only (default_transaction_read_only = on" in one_line(result)
    assert primary.fetch_value("SELECT to_regclass('task_hygiene_log') IS NULL", "readonly")
