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

_seen: dict[str, object] = {}


def test_pg_server_is_one_per_session(pg_server: PostgresServer) -> None:
    _seen.setdefault("server", pg_server)
    assert _seen["server"] is pg_server
    assert pg_server.cron_preloaded


def test_pg_server_is_one_per_session_again(pg_server: PostgresServer) -> None:
    _seen.setdefault("server", pg_server)
    assert _seen["server"] is pg_server


def test_pg_database_is_fresh_and_empty(pg_database: TestDatabase, pg_url: str, pg_server: PostgresServer) -> None:
    assert pg_url == pg_database.url() == pg_server.url(pg_database.name)
    assert str(pg_database) == pg_database.name
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (pg_database.name,)
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE left_behind (id int)")  # the next test must not see it
    _seen["database"] = pg_database.name


def test_pg_database_was_dropped(pg_server: PostgresServer, pg_url: str) -> None:
    assert "database" in _seen, "runs after test_pg_database_is_fresh_and_empty"
    with pg_server.connect() as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (_seen["database"],)).fetchone()
    assert row is None
    assert not pg_url.endswith(f"/{_seen['database']}")


def test_pg_url_works_with_both_drivers(pg_url: str) -> None:
    assert pg_url.startswith("postgresql://")
    for driver in ("psycopg", "pg8000"):
        url = sa.engine.make_url(pg_url).set(drivername=f"postgresql+{driver}")
        engine = sa.create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT 1")).scalar() == 1
        finally:
            engine.dispose()


def test_pg_database_factory(pg_database_factory: Callable[..., str], pg_server: PostgresServer) -> None:
    base = pg_database_factory()
    with pg_server.connect(base) as conn:
        conn.execute("CREATE TABLE t (x int)")
    copy = pg_database_factory(template=base)
    with pg_server.connect(copy) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    _seen["factory"] = [base, copy]


def test_pg_database_factory_dropped_its_databases(pg_server: PostgresServer) -> None:
    with pg_server.connect() as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
    assert not set(_seen.get("factory", [])) & names


def test_pg_target_server_matches_its_id(pg_target_server: PostgresServer, request: pytest.FixtureRequest) -> None:
    target_id = request.node.callspec.id
    assert target_id == f"{pg_target_server.backend}-{pg_target_server.major}"
    _seen.setdefault(target_id, pg_target_server)
    assert _seen[target_id] is pg_target_server, "one server per target for the whole session"
    assert pg_target_server.cron_preloaded
    name = pg_target_server.create_database()
    pg_target_server.drop_database(name)


def test_pg_target_server_is_reused(pg_target_server: PostgresServer, request: pytest.FixtureRequest) -> None:
    target_id = request.node.callspec.id
    _seen.setdefault(target_id, pg_target_server)
    assert _seen[target_id] is pg_target_server
    if request.node.get_closest_marker("container"):
        assert pg_target_server.backend == "container"


CHILD_TESTS = """
import psycopg

def test_url(pg_url):
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

def test_matrix(pg_target_server):
    assert pg_target_server.backend == "local"

def test_server(pg_server):
    assert pg_server.backend == "local"
    print("SERVER-DIR", pg_server.dir)
"""


@pytest.mark.skipif(not local_majors(), reason="needs a local PostgreSQL")
def test_plugin_in_a_child_session_cleans_up(tmp_path: Path) -> None:
    """Entry-point plugin, --pg-backend, TASKDB_PG_TARGETS and teardown, in a pytest run of its own."""
    (tmp_path / "test_child.py").write_text(textwrap.dedent(CHILD_TESTS))
    env = {**os.environ, "TASKDB_PG_TARGETS": f"local:{max(local_majors())}"}
    env.pop("TASKDB_PG_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--pg-backend", "local",
         "-W", "error", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
    server_dir = next(line.split()[1] for line in proc.stdout.splitlines() if "SERVER-DIR" in line)
    assert not Path(server_dir).exists(), "the session's server was not stopped and removed"


@pytest.mark.skipif(not local_majors(), reason="needs a local PostgreSQL")
def test_plugin_with_no_targets_skips_matrix_tests(tmp_path: Path) -> None:
    (tmp_path / "test_child.py").write_text("def test_matrix(pg_target_server):\n    raise AssertionError\n")
    env = {**os.environ, "TASKDB_PG_TARGETS": " "}
    env["PATH"] = "/nonexistent"  # no pg_config on PATH ...
    env["TASKDB_PG_BINDIR"] = "/nonexistent"
    proc = subprocess.run(
        [sys.executable, "-c", "import taskdb.testing.local as l; l.DEBIAN_PG_ROOT = l.Path('/nonexistent'); "
         "import pytest, sys; sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', sys.argv[1]]))", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env | {"DOCKER_HOST": "unix:///nonexistent"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout
