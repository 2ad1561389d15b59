"""The pg_cron jobs of revision 0006_cron, on real servers: cron.database_name is the target database, is
another database, or pg_cron is missing; TASKDB_CRON auto / require / skip; idempotence; downgrade; the purge;
and the job really firing on pg_cron 1.4 (a minute schedule) and 1.6 (a seconds schedule)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from taskdb import api, cron
from taskdb.errors import ConfigError
from taskdb.testing import available_targets, start_postgres
from taskdb.testing.base import PostgresServer, Target
from tests.helpers import DRIVERS, Db, load_incident, user_id, with_driver
from tests.helpers_catalog import catalog

SAME = "taskdb_cron_same"  # the database a "same database" server names in cron.database_name
CLEANUP_CALL = "CALL \"public\".taskdb_cancel_stale_queued_all('pg_cron job taskdb_cancel_stale_queued')"
STALE_TASK = (
    "INSERT INTO tasks (id, task_type, status, created_at, user_id, run_type) "
    "VALUES (CAST(:id AS uuid), 't', 'Queued', now() - interval '30 days', CAST(:user AS uuid), 'cloud')"
)


def make_db(server: PostgresServer, name: str | None = None) -> Db:
    name = server.create_database(name)
    url = server.url(name)
    return Db(url, sa.create_engine(with_driver(url, "psycopg"), poolclass=sa.NullPool))


def jobs_in(server: PostgresServer, cron_db: str, run_db: str | None = None) -> list[dict[str, Any]]:
    """cron.job rows (as the superuser: every user's) of one cron database, optionally those running in run_db."""
    with server.connect(cron_db) as conn:
        if conn.execute("SELECT to_regclass('cron.job')").fetchone() == (None,):
            return []
        cur = conn.execute(
            "SELECT jobid, jobname::text AS jobname, schedule, command, database, active, xmin::text AS xmin "
            "FROM cron.job WHERE %(db)s::text IS NULL OR database = %(db)s ORDER BY jobid",
            {"db": run_db},
        )
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def health(db: Db) -> tuple[Any, Any]:
    row = db.rows("SELECT cron_job_installed, cron_job_active FROM queue_health")[0]
    return row["cron_job_installed"], row["cron_job_active"]


def cron_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "taskdb.cron" and r.levelno >= logging.WARNING]


def stamp(db: Db, revision: str) -> None:
    command.stamp(api.alembic_config(with_driver(db.url, "psycopg")), revision)


@pytest.fixture
def same_server() -> Iterator[PostgresServer]:
    """A server whose cron.database_name is SAME, an empty database the test upgrades."""
    with start_postgres(settings={"cron.database_name": SAME}) as server:
        yield server


@pytest.fixture
def same_db(same_server: PostgresServer) -> Iterator[Db]:
    db = make_db(same_server, SAME)
    yield db
    db.engine.dispose()


@pytest.fixture
def fresh_server() -> Iterator[PostgresServer]:
    """A server of its own (cron.database_name = 'postgres') for tests that count every job in cron.job."""
    with start_postgres() as server:
        yield server


def target_params() -> list[Any]:
    """Every server this machine can start: pg_cron 1.4 (local 15, container 15) and 1.6 (container 17)."""
    params = []
    for target in available_targets():
        marks = [pytest.mark.container] if target.backend == "container" else []
        params.append(pytest.param(target, id=target.id, marks=marks))
    return params


@pytest.fixture(params=target_params())
def target_server(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    """A server of its own per target (cron.database_name = 'postgres')."""
    with request.param.start() as server:
        yield server


@pytest.fixture
def no_cron_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgresServer]:
    """A real server WITHOUT pg_cron in shared_preload_libraries (cron.database_name still set, as after a
    half-done configuration). taskdb.testing always preloads pg_cron, so its merge is bypassed here."""
    from taskdb.testing import container, local

    def merge(base: dict[str, str], extra: dict[str, str] | None) -> dict[str, str]:
        return {**base, **(extra or {})}

    monkeypatch.setattr(local, "merge_settings", merge)
    monkeypatch.setattr(container, "merge_settings", merge)
    with start_postgres(settings={"shared_preload_libraries": ""}) as server:
        monkeypatch.undo()
        assert not server.cron_preloaded
        yield server


