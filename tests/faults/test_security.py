"""Security: the least a migration role needs, nothing callable without grants, reset kept local, and no
password in any output.

These tests run on a server of their own (roles are cluster-wide: taskdb's group roles must start absent, and
the pg_cron grants given here must not reach other tests).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import psycopg
import pytest
from psycopg import sql

from taskdb import api
from taskdb.testing import start_postgres
from taskdb.testing.base import PostgresServer, scram_verifier
from tests.helpers import CONSTRAINTS, DRIVERS, HEAD, load_incident

ROOT = Path(api.alembic_ini()).parent
URL_VARS = ("TASKDB_DATABASE_URL", "DATABASE_URL", "PGHOST", "PGHOSTADDR", "PGSERVICE", "PGPASSWORD")
GROUP_ROLES = ("taskdb_autoscaler", "taskdb_worker", "taskdb_monitor")
SCHEDULE_IN_DATABASE = "cron.schedule_in_database(text,text,text,text,text,boolean)"
# URL-hostile, a space and a plus (which a form-encoder turns into '+'), quotes, a backslash, non-ASCII.
PASSWORD = "p@ss:w/rd%?#&=+ 'é\"\\Zq9"
Run = tuple[str, subprocess.CompletedProcess[str]]


# -- a server, databases and roles ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with start_postgres() as started:
        yield started


def role_url(server: PostgresServer, role: str, database: str, driver: str = "psycopg") -> str:
    """The URL as a user writes it: the password percent-encoded by hand, not by SQLAlchemy."""
    scheme = "postgresql" if driver == "psycopg" else f"postgresql+{driver}"
    return f"{scheme}://{role}:{quote(PASSWORD, safe='')}@{server.host}:{server.port}/{database}"


def admin(server: PostgresServer, database: str, *statements: str | sql.Composable) -> None:
    with server.connect(database) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]  # the test's own SQL


def value(server: PostgresServer, database: str, query: str) -> Any:
    return server.fetch_value(query, database)


def make_role(server: PostgresServer, *options: str) -> str:
    """A login role whose password is PASSWORD; only its SCRAM verifier reaches the server."""
    name = f"r_{secrets.token_hex(4)}"
    admin(
        server,
        "postgres",
        sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
            sql.Identifier(name), sql.SQL(" ".join(options)), sql.Literal(scram_verifier(PASSWORD))
        ),
    )
    return name


def incident_database(server: PostgresServer) -> str:
    """A fresh database holding the incident (half-migrated), created and owned by the superuser."""
    name = server.create_database()
    load_incident(server.url(name))
    return name


def snapshot(server: PostgresServer, database: str) -> dict[str, Any]:
    return value(server, database, "SELECT jsonb_object_agg(id, to_jsonb(t)) FROM tasks t")


def taskdb(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    return subprocess.run(
        [sys.executable, "-m", "taskdb.cli", *args],
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- 1. a non-superuser owner runs the whole chain -----------------------------------------------------------

# What the owner role gets, one GRANT each (README "Privileges"): the tests below take each away in turn.
OWNER_PRIVILEGES = {
    "owner of tasks": "ALTER TABLE tasks OWNER TO {role}",
    "CREATE on schema public": "GRANT CREATE ON SCHEMA public TO {role}",
    "SELECT on users": "GRANT SELECT ON users TO {role}",
    "REFERENCES on users": "GRANT REFERENCES ON users TO {role}",
    "SELECT on projects": "GRANT SELECT ON projects TO {role}",
}
# Where the upgrade stops without it, and what it says.
WITHOUT = {
    "owner of tasks": ("0001_baseline", "must be owner of table tasks"),
    "CREATE on schema public": (None, "permission denied for schema public"),
    "SELECT on users": ("0002_columns", "permission denied for table users"),
    "REFERENCES on users": ("0003_backfill", "permission denied for table users"),
    "SELECT on projects": ("0002_columns", "permission denied for table projects"),
}


def owner_database(server: PostgresServer, *, leave_out: str | None = None) -> tuple[str, str]:
    """The incident database and a role that is neither superuser nor CREATEROLE nor CREATEDB, owning tasks
    only: users and projects stay another team's (the superuser's), as in a shared database."""
    database = incident_database(server)
    role = make_role(server, "NOSUPERUSER", "NOCREATEROLE", "NOCREATEDB")
    admin(server, database, *(grant.format(role=role) for what, grant in OWNER_PRIVILEGES.items() if what != leave_out))
    return database, role


# What taskdb leaves behind in public (after `downgrade base`: nothing; Alembic keeps its empty taskdb_alembic_version)
TASKDB_RELATIONS = (
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
    "AND (c.relname LIKE 'task\\_%' OR c.relname LIKE 'taskdb%') "
    "AND c.relname NOT LIKE 'taskdb\\_alembic\\_version%'"
)


def public_may_execute(server: PostgresServer, database: str) -> list[dict[str, Any]]:
    """Every function and procedure in public that a role without any grant may run, from the catalog."""
    nobody = make_role(server)
    with server.connect(database) as conn:
        found = conn.execute(
            "SELECT p.oid::regprocedure::text AS name, p.prosecdef AS definer, p.provolatile AS volatility "
            "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public' AND has_function_privilege(%s, p.oid, 'EXECUTE') ORDER BY 1",
            (nobody,),
        ).fetchall()
    return [{"name": n, "definer": d, "volatility": v} for n, d, v in found]


def test_a_non_superuser_owner_upgrades_to_head_and_downgrades_to_base(server: PostgresServer) -> None:
    database, role = owner_database(server)
    before = snapshot(server, database)
    roles_existed = value(server, database, f"SELECT count(*) FROM pg_roles WHERE rolname IN {GROUP_ROLES}")

    up = taskdb("--url", role_url(server, role, database), "upgrade", "--json")
    assert up.returncode == 0, up.stderr
    head = json.loads(up.stdout)
    assert head["to_revision"] == HEAD and head["constraints_not_valid"] == head["invalid_indexes"] == []
    validated = value(
        server,
        database,
        "SELECT array_agg(conname::text) FROM pg_constraint WHERE conrelid = 'tasks'::regclass AND convalidated",
    )
    assert set(validated) >= CONSTRAINTS
    # 0006 without pg_cron rights: no job, one warning naming the GRANT, and the upgrade goes on (TASKDB_CRON=auto)
    assert f"GRANT pg_read_all_settings TO {role}" in up.stderr and "upgrading without the pg_cron job" in up.stderr
    assert value(server, database, "SELECT count(*) FROM taskdb_cron_jobs") == 0
    if not roles_existed:  # 0005 may not create the group roles: it says so and skips only the grants
        assert f"{role} may not create roles: grants skipped" in up.stderr
    # the functions the role created are its own, and PUBLIC may still run none but the pure helpers
    assert (
        value(server, database, "SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'claim_next_task'")
        == role
    )
    assert not [f for f in public_may_execute(server, database) if f["definer"] or f["volatility"] != "i"]

    down = taskdb("--url", role_url(server, role, database, "pg8000"), "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert snapshot(server, database) == before
    assert value(server, database, TASKDB_RELATIONS) == 0


@pytest.mark.parametrize("missing", list(OWNER_PRIVILEGES))
def test_each_privilege_is_needed_and_a_refused_upgrade_loses_nothing(server: PostgresServer, missing: str) -> None:
    """Without any one of them the upgrade stops where it is first needed, naming what was refused, and leaves
    nothing in the way (0004's write guard included): after the GRANT the rerun finishes, and `downgrade base`
    gives back the rows as they were."""
    database, role = owner_database(server, leave_out=missing)
    before = snapshot(server, database)
    url = role_url(server, role, database)
    up = taskdb("--url", url, "upgrade")
    stopped_at, message = WITHOUT[missing]
    assert up.returncode == 1, up.stderr
    assert message in up.stderr and "Traceback" not in up.stderr
    has_versions = value(server, database, "SELECT to_regclass('taskdb_alembic_version') IS NOT NULL")
    assert (
        value(server, database, "SELECT max(version_num) FROM taskdb_alembic_version") if has_versions else None
    ) == stopped_at
    assert value(server, database, "SELECT count(*) FROM pg_trigger WHERE tgname = 'tasks_taskdb_write_guard'") == 0
    if stopped_at is None:  # refused before anything: not even taskdb_alembic_version
        assert snapshot(server, database) == before and value(server, database, TASKDB_RELATIONS) == 0

    admin(server, database, OWNER_PRIVILEGES[missing].format(role=role))
    rerun = taskdb("--url", url, "upgrade")
    assert rerun.returncode == 0, rerun.stderr
    down = taskdb("--url", url, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert snapshot(server, database) == before
    assert value(server, database, TASKDB_RELATIONS) == 0


def test_with_the_grants_the_readme_lists_the_owner_also_installs_the_cron_jobs(server: PostgresServer) -> None:
    """pg_cron in another database (cron.database_name), created by an admin; the group roles made by an admin."""
    database, role = owner_database(server)
    cron_db = server.cron_database
    assert cron_db != database
    admin(
        server,
        cron_db,
        "CREATE EXTENSION IF NOT EXISTS pg_cron",
        f"GRANT USAGE ON SCHEMA cron TO {role}",
        f"GRANT EXECUTE ON FUNCTION {SCHEDULE_IN_DATABASE} TO {role}",
    )
    admin(
        server,
        "postgres",
        f"GRANT pg_read_all_settings TO {role}",
        *(f"DO $$BEGIN CREATE ROLE {r} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$" for r in GROUP_ROLES),
    )

    up = taskdb("--url", role_url(server, role, database), "upgrade", env={"TASKDB_CRON": "require"})
    assert up.returncode == 0, up.stderr
    jobs = value(
        server,
        cron_db,
        f"SELECT array_agg(jobname::text || '@' || database ORDER BY jobname) FROM cron.job WHERE username = '{role}'",
    )
    assert sorted(jobs) == sorted(
        [f"taskdb_cancel_stale_queued@{database}", f"taskdb_purge_cron_history@{cron_db}"]
    ) or any(j.startswith("taskdb_cancel_stale_queued:") for j in jobs)
    grants = value(
        server,
        database,
        "SELECT ARRAY[has_function_privilege('taskdb_autoscaler', 'claimable_task_count(text,boolean)', 'EXECUTE'), "
        "has_function_privilege('taskdb_worker', 'claim_next_task(text,text)', 'EXECUTE'), "
        "has_table_privilege('taskdb_monitor', 'queue_health', 'SELECT')]",
    )
    assert grants == [True, True, True]
    status = taskdb("--url", role_url(server, role, database), "cron", "status", "--json")
    assert status.returncode == 0, status.stderr

    down = taskdb("--url", role_url(server, role, database), "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert value(server, cron_db, f"SELECT count(*) FROM cron.job WHERE username = '{role}'") == 0


# -- 2. a role without grants gets nothing ------------------------------------------------------------------


@pytest.fixture(scope="module")
def head_database(server: PostgresServer) -> str:
    """The incident at head, upgraded by the superuser (the group roles exist and hold their grants)."""
    database = incident_database(server)
    api.upgrade(server.url(database))
    return database


def test_a_role_without_grants_may_run_and_read_nothing_the_catalog_lists(
    server: PostgresServer, head_database: str
) -> None:
    """Derived from the catalog, so that a function or view added later cannot be forgotten: of every function
    and procedure in the schema, PUBLIC may run only the four pure helpers (IMMUTABLE, not SECURITY DEFINER: the
    application's INSERTs evaluate taskdb_try_uuid, an index expression, in the writer's name); of every table,
    view and sequence, nothing. A new helper must be added here on purpose."""
    database = head_database
    runnable = public_may_execute(server, database)
    assert {f["name"] for f in runnable} == {
        "taskdb_canonical_status(text)",
        "taskdb_canonical_run_type(text)",
        "taskdb_try_uuid(text)",
        "taskdb_run_type_arg(text)",
    }
    assert all(not f["definer"] and f["volatility"] == "i" for f in runnable)

    nobody = make_role(server)
    with server.connect(database) as conn:
        functions = conn.execute(
            "SELECT p.proname, p.prokind, array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) t) "
            "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' "
            "AND p.prorettype <> 'trigger'::regtype AND NOT has_function_privilege('public', p.oid, 'EXECUTE')"
        ).fetchall()
        relations = conn.execute(
            "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'm', 'p', 'S')"
        ).fetchall()
        definers = conn.execute(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public' AND p.prosecdef"
        ).fetchone()[0]
    assert len(functions) >= 5 and definers >= 5 and len(relations) >= 10
    attempts = (
        [
            (
                f"CALL {name}({', '.join(f'NULL::{t}' for t in types)})"
                if kind == "p"
                else f"SELECT {name}({', '.join(f'NULL::{t}' for t in types)})"
            )
            for name, kind, types in functions
        ]
        + [f"SELECT nextval('{name}')" if kind == "S" else f"SELECT * FROM {name} LIMIT 1" for name, kind in relations]
        + [
            "INSERT INTO tasks (task_type) VALUES ('x')",
            "UPDATE tasks SET status = 'Cancelled'",
            "UPDATE task_hygiene_settings SET queued_ttl = '1 second'",
        ]
    )
    with psycopg.connect(
        **server.connect_kwargs(database) | {"user": nobody, "password": PASSWORD}, autocommit=True
    ) as conn:
        for attempt in attempts:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(attempt)  # type: ignore[arg-type]  # built from the catalog above


# -- 3. reset stays local -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["TASKDB_DATABASE_URL", "DATABASE_URL"])
def test_reset_refuses_a_remote_url_from_the_environment_before_connecting(
    server: PostgresServer, variable: str
) -> None:
    """test_reset.py covers --url, PGHOST and hostaddr; the URL as a deploy environment hands it over, too."""
    remote = f"postgresql://deploy:{quote(PASSWORD, safe='')}@db.example.com:{server.port}/prod"
    for args in (("reset",), ("reset", "--seed", "incident", "--json")):
        result = taskdb(*args, env={variable: remote}, timeout=60)
        assert result.returncode == 2 and result.stdout == ""
        assert 'refusing to reset database "prod" on host db.example.com' in result.stderr
        assert "--force" in result.stderr
        assert_no_password(result.stdout + result.stderr)


# -- 4. no password in any output ---------------------------------------------------------------------------


def password_forms() -> set[str]:
    """The password as any layer might print it: raw, percent-encoded (three ways), JSON-escaped."""
    return {
        PASSWORD,
        quote(PASSWORD, safe=""),
        quote(PASSWORD),
        quote_plus(PASSWORD),
        json.dumps(PASSWORD)[1:-1],
        PASSWORD.encode("unicode_escape").decode(),
    }


def fragments() -> set[str]:
    """Every run of 4 characters of every form: a password printed in part is printed."""
    return {form[i : i + 4] for form in password_forms() for i in range(len(form) - 3)}


def assert_no_password(text: str, where: str = "output") -> None:
    leaked = sorted(f for f in fragments() if f in text)
    assert not leaked, f"password fragments {leaked} in {where}:\n{text[-3000:]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def weird(server: PostgresServer) -> str:
    """A superuser whose password is PASSWORD: every command may run as it."""
    return make_role(server, "SUPERUSER")


@pytest.fixture(scope="module")
def weird_limited(server: PostgresServer) -> str:
    """The same password on a role that may do nothing: for the SQL errors."""
    return make_role(server, "NOSUPERUSER")


def run_all(server: PostgresServer, role: str, limited: str, driver: str, *, full: bool) -> list[Run]:
    """Every command, those that succeed and those that fail, as a deploy would run them (``full``: also the
    ones whose output does not depend on the driver). Four independent groups, run side by side."""
    runs: list[Run] = []

    def run(
        label: str,
        *args: str,
        expect: int | None = 0,
        env: dict[str, str] | None = None,
        via_env: bool = False,
        url: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = args if via_env or url is None else ("--url", url, *args)
        result = taskdb(*argv, env=(env or {}) | ({"DATABASE_URL": url} if via_env and url else {}))
        runs.append((label, result))
        if expect is not None:
            assert result.returncode == expect, f"{label}: {result.returncode}\n{result.stderr[-3000:]}"
        return result

    def chain() -> None:
        database = incident_database(server)
        url = role_url(server, role, database, driver)
        if full:
            run("plan", "plan", url=url)
        run("plan --json", "plan", "--json", url=url, via_env=True)
        run("upgrade --json", "upgrade", "--json", url=url, env={"TASKDB_BACKFILL_BATCH_SIZE": "10"})
        if full:
            run("current", "current", url=url)
            run("history", "history", "-v", url=url)
            run("sql", "sql", "0003_backfill:head", url=url)
            run("doctor", "doctor", url=url, expect=None)
            run("cleanup --dry-run --json", "cleanup", "--dry-run", "--json", url=url)
            run("cron status", "cron", "status", url=url)
            run("cron install", "cron", "install", "--json", url=url)
            run("downgrade 0004", "downgrade", "0004_constraints", url=url)
            run("upgrade", "upgrade", url=url, via_env=True)
        run("doctor --json", "doctor", "--json", url=url, expect=None)
        run("cleanup", "cleanup", "--json", url=url)
        run("cron status --json", "cron", "status", "--json", url=url)
        run("downgrade base", "downgrade", "base", url=url)
        run("cleanup before upgrade", "cleanup", "--dry-run", url=url, expect=1)
        run("doctor before upgrade", "doctor", "--json", url=url, expect=2)

    def reset() -> None:
        reset_db = server.create_database()
        reset_url = role_url(server, role, reset_db, driver)
        if full:
            run("reset --seed demo", "reset", "--seed", "demo", url=reset_url)
        run("reset --json", "reset", "--seed", "incident", "--json", url=reset_url)
        server.drop_database(reset_db)

    def failures() -> None:
        database = incident_database(server)
        url = role_url(server, role, database, driver)
        run(
            "wrong database",
            "upgrade",
            url=role_url(server, role, f"no_such_db_{secrets.token_hex(3)}", driver),
            expect=2,
        )
        run("unreachable port", "plan", url=url.replace(f":{server.port}/", f":{free_port()}/"), expect=2)
        run("permission denied (an SQL error)", "upgrade", url=role_url(server, limited, database, driver), expect=1)
        if full:
            run("not a port", "current", url=url.replace(f":{server.port}/", ":pg/"), expect=2)
            run("usage error", "cron", "bogus", url=url, expect=2)

    def lock_timeout() -> None:
        locked = incident_database(server)
        locked_url = role_url(server, role, locked, driver)
        run("upgrade to 0003", "upgrade", "0003_backfill", url=locked_url)
        with server.connect(locked, autocommit=False) as blocker:
            blocker.execute("LOCK TABLE tasks IN ACCESS SHARE MODE")
            run(
                "lock timeout (exit 3)",
                "upgrade",
                url=locked_url,
                expect=3,
                env={"TASKDB_LOCK_TIMEOUT_MS": "100", "TASKDB_LOCK_ATTEMPTS": "2"},
            )
            blocker.rollback()

    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(group) for group in (chain, reset, failures, lock_timeout)]:
            future.result()
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("driver", DRIVERS)
def test_no_command_prints_the_password(server: PostgresServer, weird: str, weird_limited: str, driver: str) -> None:
    runs = run_all(server, weird, weird_limited, driver, full=driver == "psycopg")
    for label, result in runs:
        assert_no_password(result.stdout, f"stdout of {label}")
        assert_no_password(result.stderr, f"stderr of {label}")
        assert "Traceback" not in result.stderr, f"{label}:\n{result.stderr[-3000:]}"
    # the URLs it did print are redacted, and the password-less parts are all there
    printed = "".join(r.stdout + r.stderr for _, r in runs)
    assert f"{weird}:***@127.0.0.1:{server.port}" in printed


@pytest.mark.parametrize("driver", DRIVERS)
def test_alembic_never_prints_the_password(server: PostgresServer, weird: str, driver: str) -> None:
    database = incident_database(server)
    url = role_url(server, weird, database, driver)
    base = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    for args, expect_ok in (
        (("-x", f"url={url}", "upgrade", "head"), True),
        (("-x", f"url={url}", "current"), True),
        (("-x", f"url={url}", "downgrade", "base"), True),
        (("-x", f"url={url.replace(f':{server.port}/', f':{free_port()}/')}", "upgrade", "head"), False),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "alembic", *args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=300
        )
        assert (result.returncode == 0) == expect_ok, result.stderr[-3000:]
        assert_no_password(result.stdout + result.stderr, f"alembic {args[-2:]}")


def test_demo_prints_no_password() -> None:
    """The demo's server has a password of its own, unknown here: no URL it prints may hold one."""
    result = taskdb("demo", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    urls = re.findall(r"postgresql[+\w]*://[^\s'\"]+", result.stdout + result.stderr)
    assert urls and all(re.search(r"://[^:/@\s]+:\*\*\*@", u) for u in urls), urls


@pytest.mark.parametrize("driver", DRIVERS)
def test_no_log_record_or_exception_holds_the_password(
    server: PostgresServer, weird: str, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    """In process, every logger at DEBUG (SQLAlchemy's statements and parameters, the drivers', Alembic's,
    taskdb's), and the exceptions raised on failure, tracebacks included."""
    from taskdb import doctor, plan
    from taskdb.db import autocommit_connection

    caplog.set_level(logging.DEBUG)
    database = incident_database(server)
    url = role_url(server, weird, database, driver)
    with autocommit_connection(url) as conn:
        plan.plan(conn)
    api.upgrade(url)
    with autocommit_connection(url) as conn:
        doctor.diagnose(conn)
    api.downgrade(url, "0003_backfill")
    api.current(url)
    failures: list[str] = []
    for bad in (
        role_url(server, weird, "no_such_db", driver),
        url.replace(f":{server.port}/", f":{free_port()}/"),
        url.replace(f":{server.port}/", ":pg/"),
    ):
        for call in (api.upgrade, api.current, autocommit_connection):
            try:
                if call is autocommit_connection:
                    with autocommit_connection(bad):
                        pass
                else:
                    call(bad)
            except Exception as exc:  # any failure: its message and traceback are what is checked
                failures.append("".join(traceback.format_exception(exc)) + repr(exc))
            else:
                raise AssertionError(f"{call.__name__} did not fail on {bad.split('@')[1]}")
    assert len(failures) == 9
    assert_no_password(caplog.text, "log records")
    assert_no_password("\n".join(r.getMessage() + repr(r.args) for r in caplog.records), "log record arguments")
    for text in failures:
        assert_no_password(text, "an exception")
