"""`alembic` as a deploy pipeline runs it, from the checkout, as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from taskdb import api
from tests.helpers import DRIVERS, HEAD, Db, with_driver

ROOT = Path(api.alembic_ini()).parent
URL_VARS = ("TASKDB_DATABASE_URL", "DATABASE_URL")


def alembic(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=300,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_url_is_one_line_without_traceback() -> None:
    result = alembic("upgrade", "head")
    assert result.returncode != 0  # alembic exits 255 on a FAILED: line
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no database URL: pass -x url=" in lines[0]


@pytest.mark.parametrize("driver", DRIVERS)
def test_unreachable_server_is_one_line_and_never_shows_the_password(driver: str) -> None:
    password = "p@ss:w/rd%#?"
    encoded = "p%40ss%3Aw%2Frd%25%23%3F"
    url = f"postgresql+{driver}://deploy:{encoded}@127.0.0.1:{free_port()}/prod"
    result = alembic("-x", f"url={url}", "upgrade", "head")
    output = result.stdout + result.stderr
    assert result.returncode != 0  # alembic exits 255 on a FAILED: line
    assert "cannot connect to postgresql+" in output and "deploy:***@127.0.0.1" in output
    assert "Traceback" not in output
    assert password not in output and encoded not in output


@pytest.mark.parametrize("driver", DRIVERS)
def test_database_url_from_the_environment_adopts_the_incident_database(db: Db, driver: str) -> None:
    db.load("half_migrated")
    env = {"DATABASE_URL": db.url if driver == "psycopg" else with_driver(db.url, driver)}
    first = alembic("upgrade", "head", env=env)
    assert first.returncode == 0, first.stderr
    rows = db.snapshot()
    second = alembic("upgrade", "head", env=env)
    assert second.returncode == 0, second.stderr
    assert db.snapshot() == rows  # a second run changes nothing
    current = alembic("current", env=env)
    assert f"{HEAD} (head)" in current.stdout
    password = db.engine.url.password
    if password:
        assert password not in first.stdout + first.stderr + second.stderr
