"""The pytest plugin's fixtures, used for real (and once through a child pytest run)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from taskdb.testing import PostgresServer, available_targets
from taskdb.testing.pytest_plugin import TestDatabase
from tests.testing.conftest import local_majors

pytestmark = pytest.mark.skipif(not local_majors() and not available_targets(), reason="no PostgreSQL here")

PLUGIN = "taskdb.testing.pytest_plugin"
_seen: dict[str, object] = {}


def test_pg_server_is_one_per_session(taskdb_pg_server: PostgresServer) -> None:
    _seen.setdefault("server", taskdb_pg_server)
    assert _seen["server"] is taskdb_pg_server
    assert taskdb_pg_server.cron_preloaded


def test_pg_server_is_one_per_session_again(taskdb_pg_server: PostgresServer) -> None:
    _seen.setdefault("server", taskdb_pg_server)
    assert _seen["server"] is taskdb_pg_server


def test_pg_database_is_fresh_and_empty(
    taskdb_pg_database: TestDatabase,
    taskdb_pg_url: str,
    taskdb_pg_server: PostgresServer,
) -> None:
    assert taskdb_pg_url == taskdb_pg_database.url() == taskdb_pg_server.url(taskdb_pg_database.name)
    assert str(taskdb_pg_database) == taskdb_pg_database.name
    with psycopg.connect(taskdb_pg_url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (taskdb_pg_database.name,)
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE left_behind (id int)")  # the next test must not see it
    _seen["database"] = taskdb_pg_database.name


def test_pg_database_was_dropped(taskdb_pg_server: PostgresServer, taskdb_pg_url: str) -> None:
    assert "database" in _seen, "runs after test_pg_database_is_fresh_and_empty"
    with taskdb_pg_server.connect() as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (_seen["database"],)).fetchone()
    assert row is None
    assert not taskdb_pg_url.endswith(f"/{_seen['database']}")


def test_pg_url_works_with_both_drivers(taskdb_pg_url: str) -> None:
    assert taskdb_pg_url.startswith("postgresql://")
    for driver in ("psycopg", "pg8000"):
        url = sa.engine.make_url(taskdb_pg_url).set(drivername=f"postgresql+{driver}")
        engine = sa.create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT 1")).scalar() == 1
        finally:
            engine.dispose()


def test_pg_database_factory(taskdb_pg_database_factory: Callable[..., str], taskdb_pg_server: PostgresServer) -> None:
    base = taskdb_pg_database_factory()
    with taskdb_pg_server.connect(base) as conn:
        conn.execute("CREATE TABLE t (x int)")
    copy = taskdb_pg_database_factory(template=base)
    with taskdb_pg_server.connect(copy) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    _seen["factory"] = [base, copy]


def test_pg_database_factory_dropped_its_databases(taskdb_pg_server: PostgresServer) -> None:
    with taskdb_pg_server.connect() as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
    assert not set(_seen.get("factory", [])) & names


def test_pg_target_server_matches_its_id(
    taskdb_pg_target_server: PostgresServer,
    request: pytest.FixtureRequest,
) -> None:
    target_id = request.node.callspec.id
    assert target_id == f"{taskdb_pg_target_server.backend}-{taskdb_pg_target_server.major}"
    _seen.setdefault(target_id, taskdb_pg_target_server)
    assert _seen[target_id] is taskdb_pg_target_server, "one server per target for the whole session"
    assert taskdb_pg_target_server.cron_preloaded
    name = taskdb_pg_target_server.create_database()
    taskdb_pg_target_server.drop_database(name)


def test_pg_target_server_is_reused(taskdb_pg_target_server: PostgresServer, request: pytest.FixtureRequest) -> None:
    target_id = request.node.callspec.id
    _seen.setdefault(target_id, taskdb_pg_target_server)
    assert _seen[target_id] is taskdb_pg_target_server
    if request.node.get_closest_marker("container"):
        assert taskdb_pg_target_server.backend == "container"


CHILD_TESTS = """
import psycopg

def test_url(taskdb_pg_url):
    with psycopg.connect(taskdb_pg_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

def test_matrix(taskdb_pg_target_server):
    assert taskdb_pg_target_server.backend == "local"

def test_server(taskdb_pg_server):
    assert taskdb_pg_server.backend == "local"
    print("SERVER-DIR", taskdb_pg_server.dir)
"""


@pytest.mark.skipif(not local_majors(), reason="needs a local PostgreSQL")
def test_plugin_in_a_child_session_cleans_up(tmp_path: Path) -> None:
    """The plugin enabled with -p, --taskdb-pg-backend, TASKDB_PG_TARGETS and teardown, in a pytest run of its own."""
    (tmp_path / "test_child.py").write_text(textwrap.dedent(CHILD_TESTS))
    env = {**os.environ, "TASKDB_PG_TARGETS": f"local:{max(local_majors())}"}
    env.pop("TASKDB_PG_BACKEND", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            "-p",
            PLUGIN,
            "--taskdb-pg-backend",
            "local",
            "-W",
            "error",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
    server_dir = next(line.split()[1] for line in proc.stdout.splitlines() if "SERVER-DIR" in line)
    assert not Path(server_dir).exists(), "the session's server was not stopped and removed"


@pytest.mark.skipif(not local_majors(), reason="needs a local PostgreSQL")
def test_plugin_with_no_targets_skips_matrix_tests(tmp_path: Path) -> None:
    (tmp_path / "test_child.py").write_text("def test_matrix(taskdb_pg_target_server):\n    raise AssertionError\n")
    env = {**os.environ, "TASKDB_PG_TARGETS": " "}
    env["PATH"] = "/nonexistent"  # no pg_config on PATH ...
    env["TASKDB_PG_BINDIR"] = "/nonexistent"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import taskdb.testing.local as l; l.DEBIAN_PG_ROOT = l.Path('/nonexistent'); "
            "import pytest, sys; "
            f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-p', '{PLUGIN}', sys.argv[1]]))",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env | {"DOCKER_HOST": "unix:///nonexistent"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout


def test_plugin_is_off_unless_enabled(tmp_path: Path) -> None:
    """Installing taskdb adds no fixtures, options or markers to another project's pytest runs."""
    (tmp_path / "test_child.py").write_text("def test_needs_it(taskdb_pg_url):\n    pass\n")
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    off = subprocess.run(base, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert off.returncode == 1, off.stdout + off.stderr
    assert "fixture 'taskdb_pg_url' not found" in off.stdout
    unknown = subprocess.run(
        [*base, "--taskdb-pg-backend", "local"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert unknown.returncode == 4 and "unrecognized arguments: --taskdb-pg-backend" in unknown.stderr
