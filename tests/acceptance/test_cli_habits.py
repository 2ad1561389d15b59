"""The habits a command-line user brings, through the installed command (a subprocess): --version, --url after
the command, exit 2 for an unreachable server on every command, a clear word for an unknown revision, a quiet
broken pipe, text output without Python's True/False/None; the database found as psql finds it (libpq strings,
PG* variables, services, Unix sockets); quiet read-only commands unless -v; heads, show and stamp."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from taskdb import __version__
from taskdb.testing.base import PostgresServer
from tests.acceptance.test_cli import URL_VARS, assert_no_password, taskdb
from tests.helpers import DRIVERS, HEAD, REVISIONS, Db, with_driver

UNREACHABLE = "postgresql://someone:s3cret-pw@127.0.0.1:1/nowhere"


def one_line(result: subprocess.CompletedProcess[str], code: int, *needed: str) -> str:
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("taskdb:")]
    assert len(lines) == 1, result.stderr[-3000:]
    for text in needed:
        assert text in lines[0], lines[0]
    return lines[0]


def test_version() -> None:
    result = taskdb("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"taskdb {__version__}")


def test_url_after_the_command_as_well_as_before(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade()
    assert f"{HEAD} (head)" in taskdb("current", "--url", db.url).stdout
    assert taskdb("cron", "status", "--json", "--url", db.url).returncode == 0
    # given twice, the one after the command wins
    assert f"{HEAD} (head)" in taskdb("--url", UNREACHABLE, "current", "--url", db.url).stdout


@pytest.mark.parametrize("command", [("current",), ("plan",), ("upgrade",), ("cleanup",), ("cron", "status")])
def test_an_unreachable_server_is_exit_2_and_one_line_on_every_command(command: tuple[str, ...]) -> None:
    line = one_line(taskdb(*command, "--url", UNREACHABLE), 2, "cannot connect to", "127.0.0.1:1")
    assert "s3cret-pw" not in line


@pytest.mark.parametrize("revision_range", ["bogus", "0003_backfill:nope"])
def test_an_unknown_revision_is_named(revision_range: str) -> None:
    bad = revision_range.rsplit(":", 1)[-1]
    one_line(taskdb("sql", revision_range), 1, f"unknown revision {bad!r}", "taskdb history")


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    env = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskdb.cli", "sql"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head -1` that is done before taskdb writes its first line (the script takes a moment)
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(60) == 141  # as a program that SIGPIPE ended
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_text_output_has_no_python_words(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade()
    result = taskdb("--url", db.url, "cleanup", "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()
    assert not re.search(r"\b(True|False|None)\b", result.stdout), result.stdout


# -- where the database is, as psql users say it --------------------------------------------------------------

PG_VARIABLES = (
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSYSCONFDIR",
    "TASKDB_DRIVER",
)


def taskdb_with(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``taskdb`` with exactly ``env`` naming the database: no URL, PG* variable or driver of this machine's
    (libpq reads them too, and takes an empty one as set)."""
    base = {k: v for k, v in os.environ.items() if k not in URL_VARS + PG_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "taskdb.cli", *args], env=base | env, capture_output=True, text=True, timeout=300
    )