# -- configuration ---------------------------------------------------------------------------------------


def test_mode_comes_from_TASKDB_CRON_and_a_typo_is_a_config_error() -> None:
    assert cron.cron_mode({}) == "auto"
    assert cron.cron_mode({"TASKDB_CRON": " Require "}) == "require"
    assert cron.cron_mode({"TASKDB_CRON": "skip"}) == "skip"
    with pytest.raises(ConfigError, match=r"TASKDB_CRON='always' is not one of: auto, require, skip"):
        cron.cron_mode({"TASKDB_CRON": "always"})


def test_schedules_are_checked_against_the_pg_cron_version() -> None:
    def job(schedule: str, name: str = "j") -> cron.CronJobConfig:
        return cron.CronJobConfig(name, schedule, "SELECT 1", "db")

    for ok in ("15 3 * * *", "*/5 * * * 1-5", "0 0 * * MON", "@daily"):
        job(ok).validate((1, 4))
    for newer in ("2 seconds", "0 0 $ * *"):  # pg_cron 1.5+
        job(newer).validate((1, 6))
        with pytest.raises(ConfigError, match=r"needs pg_cron >= 1.5 .* '\* \* \* \* \*'"):
            job(newer).validate((1, 4))
    for bad in ("every day", "1 2 3 4", "60 seconds", "1 2 * * *; DROP TABLE tasks"):
        with pytest.raises(ConfigError, match="invalid schedule"):
            job(bad).validate((1, 6))
    with pytest.raises(ConfigError, match="1 to 63 bytes"):
        job("@daily", name="x" * 64).validate()
    long_db = "d" * 60
    assert len(cron.qualified_name(cron.CLEANUP_JOB, long_db).encode()) <= 63
    assert cron.qualified_name(cron.CLEANUP_JOB, "app") == "taskdb_cancel_stale_queued:app"


