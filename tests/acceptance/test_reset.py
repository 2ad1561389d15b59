"""`taskdb reset` as a developer runs it: a subprocess against a real throwaway database, both drivers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from urllib.parse import quote

import psycopg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, make_url

from taskdb import api
from taskdb.reset import inspect_target, is_local_host
from taskdb.testing.base import PostgresServer
from tests.helpers import CONSTRAINTS, DRIVERS, task_id, with_driver

URL_VARS = ("TASKDB_DATABASE_URL", "DATABASE_URL", "PGHOST", "PGHOSTADDR", "PGSERVICE")
HEAD = ScriptDirectory.from_config(api.alembic_config(None)).get_current_head()
MARKER = "marker_made_before_reset"


def taskdb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    return subprocess.run(
        [sys.executable, "-m", "taskdb.cli", *args],
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_no_password(password: str, result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert password and password not in output and quote(password, safe="") not in output


class Database:
    """A throwaway database of the session's server, looked at with psycopg (a connection per question)."""

    def __init__(self, server: PostgresServer, name: str) -> None:
        self.server, self.name = server, name

    def url(self, driver: str = "psycopg") -> str:
        plain = self.server.url(self.name)
        return plain if driver == "psycopg" else with_driver(plain, driver)

    def value(self, sql: str) -> object:
        return self.server.fetch_value(sql, self.name)

    def execute(self, sql: str) -> None:
        with self.server.connect(self.name) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  # the test's literal SQL

    def has_table(self, name: str) -> bool:
        return bool(self.value(f"SELECT to_regclass('public.{name}') IS NOT NULL"))

    def make_marker(self) -> None:
        self.execute(f"CREATE TABLE {MARKER} (note text); INSERT INTO {MARKER} VALUES ('made before the reset')")


@pytest.fixture
def database(taskdb_pg_server: PostgresServer, taskdb_pg_database_factory: Callable[..., str]) -> Iterator[Database]:
    """A fresh database holding a marker table that a reset must make disappear."""
    db = Database(taskdb_pg_server, taskdb_pg_database_factory())
    db.make_marker()
    yield db


def assert_announced(db: Database, result: subprocess.CompletedProcess[str]) -> None:
    """The database, its host and its redacted URL were printed before the drop was reported done."""
    lines = result.stdout.splitlines()
    about = next(i for i, line in enumerate(lines) if "about to drop and recreate" in line)
    done = next(i for i, line in enumerate(lines) if f'created database "{db.name}"' in line)
    assert about < done
    assert f'database "{db.name}" on host 127.0.0.1:{db.server.port}' in lines[about]
    assert f"postgres:***@127.0.0.1:{db.server.port}/{db.name}" in lines[about]
    assert_no_password(db.server.password, result)