def libpq_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def target_environment(way: str, url: str, server: PostgresServer, tmp_path: Path) -> dict[str, str]:
    """The environment that names the database at ``url`` one way psql users do (and nothing else)."""
    u = make_url(url)
    assert u.password and u.host and u.port and u.database and u.username
    if way == "pg_variables":
        return {
            "PGHOST": u.host,
            "PGPORT": str(u.port),
            "PGUSER": u.username,
            "PGPASSWORD": u.password,
            "PGDATABASE": u.database,
        }
    if way == "conninfo":
        return {
            "TASKDB_DATABASE_URL": f"host={u.host} port={u.port} dbname={u.database} user={u.username} "
            f"password={libpq_quote(u.password)}"
        }
    if way == "service":
        services = tmp_path / "pg_service.conf"
        services.write_text(
            f"# taskdb's tests\n[queue]\nhost={u.host}\nport={u.port}\ndbname={u.database}\n"
            f"user={u.username}\npassword={u.password}\n"
        )
        return {"PGSERVICE": "queue", "PGSERVICEFILE": str(services)}
    assert way == "unix_socket"
    socket_dir = getattr(server, "socket_dir", None)
    if server.backend != "local" or not socket_dir:
        pytest.skip("the server's Unix socket is reachable from here with the local backend only")
    return {"PGHOST": socket_dir, "PGPORT": str(u.port), "PGUSER": u.username, "PGDATABASE": u.database}


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("way", ["pg_variables", "conninfo", "service", "unix_socket"])
def test_current_and_plan_find_the_database_as_psql_would(
    db: Db, taskdb_pg_server: PostgresServer, tmp_path: Path, way: str, driver: str
) -> None:
    db.load("half_migrated")
    db.upgrade("0004_constraints")
    env = {"TASKDB_DRIVER": driver} | target_environment(way, db.url, taskdb_pg_server, tmp_path)
    current = taskdb_with(env, "current")
    assert current.returncode == 0, current.stderr[-3000:]
    assert "0004_constraints" in current.stdout
    plan = taskdb_with(env, "plan")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "0005_hygiene" in plan.stdout and f"Pending revisions ({len(REVISIONS) - 4})" in plan.stdout
    for result in (current, plan):
        assert_no_password(db, result)


def test_what_pg8000_cannot_do_is_one_line_exit_2() -> None:
    result = taskdb_with({"TASKDB_DRIVER": "pg8000", "PGHOST": "a,b"}, "current")
    one_line(result, 2, "pg8000 connects to one server", "psycopg")


def test_no_target_anywhere_names_the_pg_variables() -> None:
    line = one_line(taskdb_with({}, "current"), 2, "no database URL", "PGHOST", "PGSERVICE")
    assert line.startswith("taskdb: no database URL")


# -- quiet unless -v ----------------------------------------------------------------------------------------


def info_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("INFO")]