def test_an_invalid_TASKDB_CRON_stops_the_upgrade_before_it_changes_anything(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.load("half_migrated")
    db.upgrade("0005_hygiene")
    before = catalog(db)
    monkeypatch.setenv("TASKDB_CRON", "yes")
    with pytest.raises(ConfigError, match="TASKDB_CRON='yes'"):
        api.upgrade(with_driver(db.url, "psycopg"), raise_taskdb_errors=True)
    assert catalog(db) == before and db.scalar("SELECT version_num FROM taskdb_alembic_version") == "0005_hygiene"


# -- the target database is cron.database_name ------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_same_database_schedules_with_cron_schedule(same_server: PostgresServer, same_db: Db, driver: str) -> None:
    same_db.load("half_migrated")
    same_db.upgrade(driver=driver)
    jobs = {j["jobname"]: j for j in jobs_in(same_server, SAME)}
    assert set(jobs) == {"taskdb_cancel_stale_queued", "taskdb_purge_cron_history"}
    cleanup = jobs["taskdb_cancel_stale_queued"]
    assert (cleanup["schedule"], cleanup["command"], cleanup["database"], cleanup["active"]) == (
        "15 3 * * *",
        CLEANUP_CALL,
        SAME,
        True,
    )
    assert jobs["taskdb_purge_cron_history"]["database"] == SAME
    assert health(same_db) == (True, True)
    recorded = same_db.rows(
        "SELECT job, jobname, jobid, cron_database, run_database FROM taskdb_cron_jobs ORDER BY job"
    )
    assert recorded == [
        {
            "job": "taskdb_cancel_stale_queued",
            "jobname": "taskdb_cancel_stale_queued",
            "jobid": cleanup["jobid"],
            "cron_database": SAME,
            "run_database": SAME,
        },
        {
            "job": "taskdb_purge_cron_history",
            "jobname": "taskdb_purge_cron_history",
            "jobid": jobs["taskdb_purge_cron_history"]["jobid"],
            "cron_database": SAME,
            "run_database": SAME,
        },
    ]
    assert (
        same_db.scalar(
            "SELECT revision FROM taskdb_owned_objects WHERE kind = 'extension' AND name = :n",
            n=f"pg_cron in database {SAME}",
        )
        == "0006_cron"
    )
    # A deactivated job is reported as such (the DBA's switch, which taskdb leaves alone).
    same_db.execute("SELECT cron.alter_job(:id, active => false)", id=cleanup["jobid"])
    assert health(same_db) == (True, False)


def test_health_is_right_for_a_role_that_is_not_the_jobs_owner(same_server: PostgresServer, same_db: Db) -> None:
    """cron.job shows each role only its own jobs (row-level security): the monitor must still see the job."""
    same_db.load("half_migrated")
    same_db.upgrade()
    same_db.execute("CREATE ROLE taskdb_test_monitor LOGIN PASSWORD 'monitor-pw' IN ROLE taskdb_monitor")
    same_db.execute("GRANT USAGE ON SCHEMA cron TO taskdb_test_monitor")  # may read cron.job: RLS filters it
    url = same_server.url_object(SAME).set(username="taskdb_test_monitor", password="monitor-pw")
    engine = sa.create_engine(with_driver(url.render_as_string(hide_password=False), "psycopg"), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            visible = conn.execute(sa.text("SELECT count(*) FROM cron.job")).scalar()
            row = conn.execute(sa.text("SELECT cron_job_installed, cron_job_active FROM queue_health")).one()
    finally:
        engine.dispose()
    assert visible == 0  # the monitor itself sees no job in cron.job ...
    assert tuple(row) == (True, True)  # ... and queue_health still tells the truth


def test_downgrade_drops_the_extension_it_created_and_restores_0005(same_server: PostgresServer, same_db: Db) -> None:
    same_db.load("half_migrated")
    same_db.upgrade("0005_hygiene")
    at_0005 = catalog(same_db)
    same_db.upgrade()
    same_db.downgrade("0005_hygiene")
    assert same_db.scalar("SELECT to_regclass('cron.job')") is None  # taskdb created pg_cron: it goes
    assert catalog(same_db) == at_0005  # taskdb_cron_jobs gone, 0005's taskdb_cron_job_state back
    assert same_db.scalar("SELECT count(*) FROM taskdb_owned_objects WHERE kind = 'extension'") == 0
    same_db.upgrade()  # and up again
    assert {j["jobname"] for j in jobs_in(same_server, SAME)} == {
        "taskdb_cancel_stale_queued",
        "taskdb_purge_cron_history",
    }


def test_downgrade_keeps_a_pg_cron_that_was_there_before(same_server: PostgresServer, same_db: Db) -> None:
    same_db.execute("CREATE EXTENSION pg_cron")
    same_db.execute("SELECT cron.schedule('someone_elses_job', '0 1 * * *', 'SELECT 1')")
    same_db.load("half_migrated")
    same_db.upgrade()
    assert same_db.scalar("SELECT count(*) FROM taskdb_owned_objects WHERE kind = 'extension'") == 0
    same_db.downgrade("0005_hygiene")
    assert [j["jobname"] for j in jobs_in(same_server, SAME)] == ["someone_elses_job"]
    same_db.downgrade("base")
    assert same_db.scalar("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'") is not None


# -- cron.database_name is another database -----------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_other_database_schedules_in_database_and_downgrade_removes_it(
    taskdb_pg_server: PostgresServer, db: Db, driver: str
) -> None:
    cron_db = taskdb_pg_server.cron_database
    name = db.scalar("SELECT current_database()")
    assert cron_db != name
    db.load("half_migrated")
    db.upgrade(driver=driver)  # connects to cron_db with the same URL and driver
    [job] = jobs_in(taskdb_pg_server, cron_db, name)
    recorded = db.rows("SELECT * FROM taskdb_cron_jobs WHERE job = 'taskdb_cancel_stale_queued'")[0]
    assert (recorded["jobname"], recorded["jobid"]) == (job["jobname"], job["jobid"])
    assert recorded["cron_database"] == cron_db and recorded["run_database"] == name
    assert job["schedule"] == "15 3 * * *" and job["active"]
    assert job["command"] == f"CALL \"public\".taskdb_cancel_stale_queued_all('pg_cron job {job['jobname']}')"
    assert db.scalar("SELECT to_regclass('cron.job')") is None  # nothing of pg_cron in the target database
    assert health(db) == (True, None)  # installed (recorded); active unknown from here
    purge = [j for j in jobs_in(taskdb_pg_server, cron_db, cron_db) if j["jobname"] == "taskdb_purge_cron_history"]
    assert len(purge) == 1

    db.downgrade("0005_hygiene", driver=driver)
    assert jobs_in(taskdb_pg_server, cron_db, name) == []
    assert db.scalar("SELECT to_regclass('taskdb_cron_jobs')") is None
    assert health(db) == (False, None)  # 0005's function again: no cron.job here


def test_two_databases_share_the_cron_database_without_taking_each_others_job(target_server: PostgresServer) -> None:
    """Job names are unique per user, not per database, and pg_cron 1.4's upsert keeps the old database:
    the second database gets a qualified name instead of hijacking the first one's job."""
    first, second = make_db(target_server), make_db(target_server)
    names = []
    for db in (first, second):
        db.load("half_migrated")
        db.upgrade()
        names.append(db.scalar("SELECT current_database()"))
    jobs = {j["jobname"]: j["database"] for j in jobs_in(target_server, "postgres")}
    assert jobs == {
        "taskdb_cancel_stale_queued": names[0],
        f"taskdb_cancel_stale_queued:{names[1]}": names[1],
        "taskdb_purge_cron_history": "postgres",
    }
    first.downgrade("0005_hygiene")  # the purge job still serves the second database
    assert set(j["jobname"] for j in jobs_in(target_server, "postgres")) == {
        f"taskdb_cancel_stale_queued:{names[1]}",
        "taskdb_purge_cron_history",
    }
    second.downgrade("0005_hygiene")  # the last one: the purge job goes too
    assert jobs_in(target_server, "postgres") == []
    # the first database created pg_cron and kept it while the second used it; the second did not create it
    assert target_server.fetch_value("SELECT count(*) FROM pg_extension WHERE extname = 'pg_cron'") == 1
    for db in (first, second):
        db.engine.dispose()


def test_a_second_upgrade_changes_nothing_and_a_new_schedule_updates_the_job(
    taskdb_pg_server: PostgresServer, db: Db
) -> None:
    cron_db, name = taskdb_pg_server.cron_database, db.scalar("SELECT current_database()")
    db.load("half_migrated")
    db.upgrade()
    [before] = jobs_in(taskdb_pg_server, cron_db, name)
    recorded = db.rows("SELECT job, xmin::text AS xmin FROM taskdb_cron_jobs ORDER BY job")
    stamp(db, "0005_hygiene")  # as after a crash between scheduling and recording the version
    db.upgrade()
    assert jobs_in(taskdb_pg_server, cron_db, name) == [before]  # same jobid, same row version: not rewritten
    assert db.rows("SELECT job, xmin::text AS xmin FROM taskdb_cron_jobs ORDER BY job") == recorded

    db.execute("UPDATE task_hygiene_settings SET cleanup_schedule = '30 4 * * *'")
    stamp(db, "0005_hygiene")
    db.upgrade()
    [after] = jobs_in(taskdb_pg_server, cron_db, name)
    assert (after["jobid"], after["schedule"]) == (before["jobid"], "30 4 * * *")
    assert db.scalar("SELECT schedule FROM taskdb_cron_jobs WHERE job = 'taskdb_cancel_stale_queued'") == "30 4 * * *"


def test_a_seconds_schedule_is_checked_against_the_servers_pg_cron(target_server: PostgresServer) -> None:
    """1.6 takes '2 seconds'; 1.4 cannot, and the upgrade stops before it changes anything (jobname is of
    type name there, text on 1.6: both are compared as text)."""
    db = make_db(target_server)
    db.load("half_migrated")
    db.upgrade("0005_hygiene")
    db.execute("UPDATE task_hygiene_settings SET cleanup_schedule = '2 seconds'")
    before = catalog(db)
    version = cron.parse_version(
        target_server.fetch_value("SELECT default_version FROM pg_available_extensions WHERE name = 'pg_cron'")
    )
    name = db.scalar("SELECT current_database()")
    if version is not None and version >= cron.SECONDS_SINCE:
        db.upgrade()
        [job] = jobs_in(target_server, "postgres", name)
        assert job["schedule"] == "2 seconds"
    else:
        with pytest.raises(ConfigError, match=r"'2 seconds' needs pg_cron >= 1.5"):
            api.upgrade(with_driver(db.url, "psycopg"), raise_taskdb_errors=True)
        assert catalog(db) == before and jobs_in(target_server, "postgres") == []
    db.engine.dispose()


def test_skip_never_installs_the_job(
    taskdb_pg_server: PostgresServer, db: Db, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TASKDB_CRON", "skip")
    db.load("half_migrated")
    with caplog.at_level(logging.WARNING, logger="taskdb.cron"):
        db.upgrade()
    assert jobs_in(taskdb_pg_server, taskdb_pg_server.cron_database, db.scalar("SELECT current_database()")) == []
    assert db.scalar("SELECT count(*) FROM taskdb_cron_jobs") == 0
    assert health(db) == (False, False)
    assert cron_warnings(caplog) == []


# -- pg_cron absent ------------------------------------------------------------------------------------------

ENABLE_TEXT = (
    "shared_preload_libraries = 'pg_cron'",
    "cron.database_name",
    "restart",
    "parameter group",
    "cloudsql.enable_pg_cron",
    "azure.extensions",
    "Supabase",
    "Database -> Extensions",
)


def test_library_not_loaded_auto_upgrades_without_the_job_and_warns_once(
    no_cron_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    db = make_db(no_cron_server)
    db.load("half_migrated")
    with db.engine.connect() as conn:
        readiness = cron.detect(conn.execution_options(isolation_level="AUTOCOMMIT"))
    assert readiness.library_loaded is False and not readiness.ready and readiness.missing
    assert any("not usable" in line for line in readiness.describe())
    with caplog.at_level(logging.WARNING, logger="taskdb.cron"):
        db.upgrade()
    warnings = cron_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "library is not loaded" in warnings[0] and all(text in warnings[0] for text in ENABLE_TEXT)
    assert health(db) == (False, False)
    assert db.scalar("SELECT count(*) FROM taskdb_cron_jobs") == 0
    db.engine.dispose()


@pytest.mark.parametrize("driver", DRIVERS)
def test_require_fails_before_changing_anything_when_the_library_is_not_loaded(
    no_cron_server: PostgresServer, monkeypatch: pytest.MonkeyPatch, driver: str
) -> None:
    db = make_db(no_cron_server)
    db.load("half_migrated")
    db.upgrade("0005_hygiene")
    before = catalog(db)
    monkeypatch.setenv("TASKDB_CRON", "require")
    with pytest.raises(cron.CronUnavailable) as failure:
        api.upgrade(with_driver(db.url, driver), raise_taskdb_errors=True)
    message = str(failure.value)
    assert message.startswith("TASKDB_CRON=require: pg_cron is not available")
    assert all(text in message for text in ENABLE_TEXT) and "Nothing was changed" in message
    assert catalog(db) == before and db.scalar("SELECT version_num FROM taskdb_alembic_version") == "0005_hygiene"
    db.engine.dispose()


@pytest.fixture
def app_role(fresh_server: PostgresServer) -> Iterator[tuple[Db, str]]:
    """A database owned by a role that is not a superuser (it may read settings): it cannot CREATE EXTENSION
    pg_cron, which is not a trusted extension. Returns the database (as superuser) and the role's URL."""
    password = f"app-{uuid.uuid4().hex}"
    with fresh_server.connect() as conn:
        conn.execute(f"CREATE ROLE taskdb_app LOGIN PASSWORD '{password}' IN ROLE pg_read_all_settings")
    db = make_db(fresh_server)
    name = db.scalar("SELECT current_database()")
    db.execute(f"ALTER DATABASE {name} OWNER TO taskdb_app")
    db.execute("ALTER SCHEMA public OWNER TO taskdb_app")
    url = fresh_server.url_object(name).set(username="taskdb_app", password=password)
    load_incident(url.render_as_string(hide_password=False))  # the tables belong to the application's role
    yield db, url.render_as_string(hide_password=False)
    db.engine.dispose()


@pytest.mark.parametrize("mode", ["auto", "require"])
def test_an_extension_that_cannot_be_created(
    fresh_server: PostgresServer,
    app_role: tuple[Db, str],
    mode: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    db, app_url = app_role
    api.upgrade(app_url, "0005_hygiene")
    before = catalog(db)
    monkeypatch.setenv("TASKDB_CRON", mode)
    with caplog.at_level(logging.WARNING, logger="taskdb.cron"):
        if mode == "require":
            with pytest.raises(cron.CronUnavailable, match=r"CREATE EXTENSION pg_cron in database 'postgres' failed"):
                api.upgrade(app_url, raise_taskdb_errors=True)
            assert catalog(db) == before
        else:
            api.upgrade(app_url)
            assert health(db) == (False, False)
            warnings = cron_warnings(caplog)
            assert len(warnings) == 1 and "permission denied" in warnings[0]
            assert "a superuser (on managed services the admin role" in warnings[0]
    assert fresh_server.fetch_value("SELECT count(*) FROM pg_extension WHERE extname = 'pg_cron'") == 0


def test_a_cron_database_the_role_may_not_connect_to(
    fresh_server: PostgresServer, app_role: tuple[Db, str], caplog: pytest.LogCaptureFixture
) -> None:
    db, app_url = app_role
    with fresh_server.connect() as conn:
        conn.execute("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC")
    with caplog.at_level(logging.WARNING, logger="taskdb.cron"):
        api.upgrade(with_driver(app_url, "pg8000"))
    [warning] = cron_warnings(caplog)
    assert "taskdb connects to the cron database 'postgres' with the same URL" in warning
    assert "GRANT CONNECT ON DATABASE postgres TO taskdb_app" in warning
    password = sa.engine.make_url(app_url).password
    assert password and password not in caplog.text
    assert health(db) == (False, False)


def test_a_role_that_may_not_read_settings_is_told_which_grant_it_needs(
    fresh_server: PostgresServer, app_role: tuple[Db, str]
) -> None:
    _, app_url = app_role
    with fresh_server.connect() as conn:
        conn.execute("REVOKE pg_read_all_settings FROM taskdb_app")
    engine = sa.create_engine(with_driver(app_url, "pg8000"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            readiness = cron.detect(conn)
    finally:
        engine.dispose()
    assert readiness.library_loaded is None and not readiness.missing
    assert "GRANT pg_read_all_settings TO taskdb_app" in str(readiness.problem)


# -- the purge job -------------------------------------------------------------------------------------------


def test_the_purge_deletes_only_old_history_of_taskdbs_jobs(target_server: PostgresServer) -> None:
    db = make_db(target_server)
    db.load("half_migrated")
    db.upgrade()
    with target_server.connect("postgres") as conn:
        other = conn.execute("SELECT cron.schedule('someone_elses_job', '0 1 * * *', 'SELECT 1')").fetchone()[0]
        ours = conn.execute("SELECT jobid FROM cron.job WHERE jobname = 'taskdb_cancel_stale_queued'").fetchone()[0]
        purge_id, purge = conn.execute(
            "SELECT jobid, command FROM cron.job WHERE jobname = 'taskdb_purge_cron_history'"
        ).fetchone()

        def run(jobid: int, status: str, started: str | None, ended: str | None) -> int:
            return conn.execute(
                "INSERT INTO cron.job_run_details (jobid, status, start_time, end_time) "
                "VALUES (%s, %s, now() - %s::interval, now() - %s::interval) RETURNING runid",
                (jobid, status, started, ended),
            ).fetchone()[0]

        never_started_long_ago = run(ours, "failed", None, None)  # e.g. connection failed: no start_time
        gone = {
            run(ours, "succeeded", "20 days", "20 days"),
            run(ours, "failed", "15 days", None),  # failed without end_time: start_time decides
            run(purge_id, "succeeded", "30 days", "30 days"),
            never_started_long_ago,
        }
        kept = {
            run(ours, "succeeded", "13 days", "13 days"),
            run(other, "succeeded", "40 days", "40 days"),  # not taskdb's
            run(ours, "failed", None, None),  # never started, recent (no older started run after it)
        }
        conn.execute(purge)
        left = {r[0] for r in conn.execute("SELECT runid FROM cron.job_run_details").fetchall()}
    assert kept <= left and not (gone & left)
    db.engine.dispose()


# -- the job really fires ---------------------------------------------------------------------------------------


def firing_params() -> list[Any]:
    params = []
    for target in available_targets():
        marks = [pytest.mark.container] if target.backend == "container" else []
        if target.major is not None and target.major < 17:  # bookworm's pg_cron 1.4: minute schedules only
            marks.append(pytest.mark.slow)
        params.append(pytest.param(target, id=target.id, marks=marks))
    return params


@pytest.mark.parametrize("target", firing_params())
def test_the_job_really_fires_and_cancels_stale_tasks(target: Target) -> None:
    """Same database (cron.schedule) and other database (cron.schedule_in_database) on one server:
    pg_cron 1.6 runs the jobs every 2 seconds, 1.4 at the next minute."""
    with target.start(settings={"cron.database_name": "taskdb_fire_same"}) as server:
        same, other = make_db(server, "taskdb_fire_same"), make_db(server, "taskdb_fire_other")
        version = cron.parse_version(
            server.fetch_value("SELECT default_version FROM pg_available_extensions WHERE name = 'pg_cron'")
        )
        assert version is not None
        schedule = "2 seconds" if version >= cron.SECONDS_SINCE else "* * * * *"
        stale: dict[str, list[str]] = {}
        for db, driver in ((same, "psycopg"), (other, "pg8000")):
            db.load("half_migrated")
            db.upgrade("0005_hygiene", driver=driver)
            db.execute("UPDATE task_hygiene_settings SET cleanup_schedule = :s", s=schedule)
            ids = [str(uuid.uuid4()) for _ in range(3)]
            for task in ids:
                db.execute(STALE_TASK, id=task, user=user_id("bob"))
            stale[db.url] = ids
        for db, driver in ((same, "psycopg"), (other, "pg8000")):
            db.upgrade(driver=driver)
        installed = time.monotonic()
        budget = 75.0 if schedule == "* * * * *" else 20.0
        jobs = {j["database"]: j for j in jobs_in(server, "taskdb_fire_same") if j["command"].startswith("CALL")}
        assert set(jobs) == {"taskdb_fire_same", "taskdb_fire_other"}
        assert jobs["taskdb_fire_other"]["jobname"] == "taskdb_cancel_stale_queued:taskdb_fire_other"

        def done(db: Db) -> bool:
            return (
                db.scalar(
                    "SELECT count(*) FROM tasks WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'Cancelled'",
                    ids=stale[db.url],
                )
                == 3
            )

        while not (done(same) and done(other)):
            if time.monotonic() - installed > budget:
                with server.connect("taskdb_fire_same") as conn:
                    runs = conn.execute("SELECT jobid, status, return_message FROM cron.job_run_details").fetchall()
                pytest.fail(f"pg_cron {version} did not run the cleanup within {budget:.0f}s; runs: {runs}")
            time.sleep(0.5)
        observed = time.monotonic() - installed
        with server.connect("taskdb_fire_same") as conn:
            runs = conn.execute(
                "SELECT j.database, d.status, d.return_message, d.start_time, d.end_time - d.start_time "
                "FROM cron.job_run_details d JOIN cron.job j USING (jobid) "
                "WHERE j.command LIKE 'CALL%%' ORDER BY d.runid"
            ).fetchall()
        assert {r[0] for r in runs if r[1] == "succeeded"} == {"taskdb_fire_same", "taskdb_fire_other"}, runs
        for db in (same, other):
            name = jobs[db.scalar("SELECT current_database()")]["jobname"]
            log = db.rows(
                "SELECT DISTINCT actor, previous->>'status' AS was FROM task_hygiene_log "
                "WHERE task_id = ANY(CAST(:ids AS uuid[])) AND action = 'cancel'",
                ids=stale[db.url],
            )
            assert log == [{"actor": f"pg_cron job {name}", "was": "Queued"}]
            db.engine.dispose()
        print(
            f"\n{target.id}: pg_cron {version[0]}.{version[1]} schedule {schedule!r}: both databases' stale tasks "
            f"Cancelled {observed:.1f}s after install; {len(runs)} runs, first {runs[0][3]} took {runs[0][4]}"
        )