@pytest.mark.parametrize("driver", DRIVERS)
def test_reset_incident_gives_the_repaired_incident(database: Database, driver: str) -> None:
    # A session left open on the database (an app, a psql): reset ends it instead of failing.
    idle = psycopg.connect(**database.server.connect_kwargs(database.name))
    try:
        result = taskdb("--url", database.url(driver), "reset", "--seed", "incident")
        assert result.returncode == 0, result.stderr
        with pytest.raises(psycopg.OperationalError):
            idle.execute("SELECT 1")
    finally:
        idle.close()
    assert_announced(database, result)
    assert "dropped and created" in result.stdout and f"-> {HEAD}" in result.stdout
    assert not database.has_table(MARKER)
    assert database.value("SELECT version_num FROM taskdb_alembic_version") == HEAD
    validated = database.value(
        "SELECT array_agg(conname::text) FROM pg_constraint WHERE conrelid = 'tasks'::regclass AND convalidated"
    )
    assert set(validated) >= CONSTRAINTS  # type: ignore[arg-type]
    # The incident's rows, repaired: the 51 ancient Queued tasks are flagged and no longer Queued.
    assert (
        database.value(
            "SELECT count(*) FROM tasks WHERE params ? 'orchestrator_run_id' AND legacy_reason IS NOT NULL "
            "AND status = 'Cancelled'"
        )
        == 51
    )
    assert database.value("SELECT count(*) FROM tasks WHERE legacy_reason IS NOT NULL AND status = 'Queued'") == 0
    assert (
        database.value(
            f"SELECT user_id IS NOT NULL AND run_type = 'cloud' FROM tasks WHERE id = '{task_id('gpu-upper')}'"
        )
        is True
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_reset_with_TASKDB_SCHEMA_puts_the_repaired_incident_in_that_schema(database: Database, driver: str) -> None:
    result = taskdb("--url", database.url(driver), "reset", "--seed", "incident", env={"TASKDB_SCHEMA": "app"})
    assert result.returncode == 0, result.stderr
    assert f"-> {HEAD}" in result.stdout
    assert database.value("SELECT version_num FROM app.taskdb_alembic_version") == HEAD
    assert database.value("SELECT count(*) FROM app.tasks WHERE legacy_reason IS NOT NULL AND status = 'Queued'") == 0
    assert (
        database.value(
            "SELECT count(*) FROM app.tasks WHERE params ? 'orchestrator_run_id' AND legacy_reason IS NOT NULL "
            "AND status = 'Cancelled'"
        )
        == 51
    )
    assert database.value("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_reset_incident_without_upgrade_leaves_it_half_migrated(database: Database, driver: str) -> None:
    result = taskdb("--url", database.url(driver), "reset", "--seed", "incident", "--no-upgrade")
    assert result.returncode == 0, result.stderr
    assert_announced(database, result)
    assert not database.has_table(MARKER)
    assert not database.has_table("taskdb_alembic_version")
    # user_id and run_type exist (nullable), legacy_reason not yet; the 60 Queued rows are all there.
    assert (
        database.value(
            "SELECT string_agg(column_name::text, ',' ORDER BY column_name) FROM information_schema.columns "
            "WHERE table_name = 'tasks' AND column_name IN ('user_id', 'run_type', 'legacy_reason')"
        )
        == "run_type,user_id"
    )
    assert database.value("SELECT count(*) FROM tasks WHERE status = 'Queued' AND user_id IS NULL") == 52
    plan = taskdb("--url", database.url(driver), "plan", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["rows"]["needs_work"] > 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_reset_demo_is_a_healthy_queue_at_head(database: Database, driver: str) -> None:
    result = taskdb("--url", database.url(driver), "reset", "--seed", "demo")
    assert result.returncode == 0, result.stderr
    assert_announced(database, result)
    assert not database.has_table(MARKER)
    assert database.value("SELECT version_num FROM taskdb_alembic_version") == HEAD
    assert database.value("SELECT count(*) FROM tasks WHERE legacy_reason IS NOT NULL") == 0
    assert database.value("SELECT count(DISTINCT status) FROM tasks") == 5
    assert database.value("SELECT string_agg(DISTINCT run_type, ',') FROM tasks") == "cloud,local"
    # The numbers demo.sql's header promises: the limit, the dependency and the credits all bite.
    assert database.value("SELECT claimable_task_count('cloud')") == 2
    assert database.value("SELECT claimable_task_count('gpu')") == 2
    assert database.value("SELECT claimable_task_count('local')") == 3
    assert database.value("SELECT count(*) FROM stale_queued_tasks") == 1
    health = "ready_cloud, ready_local, claimable_cloud, claimable_local, stale_count, flagged_count"
    assert database.value(f"SELECT row({health})::text FROM queue_health") == "(4,3,2,3,1,0)"
    assert "seed demo" in result.stdout and "8 In Progress" in result.stdout


@pytest.mark.parametrize("driver", DRIVERS)
def test_reset_none_gives_empty_tables_at_head(database: Database, driver: str) -> None:
    result = taskdb("--url", database.url(driver), "reset")
    assert result.returncode == 0, result.stderr
    assert_announced(database, result)
    assert not database.has_table(MARKER)
    assert database.value("SELECT version_num FROM taskdb_alembic_version") == HEAD
    assert database.value("SELECT (SELECT count(*) FROM tasks) + (SELECT count(*) FROM users)") == 0

    bare = taskdb("--url", database.url(driver), "reset", "--no-upgrade", "--json")
    assert bare.returncode == 0, bare.stderr
    summary = json.loads(bare.stdout)  # progress went to stderr: stdout is one JSON object
    assert summary["database"] == database.name and summary["revision"] is None and summary["existed"] is True
    assert not database.has_table("tasks") and not database.has_table("taskdb_alembic_version")
    assert_no_password(database.server.password, bare)


def test_reset_creates_a_database_that_does_not_exist(
    taskdb_pg_server: PostgresServer, taskdb_pg_database_factory: Callable[..., str]
) -> None:
    name = taskdb_pg_database_factory()  # dropped again after the test, whatever happens
    taskdb_pg_server.drop_database(name)
    result = taskdb("--url", taskdb_pg_server.url(name), "reset", "--seed", "incident")
    assert result.returncode == 0, result.stderr
    assert f'taskdb reset: created database "{name}"' in result.stdout and "dropped and" not in result.stdout
    assert taskdb_pg_server.fetch_value("SELECT version_num FROM taskdb_alembic_version", name) == HEAD


def test_reset_removes_the_cron_jobs_of_the_old_database(database: Database) -> None:
    cron_db = database.server.cron_database
    jobs_sql = (
        "SELECT CASE WHEN to_regclass('cron.job') IS NULL THEN 0 ELSE "
        f"(SELECT count(*) FROM cron.job WHERE database = '{database.name}') END"
    )
    assert taskdb("--url", database.url(), "reset").returncode == 0
    assert database.server.fetch_value(jobs_sql, cron_db) == 1  # the upgrade scheduled the cleanup job
    result = taskdb("--url", database.url(), "reset", "--no-upgrade")
    assert result.returncode == 0, result.stderr
    assert database.server.fetch_value(jobs_sql, cron_db) == 0  # none left to run against a bare database


REMOTE_HOSTS = ["db.example.com", "localhost.example.com", "prod-db"]


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("host", REMOTE_HOSTS)
def test_refuses_a_host_that_is_not_local_before_connecting(database: Database, driver: str, host: str) -> None:
    # The local database's name on a remote-looking host: nothing of it may be touched.
    url = make_url(database.url(driver)).set(host=host).render_as_string(hide_password=False)
    result = taskdb("--url", url, "reset", "--seed", "demo")
    assert result.returncode == 2
    assert result.stdout == ""  # refused before announcing, connecting or dropping anything
    [line] = result.stderr.splitlines()
    assert line.startswith(f'taskdb: refusing to reset database "{database.name}" on host {host}')
    assert "--force" in line and "not a local host" in line
    assert_no_password(database.server.password, result)
    assert database.has_table(MARKER)


def test_force_resets_a_host_that_is_not_local(database: Database) -> None:
    """libpq connects to hostaddr and uses host only as a name: a 'remote' URL that reaches the local server."""
    url = make_url(database.url()).set(host="db.example.com").update_query_dict({"hostaddr": "127.0.0.1"})
    url_text = url.render_as_string(hide_password=False)
    refused = taskdb("--url", url_text, "reset")
    assert refused.returncode == 2 and "db.example.com is not a local host" in refused.stderr
    assert database.has_table(MARKER)

    forced = taskdb("--url", url_text, "reset", "--force")
    assert forced.returncode == 0, forced.stderr
    assert f'database "{database.name}" on host db.example.com, 127.0.0.1' in forced.stdout
    assert not database.has_table(MARKER)
    assert database.value("SELECT version_num FROM taskdb_alembic_version") == HEAD
    assert_no_password(database.server.password, forced)


def test_refuses_pghost_that_is_not_local(database: Database) -> None:
    """A URL without a host: libpq takes PGHOST, so that is the host that must be local."""
    server = database.server
    url = URL.create(
        "postgresql", server.user, server.password, None, None, database.name, {"port": str(server.port)}
    ).render_as_string(hide_password=False)
    assert "@/" in url
    result = taskdb("--url", url, "reset", env={"PGHOST": "db.example.com"})
    assert result.returncode == 2 and "db.example.com is not a local host" in result.stderr
    assert database.has_table(MARKER)
    local = taskdb("--url", url, "reset", env={"PGHOST": "127.0.0.1"})  # the same URL does reach this server
    assert local.returncode == 0, local.stderr
    assert f'database "{database.name}" on host 127.0.0.1' in local.stdout
    assert not database.has_table(MARKER)


def test_refuses_the_maintenance_database_even_with_force(taskdb_pg_server: PostgresServer) -> None:
    result = taskdb("--url", taskdb_pg_server.url("postgres"), "reset", "--force")
    assert result.returncode == 2 and 'refusing to reset database "postgres"' in result.stderr
    assert result.stdout == ""
    assert taskdb_pg_server.fetch_value("SELECT count(*) FROM pg_database WHERE datname = 'postgres'") == 1


def test_usage_errors_exit_2_with_one_line(database: Database) -> None:
    demo_legacy = taskdb("--url", database.url(), "reset", "--seed", "demo", "--no-upgrade")
    assert demo_legacy.returncode == 2 and len(demo_legacy.stderr.splitlines()) == 1
    assert "--seed demo needs the head schema" in demo_legacy.stderr
    other_db = make_url(database.url()).update_query_dict({"dbname": "prod"}).render_as_string(hide_password=False)
    redirected = taskdb("--url", other_db, "reset")
    assert redirected.returncode == 2 and "sets dbname" in redirected.stderr
    assert database.has_table(MARKER)


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("app.localhost", True),
        ("", True),
        (None, True),
        ("/var/run/postgresql", True),
        ("@abstract", True),
        ("10.255.255.1", False),
        ("0.0.0.0", False),
        ("192.168.1.5", False),
        ("2001:db8::1", False),
        ("db.example.com", False),
        ("localhost.example.com", False),
        ("mylocalhost", False),
    ],
)
def test_which_hosts_are_local(host: str | None, local: bool) -> None:
    assert is_local_host(host) is local


def test_every_host_the_driver_may_use_is_checked() -> None:
    assert inspect_target("postgresql://u:p@localhost/db?host=db.example.com").remote == ("db.example.com",)
    assert inspect_target("postgresql://u:p@/db", environ={"PGHOST": "/tmp"}).local
    assert not inspect_target("postgresql://u:p@/db", environ={"PGHOST": "localhost,db.example.com"}).local
    assert not inspect_target("postgresql://u:p@/db", environ={"PGSERVICE": "prod"}).local
    # pg8000 reads no PGHOST: without a host it connects to localhost
    assert inspect_target("postgresql+pg8000://u:p@/db", environ={"PGHOST": "db.example.com"}).local
    assert inspect_target("postgresql+pg8000://u:p@db.example.com/db?unix_sock=/run/pg/.s.PGSQL.5432").local
    assert "secret" not in repr(inspect_target("postgresql://u:secret@localhost/db"))


def test_reset_is_registered_and_documented() -> None:
    result = taskdb("reset", "--help")
    assert result.returncode == 0 and "--seed {none,demo,incident}" in result.stdout and "--force" in result.stdout
