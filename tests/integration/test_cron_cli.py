"""`taskdb cron status|install|sync|remove` as users run them (a subprocess, both drivers), on real servers with
real pg_cron: the jobs in cron.job (other database: cron.database_name is 'postgres'; same database), the record
in taskdb_cron_jobs, the settings, exit codes, and no password in any output. The last runs that `status`
shows come from pg_cron really running the job (no row is written by hand)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from taskdb import cron, seeds
from taskdb.testing import start_postgres
from taskdb.testing.base import PostgresServer
from tests.helpers import DRIVERS, Db, user_id, with_driver
from tests.integration.test_cron import STALE_TASK, health, jobs_in, make_db

SAME = "taskdb_cron_cli_same"
URL_VARS = ("TASKDB_DATABASE_URL", "DATABASE_URL")
CLEANUP = cron.CLEANUP_JOB
ENABLE_TEXT = (
    "shared_preload_libraries = 'pg_cron'",
    "cron.database_name",
    "restart",
    "parameter group",
    "cloudsql.enable_pg_cron",
    "azure.extensions",
    "Supabase",
)


def taskdb(db: Db, driver: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI on ``db`` with ``driver``; asserts that no output holds the password."""
    base = {k: v for k, v in os.environ.items() if k not in URL_VARS and k != "TASKDB_CRON"}
    url = db.url if driver == "psycopg" else with_driver(db.url, driver)  # plain postgresql:// is psycopg 3
    result = subprocess.run(
        [sys.executable, "-m", "taskdb.cli", "--url", url, *args],
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    password = make_url(db.url).password
    assert password, "the test server's password is what this checks"
    output = result.stdout + result.stderr
    assert password not in output and quote(password, safe="") not in output
    return result


def ok_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def name_of(db: Db) -> str:
    return str(db.scalar("SELECT current_database()"))


def recorded(db: Db) -> list[dict[str, Any]]:
    return db.rows(
        "SELECT job, jobname, jobid, schedule, installed_at, xmin::text AS xmin FROM taskdb_cron_jobs ORDER BY job"
    )


def pg_cron_version(server: PostgresServer) -> tuple[int, int]:
    version = cron.parse_version(
        server.fetch_value("SELECT default_version FROM pg_available_extensions WHERE name = 'pg_cron'")
    )
    assert version is not None
    return version


@pytest.fixture
def upgraded(db: Db) -> Db:
    """The incident database at head: the jobs are in cron.database_name ('postgres'), another database."""
    db.load("half_migrated")
    db.upgrade()
    return db


@pytest.fixture
def same_server() -> Iterator[PostgresServer]:
    """A server whose cron.database_name is SAME, the database the test upgrades: every taskdb job is its."""
    with start_postgres(settings={"cron.database_name": SAME}) as server:
        yield server


@pytest.fixture
def same_db(same_server: PostgresServer) -> Iterator[Db]:
    db = make_db(same_server, SAME)
    db.load("half_migrated")
    db.upgrade()
    yield db
    db.engine.dispose()


# -- install / remove ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_remove_then_install_restores_the_jobs(taskdb_pg_server: PostgresServer, upgraded: Db, driver: str) -> None:
    db, cron_db, name = upgraded, taskdb_pg_server.cron_database, name_of(upgraded)
    [before] = jobs_in(taskdb_pg_server, cron_db, name)
    assert before["schedule"] == "15 3 * * *" and health(db) == (True, None)

    removed = ok_json(taskdb(db, driver, "cron", "remove", "--json"))
    assert removed["changed"] is True and removed["cleared"] == 2
    outcomes = {job["job"]: job["outcome"] for job in removed["jobs"]}
    others = [j for j in jobs_in(taskdb_pg_server, cron_db) if j["command"].startswith("CALL")]
    # the purge job serves every taskdb database of the server: it goes with the last cleanup job only
    assert outcomes == {CLEANUP: "unscheduled", cron.PURGE_JOB: "kept" if others else "unscheduled"}
    assert jobs_in(taskdb_pg_server, cron_db, name) == []
    assert db.scalar("SELECT count(*) FROM taskdb_cron_jobs") == 0
    assert health(db) == (False, False)

    # doctor-style: status says nothing is installed and how to install it; the queue keeps working
    status = ok_json(taskdb(db, driver, "cron", "status", "--json"))
    assert status["installed"] is False and status["jobs"] == []
    assert any("no taskdb pg_cron job is installed" in n and "`taskdb cron install`" in n for n in status["notes"])
    text = taskdb(db, driver, "cron", "status")
    assert text.returncode == 0 and "cleanup job NOT installed" in text.stdout and "taskdb cron install" in text.stdout
    db.execute(STALE_TASK, id=str(uuid.uuid4()), user=user_id("bob"))
    assert ok_json(taskdb(db, driver, "cleanup", "--json"))["cancelled"] == 1

    again = ok_json(taskdb(db, driver, "cron", "remove", "--json"))  # idempotent
    assert again["changed"] is False and again["message"].startswith("nothing to remove")
    sync = taskdb(db, driver, "cron", "sync")  # a removed job is not brought back by sync
    assert sync.returncode == 1 and "nothing to sync" in sync.stderr and "taskdb cron install" in sync.stderr
    assert jobs_in(taskdb_pg_server, cron_db, name) == []

    installed = ok_json(taskdb(db, driver, "cron", "install", "--json"))
    assert installed["changed"] is True and installed["schedule"] == "15 3 * * *"
    [after] = jobs_in(taskdb_pg_server, cron_db, name)
    assert (after["jobname"], after["schedule"], after["active"]) == (before["jobname"], "15 3 * * *", True)
    assert after["command"] == before["command"]
    assert {r["job"]: r["jobid"] for r in recorded(db)}[CLEANUP] == after["jobid"]
    assert health(db) == (True, None)

    rows_before = recorded(db)
    same = ok_json(taskdb(db, driver, "cron", "install", "--json"))  # idempotent: nothing rewritten
    assert same["changed"] is False and "nothing changed" in same["message"]
    assert jobs_in(taskdb_pg_server, cron_db, name) == [after] and recorded(db) == rows_before


def test_remove_in_the_same_database_leaves_no_taskdb_job(same_server: PostgresServer, same_db: Db) -> None:
    """cron.database_name is the target: after remove, cron.job holds no taskdb job at all (and pg_cron, which
    taskdb created, is dropped as the downgrade does); install brings both back."""
    assert {j["jobname"] for j in jobs_in(same_server, SAME)} == {CLEANUP, cron.PURGE_JOB}
    result = taskdb(same_db, "pg8000", "cron", "remove")
    assert result.returncode == 0, result.stderr
    assert "taskdb cron install" in result.stdout and "2 row(s) cleared" in result.stdout
    assert [j for j in jobs_in(same_server, SAME) if j["jobname"].startswith("taskdb_")] == []
    assert same_db.scalar("SELECT count(*) FROM taskdb_cron_jobs") == 0
    assert same_db.scalar("SELECT to_regclass('cron.job')") is None  # taskdb had created pg_cron, nobody else uses it
    assert health(same_db) == (False, False)

    installed = ok_json(taskdb(same_db, "psycopg", "cron", "install", "--json"))
    assert installed["created_extension"] is True
    jobs = {j["jobname"]: j for j in jobs_in(same_server, SAME)}
    assert set(jobs) == {CLEANUP, cron.PURGE_JOB} and jobs[CLEANUP]["schedule"] == "15 3 * * *"
    assert health(same_db) == (True, True)
    # recorded as the revision's: a downgrade of 0006 still drops the pg_cron taskdb created
    assert same_db.scalar("SELECT revision FROM taskdb_owned_objects WHERE kind = 'extension'") == cron.CRON_REVISION
    same_db.downgrade("0005_hygiene")
    assert same_db.scalar("SELECT to_regclass('cron.job')") is None


def test_remove_keeps_a_pg_cron_and_jobs_that_are_not_taskdbs(same_server: PostgresServer) -> None:
    db = make_db(same_server, SAME)
    db.execute("CREATE EXTENSION pg_cron")
    db.execute("SELECT cron.schedule('someone_elses_job', '0 1 * * *', 'SELECT 1')")
    db.load("half_migrated")
    db.upgrade()
    assert taskdb(db, "psycopg", "cron", "remove").returncode == 0
    assert [j["jobname"] for j in jobs_in(same_server, SAME)] == ["someone_elses_job"]
    db.engine.dispose()


# -- sync ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_sync_applies_an_update_of_cleanup_schedule(
    taskdb_pg_server: PostgresServer,
    upgraded: Db,
    driver: str,
) -> None:
    db, cron_db, name = upgraded, taskdb_pg_server.cron_database, name_of(upgraded)
    [before] = jobs_in(taskdb_pg_server, cron_db, name)
    in_sync = ok_json(taskdb(db, driver, "cron", "sync", "--json"))
    assert in_sync["changed"] is False and in_sync["message"].startswith("already in sync")
    assert jobs_in(taskdb_pg_server, cron_db, name) == [before]  # not even rewritten (same row version)

    db.execute("UPDATE task_hygiene_settings SET cleanup_schedule = '30 4 * * *'")  # the DBA's change
    status = ok_json(taskdb(db, driver, "cron", "status", "--json"))
    assert status["in_sync"] is False and status["cleanup_schedule"] == "30 4 * * *"
    assert any("`taskdb cron sync`" in note for note in status["notes"])

    synced = taskdb(db, driver, "cron", "sync")
    assert synced.returncode == 0, synced.stderr
    assert "rescheduled from '15 3 * * *'" in synced.stdout and "synced" in synced.stdout
    [after] = jobs_in(taskdb_pg_server, cron_db, name)
    assert (after["jobid"], after["jobname"], after["schedule"]) == (before["jobid"], before["jobname"], "30 4 * * *")
    assert {r["job"]: r["schedule"] for r in recorded(db)}[CLEANUP] == "30 4 * * *"
    assert ok_json(taskdb(db, driver, "cron", "status", "--json"))["in_sync"] is True