def test_read_only_commands_log_nothing_unless_verbose(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade()
    for command in ("current", "plan", "doctor"):
        quiet = taskdb(command, "--url", db.url)
        assert quiet.returncode in (0, 1), quiet.stderr[-3000:]  # doctor: 1 for the incident's stale tasks
        assert info_lines(quiet.stderr) == [], quiet.stderr
    assert f"{HEAD} (head)" in taskdb("current", "--url", db.url).stdout
    # current reads the version table through Alembic, which says so with -v (plan and doctor do not use it)
    for loud in (taskdb("current", "-v", "--url", db.url), taskdb("--verbose", "--url", db.url, "current")):
        assert loud.returncode == 0, loud.stderr[-3000:]
        assert "INFO  [alembic.runtime.migration] Context impl PostgresqlImpl." in loud.stderr, loud.stderr
        assert "Will assume transactional DDL." in loud.stderr


def test_upgrade_keeps_its_progress_lines_and_alembics_only_with_verbose(db: Db, other_db: Db) -> None:
    db.load("half_migrated")
    upgrade = taskdb("upgrade", "--url", db.url)
    assert upgrade.returncode == 0, upgrade.stderr[-3000:]
    logged = info_lines(upgrade.stderr)
    assert any("[taskdb" in line and "taskdb upgrade: public.tasks" in line for line in logged), upgrade.stderr
    assert any("0003_backfill" in line and "batch of" in line for line in logged), upgrade.stderr
    assert not any("[alembic" in line for line in logged), upgrade.stderr
    other_db.load("half_migrated")
    verbose = taskdb("upgrade", "-v", "--url", other_db.url)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "Running upgrade 0003_backfill -> 0004_constraints" in verbose.stderr


def test_history_v_still_shows_the_descriptions() -> None:
    plain, verbose = taskdb("history"), taskdb("history", "-v")
    assert plain.returncode == verbose.returncode == 0
    assert "Path:" not in plain.stdout and "Path:" in verbose.stdout
    assert "Backfill and flag" in verbose.stdout


# -- heads, show, stamp -------------------------------------------------------------------------------------


def test_heads_and_show_need_no_database() -> None:
    env = {"PGHOST": "127.0.0.1", "PGPORT": "1"}  # nothing answers there: none is needed
    heads = taskdb_with(env, "heads")
    assert (heads.returncode, heads.stdout) == (0, f"{HEAD} (head)\n"), heads.stderr
    show = taskdb_with(env, "show", "0003_backfill")
    assert show.returncode == 0, show.stderr
    assert show.stdout.startswith("Rev: 0003_backfill\nParent: 0002_columns\nPath: ")
    assert "0003_backfill.py" in show.stdout
    assert "Backfill and flag: give every task its user and run type" in show.stdout
    assert f"Rev: {HEAD} (head)" in taskdb("show", "head").stdout
    one_line(taskdb("show", "bogus"), 1, "unknown revision 'bogus'", "taskdb history")


APP_REVISION = "a1b2c3d4e5f6"
OBJECTS = (
    "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace) "
    "+ (SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace)"
)


@pytest.mark.parametrize("driver", DRIVERS)
def test_stamp_writes_taskdbs_version_table_only(db: Db, driver: str) -> None:
    db.load("half_migrated")
    db.upgrade()
    db.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    db.execute(f"INSERT INTO alembic_version VALUES ('{APP_REVISION}')")
    before, objects = db.snapshot(), db.scalar(OBJECTS)
    url = with_driver(db.url, driver)
    stamp = taskdb("stamp", "0004_constraints", "--url", url)
    assert stamp.returncode == 0, stamp.stderr[-3000:]
    assert "stamped 0004_constraints" in stamp.stdout
    assert_no_password(db, stamp)
    assert "0004_constraints" in taskdb("current", "--url", url).stdout
    assert db.rows("SELECT version_num FROM alembic_version") == [{"version_num": APP_REVISION}]
    assert db.rows("SELECT version_num FROM taskdb_alembic_version") == [{"version_num": "0004_constraints"}]
    # nothing but the version row changed: no revision's downgrade ran
    assert db.snapshot() == before
    assert db.scalar(OBJECTS) == objects
    assert taskdb("stamp", "head", "--url", url).returncode == 0
    assert db.scalar("SELECT version_num FROM taskdb_alembic_version") == HEAD
    one_line(taskdb("stamp", "nope", "--url", url), 1, "unknown revision 'nope'", "taskdb history")


def test_stamp_purge_replaces_a_revision_this_chain_does_not_know(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade()
    db.execute("UPDATE taskdb_alembic_version SET version_num = 'ffffffffffff'")
    assert taskdb("stamp", "head", "--url", db.url).returncode == 1  # Alembic cannot place the unknown row
    purged = taskdb("stamp", "--purge", "head", "--url", db.url)
    assert purged.returncode == 0, purged.stderr[-3000:]
    assert db.rows("SELECT version_num FROM taskdb_alembic_version") == [{"version_num": HEAD}]
    assert taskdb("stamp", "base", "--url", db.url).returncode == 0  # forgets the revision, drops nothing
    assert db.rows("SELECT version_num FROM taskdb_alembic_version") == []
    assert db.scalar("SELECT to_regclass('task_hygiene_settings') IS NOT NULL")


def test_stamp_refuses_a_read_only_connection_with_exit_2(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade()
    read_only = make_url(db.url).update_query_dict({"options": "-c default_transaction_read_only=on"})
    result = taskdb("stamp", "0004_constraints", "--url", read_only.render_as_string(hide_password=False))
    one_line(result, 2, "taskdb stamp", "read-only")
    assert db.scalar("SELECT version_num FROM taskdb_alembic_version") == HEAD