def test_sync_keeps_a_job_the_dba_deactivated_inactive(taskdb_pg_server: PostgresServer, upgraded: Db) -> None:
    db, cron_db, name = upgraded, taskdb_pg_server.cron_database, name_of(upgraded)
    [job] = jobs_in(taskdb_pg_server, cron_db, name)
    with taskdb_pg_server.connect(cron_db) as conn:
        conn.execute("SELECT cron.alter_job(%s, active => false)", (job["jobid"],))
    status = ok_json(taskdb(db, "psycopg", "cron", "status", "--json"))
    cleanup = next(j for j in status["jobs"] if j["job"] == CLEANUP)
    assert cleanup["active"] is False
    assert any("is inactive" in n and f"cron.alter_job({job['jobid']}, active => true)" in n for n in status["notes"])
    db.execute("UPDATE task_hygiene_settings SET cleanup_schedule = '0 5 * * *'")
    assert taskdb(db, "pg8000", "cron", "sync").returncode == 0
    [after] = jobs_in(taskdb_pg_server, cron_db, name)
    assert (after["jobid"], after["schedule"], after["active"]) == (job["jobid"], "0 5 * * *", False)


def test_sync_schedules_a_recorded_job_that_vanished_from_cron_job(
    taskdb_pg_server: PostgresServer,
    upgraded: Db,
) -> None:
    db, cron_db, name = upgraded, taskdb_pg_server.cron_database, name_of(upgraded)
    [job] = jobs_in(taskdb_pg_server, cron_db, name)
    with taskdb_pg_server.connect(cron_db) as conn:
        conn.execute("SELECT cron.unschedule(%s)", (job["jobid"],))  # by hand, behind taskdb's back
    status = ok_json(taskdb(db, "psycopg", "cron", "status", "--json"))
    assert status["installed"] is False
    assert any("missing from cron.job" in n and "`taskdb cron install`" in n for n in status["notes"])
    assert ok_json(taskdb(db, "psycopg", "cron", "sync", "--json"))["changed"] is True
    [again] = jobs_in(taskdb_pg_server, cron_db, name)
    assert again["schedule"] == "15 3 * * *"
    assert {r["job"]: r["jobid"] for r in recorded(db)}[CLEANUP] == again["jobid"]


# -- install --schedule -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_install_with_a_new_schedule_updates_the_setting_the_job_and_the_record(
    taskdb_pg_server: PostgresServer, upgraded: Db, driver: str
) -> None:
    db, cron_db, name = upgraded, taskdb_pg_server.cron_database, name_of(upgraded)
    [before] = jobs_in(taskdb_pg_server, cron_db, name)
    installed_at = {r["job"]: r["installed_at"] for r in recorded(db)}[CLEANUP]
    result = taskdb(db, driver, "cron", "install", "--schedule", " */10  * * * * ", "--json")
    report = ok_json(result)
    assert (report["previous_schedule"], report["schedule"], report["changed"]) == ("15 3 * * *", "*/10 * * * *", True)
    # recorded: the settings, the job (same jobid), the record's schedule and installed_at, and a log line
    assert db.scalar("SELECT cleanup_schedule FROM task_hygiene_settings") == "*/10 * * * *"
    [after] = jobs_in(taskdb_pg_server, cron_db, name)
    assert (after["jobid"], after["schedule"]) == (before["jobid"], "*/10 * * * *")
    row = next(r for r in recorded(db) if r["job"] == CLEANUP)
    assert row["schedule"] == "*/10 * * * *" and row["installed_at"] > installed_at
    assert "cleanup_schedule changed from '15 3 * * *' to '*/10 * * * *' by taskdb cron install (" in result.stderr
    assert ok_json(taskdb(db, driver, "cron", "status", "--json"))["in_sync"] is True


def invalid_schedules() -> list[Any]:
    return [
        pytest.param("61 * * * *", "invalid schedule '61 * * * *'", id="minute-out-of-range"),
        pytest.param("every day", "invalid schedule 'every day'", id="words"),
        pytest.param("* * * *", "invalid schedule", id="four-fields"),
        pytest.param("1 2 * * *; DROP TABLE tasks", "invalid schedule", id="injection"),
        pytest.param("2 seconds", "'2 seconds' needs pg_cron >= 1.5", id="seconds-on-1.4"),
    ]


@pytest.mark.parametrize(("schedule", "message"), invalid_schedules())
def test_install_with_an_invalid_schedule_fails_and_changes_nothing(
    taskdb_pg_server: PostgresServer, upgraded: Db, schedule: str, message: str
) -> None:
    db, cron_db, name = upgraded, taskdb_pg_server.cron_database, name_of(upgraded)
    if "seconds" in schedule and pg_cron_version(taskdb_pg_server) >= cron.SECONDS_SINCE:
        pytest.skip("this server's pg_cron takes seconds schedules (covered by the 1.4 server)")
    jobs, record = jobs_in(taskdb_pg_server, cron_db), recorded(db)
    result = taskdb(db, "pg8000", "cron", "install", "--schedule", schedule)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("taskdb: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert db.scalar("SELECT cleanup_schedule FROM task_hygiene_settings") == "15 3 * * *"
    assert jobs_in(taskdb_pg_server, cron_db) == jobs and recorded(db) == record
    assert [j["schedule"] for j in jobs_in(taskdb_pg_server, cron_db, name)] == ["15 3 * * *"]


def test_sync_of_an_invalid_stored_schedule_says_to_fix_the_setting(
    taskdb_pg_server: PostgresServer,
    upgraded: Db,
) -> None:
    db, cron_db, name = upgraded, taskdb_pg_server.cron_database, name_of(upgraded)
    [before] = jobs_in(taskdb_pg_server, cron_db, name)
    db.execute("UPDATE task_hygiene_settings SET cleanup_schedule = '99 * * * *'")
    result = taskdb(db, "psycopg", "cron", "sync")
    assert result.returncode == 2 and "fix task_hygiene_settings.cleanup_schedule" in result.stderr
    assert jobs_in(taskdb_pg_server, cron_db, name) == [before]


# -- without 0006, without pg_cron ----------------------------------------------------------------------------------


def test_a_database_before_0006(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade("0005_hygiene")
    status = ok_json(taskdb(db, "psycopg", "cron", "status", "--json"))
    assert status["installed"] is False and any("`taskdb upgrade`" in note for note in status["notes"])
    install = taskdb(db, "pg8000", "cron", "install")
    assert install.returncode == 1 and "has not had revision 0006_cron" in install.stderr
    assert "taskdb upgrade" in install.stderr
    assert ok_json(taskdb(db, "psycopg", "cron", "remove", "--json"))["changed"] is False


@pytest.fixture
def no_cron_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgresServer]:
    """A real server WITHOUT pg_cron in shared_preload_libraries (taskdb.testing always preloads it: its merge
    is bypassed here, as in test_cron.py)."""
    from taskdb.testing import container, local

    def merge(base: dict[str, str], extra: dict[str, str] | None) -> dict[str, str]:
        return {**base, **(extra or {})}

    monkeypatch.setattr(local, "merge_settings", merge)
    monkeypatch.setattr(container, "merge_settings", merge)
    with start_postgres(settings={"shared_preload_libraries": ""}) as server:
        monkeypatch.undo()
        assert not server.cron_preloaded
        yield server


def test_install_without_pg_cron_exits_2_saying_how_to_enable_it(no_cron_server: PostgresServer) -> None:
    db = make_db(no_cron_server)
    db.load("half_migrated")
    db.upgrade()  # TASKDB_CRON=auto: without the job
    settings = db.rows("SELECT * FROM task_hygiene_settings")
    for driver in DRIVERS:
        # TASKDB_CRON=skip does not stop an explicit install from saying what is missing
        result = taskdb(db, driver, "cron", "install", "--schedule", "0 * * * *", env={"TASKDB_CRON": "skip"})
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("taskdb: taskdb cron install: pg_cron is not available")
        assert all(text in result.stderr for text in ENABLE_TEXT), result.stderr
        assert "rerun `taskdb cron install`" in result.stderr and "Nothing was changed" in result.stderr
    assert db.rows("SELECT * FROM task_hygiene_settings") == settings
    assert db.scalar("SELECT count(*) FROM taskdb_cron_jobs") == 0
    status = ok_json(taskdb(db, "psycopg", "cron", "status", "--json"))
    assert status["installed"] is False and status["readiness"]["ready"] is False
    assert any("shared_preload_libraries = 'pg_cron'" in note for note in status["notes"])
    assert ok_json(taskdb(db, "pg8000", "cron", "remove", "--json"))["changed"] is False
    db.engine.dispose()


def test_connection_failure_is_exit_2_without_the_password(upgraded: Db) -> None:
    url = make_url(upgraded.url)
    dead = Db(url.set(port=1).render_as_string(hide_password=False), upgraded.engine)
    for action in ("status", "install", "sync", "remove"):
        result = taskdb(dead, "pg8000", "cron", action)
        assert result.returncode == 2 and "cannot connect" in result.stderr


# -- status shows the job's real runs --------------------------------------------------------------------------------


@pytest.mark.slow
def test_status_lists_the_last_runs_pg_cron_made(taskdb_pg_server: PostgresServer, upgraded: Db) -> None:
    """pg_cron >= 1.5 runs a '2 seconds' job at once; 1.4 (Debian bookworm) only at the next minute (<= 60 s)."""
    db, name = upgraded, name_of(upgraded)
    schedule = "2 seconds" if pg_cron_version(taskdb_pg_server) >= cron.SECONDS_SINCE else "* * * * *"
    stale = str(uuid.uuid4())
    db.execute(STALE_TASK, id=stale, user=user_id("bob"))
    try:
        ok_json(taskdb(db, "pg8000", "cron", "install", "--schedule", schedule, "--json"))
        budget = time.monotonic() + (20 if schedule == "2 seconds" else 75)
        while True:
            report = ok_json(taskdb(db, "psycopg", "cron", "status", "--json"))
            cleanup = next(j for j in report["jobs"] if j["job"] == CLEANUP)
            if any(run["status"] in ("succeeded", "failed") for run in cleanup["last_runs"]):
                break
            assert time.monotonic() < budget, f"pg_cron did not run {cleanup['jobname']} in time: {report}"
            time.sleep(3)
        run = next(run for run in cleanup["last_runs"] if run["status"] in ("succeeded", "failed"))
        assert run["status"] == "succeeded", run
        assert run["start_time"] and run["duration_ms"] is not None and run["duration_ms"] >= 0
        assert run["return_message"] == "CALL"
        assert 1 <= len(cleanup["last_runs"]) <= cron.LAST_RUNS
        assert cleanup["schedule"] == schedule and cleanup["active"] is True and cleanup["run_database"] == name
        assert db.scalar("SELECT status FROM tasks WHERE id = :id", id=stale) == "Cancelled"  # it really ran
        text = taskdb(db, "pg8000", "cron", "status")
        assert (
            text.returncode == 0
            and " succeeded in " in text.stdout
            and "no runs yet" not in text.stdout.split("job taskdb_purge")[0]
        )
        print("\n" + text.stdout)
    finally:
        taskdb(db, "psycopg", "cron", "remove")  # no every-minute job left behind on the shared server
    assert jobs_in(taskdb_pg_server, taskdb_pg_server.cron_database, name) == []


def test_the_other_database_is_read_with_the_same_driver(taskdb_pg_server: PostgresServer, upgraded: Db) -> None:
    """status reads cron.job in cron.database_name ('postgres' here) with the URL's driver and credentials."""
    for driver in DRIVERS:
        report = ok_json(taskdb(upgraded, driver, "cron", "status", "--json"))
        assert report["readiness"]["same_database"] is False
        assert {j["job"]: (j["in_cron_job"], j["active"], j["unreadable"]) for j in report["jobs"]} == {
            CLEANUP: (True, True, None),
            cron.PURGE_JOB: (True, True, None),
        }
        assert report["installed"] is True and report["in_sync"] is True and report["notes"] == []
    engine = sa.create_engine(with_driver(upgraded.url, "pg8000"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            assert cron.status(conn)["installed"] is True  # the library, as the CLI calls it
    finally:
        engine.dispose()


def test_a_cron_database_the_role_cannot_reach() -> None:
    """A non-superuser application role whose jobs live in 'postgres', which it may no longer connect to: remove
    fails (exit 1) before changing anything and says what to run by hand; status says it cannot read cron.job;
    install exits 2 naming the GRANT."""
    password = f"app-{uuid.uuid4().hex}"
    with start_postgres() as server:
        with server.connect("postgres") as conn:
            conn.execute(f"CREATE ROLE taskdb_cli_app LOGIN PASSWORD '{password}' IN ROLE pg_read_all_settings")
            conn.execute("CREATE EXTENSION pg_cron")
            conn.execute("GRANT USAGE ON SCHEMA cron TO taskdb_cli_app")
            conn.execute(f"GRANT EXECUTE ON FUNCTION {cron.SCHEDULE_IN_DATABASE} TO taskdb_cli_app")
        admin = make_db(server)
        name = name_of(admin)
        admin.execute(f"ALTER DATABASE {name} OWNER TO taskdb_cli_app")
        admin.execute("ALTER SCHEMA public OWNER TO taskdb_cli_app")
        url = server.url_object(name).set(username="taskdb_cli_app", password=password)
        app = Db(url.render_as_string(hide_password=False), admin.engine)
        with sa.create_engine(with_driver(app.url, "psycopg"), poolclass=sa.NullPool).begin() as conn:
            seeds.load_schema(conn, "half_migrated")
        app.upgrade()
        [job] = jobs_in(server, "postgres", name)
        with server.connect("postgres") as conn:
            conn.execute("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC")

        removed = taskdb(app, "pg8000", "cron", "remove")
        assert removed.returncode == 1, removed.stdout + removed.stderr
        assert "taskdb cron remove: cannot remove taskdb's pg_cron jobs in 'postgres'" in removed.stderr
        assert "SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = " in removed.stderr
        assert jobs_in(server, "postgres", name) == [job] and admin.scalar("SELECT count(*) FROM taskdb_cron_jobs") == 2

        status = ok_json(taskdb(app, "psycopg", "cron", "status", "--json"))
        assert status["installed"] is None and all(j["unreadable"] for j in status["jobs"])
        assert any("could not be read" in note for note in status["notes"])

        install = taskdb(app, "psycopg", "cron", "install")
        assert install.returncode == 2 and "GRANT CONNECT ON DATABASE postgres TO taskdb_cli_app" in install.stderr
        admin.engine.dispose()
