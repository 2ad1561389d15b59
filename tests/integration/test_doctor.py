"""`taskdb doctor` (taskdb.doctor) on real databases: each finding raised by a real bad state, and silence on a
healthy upgraded incident database. The CLI (exit codes, --json, both drivers) is in tests/acceptance."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from taskdb import doctor
from taskdb.cli.common import connection
from taskdb.testing import start_postgres
from taskdb.testing.base import PostgresServer
from tests.helpers import DRIVERS, HEAD, REVISIONS, Db, user_id, with_driver

ALL_CHECKS = ["schema", "revision", "constraints", "indexes", "flagged_queued", "stale_queued", "cleanup_job"]
QUEUED_TASK = (
    "INSERT INTO tasks (id, task_type, status, created_at, user_id, run_type, legacy_reason) "
    "VALUES (CAST(:id AS uuid), :task_type, 'Queued', now() - CAST(:age AS interval), CAST(:user AS uuid), "
    ":run_type, :reason)"
)


def diagnose(db: Db, driver: str = "psycopg") -> doctor.Report:
    with connection(with_driver(db.url, driver)) as conn:
        return doctor.diagnose(conn)


def findings(report: doctor.Report, check: str) -> list[doctor.Finding]:
    return [f for f in report.findings if f.check == check]


def add_task(
    db: Db,
    *,
    age: str = "1 minute",
    task_type: str = "t",
    user: str | None = "alice",
    run_type: str | None = "cloud",
    reason: str | None = None,
) -> str:
    task = str(uuid.uuid4())
    db.execute(
        QUEUED_TASK,
        id=task,
        task_type=task_type,
        age=age,
        user=user and user_id(user),
        run_type=run_type,
        reason=reason,
    )
    return task


@pytest.fixture
def healthy(db: Db) -> Db:
    db.load("half_migrated")
    db.upgrade()
    return db


def cleanup_job(db: Db) -> dict[str, Any]:
    return db.rows(
        "SELECT jobid, jobname, cron_database FROM taskdb_cron_jobs WHERE job = 'taskdb_cancel_stale_queued'"
    )[0]


def in_cron_database(server: PostgresServer, db: Db, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run ``sql`` as the superuser in the database that holds the cleanup job (cron.database_name)."""
    with server.connect(cleanup_job(db)["cron_database"]) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


# -- healthy -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_healthy_upgraded_incident_database_has_no_findings(healthy: Db, driver: str) -> None:
    report = diagnose(healthy, driver)
    assert report.findings == [] and report.status == "ok" and report.exit_code == 0
    assert report.checked == ALL_CHECKS
    assert report.revision == report.head == HEAD
    health = report.queue_health
    assert health["queued_total"] == healthy.scalar("SELECT count(*) FROM tasks WHERE status = 'Queued'") > 0
    assert health["claimable_cloud"] == healthy.scalar("SELECT claimable_task_count('cloud')")
    assert health["cron_job_installed"] is True and health["stale_count"] == 0
    as_dict = report.as_dict()
    assert as_dict["status"] == "ok" and as_dict["checked"] == ALL_CHECKS and as_dict["findings"] == []


# -- stale Queued tasks ------------------------------------------------------------------------------------


def test_a_queued_task_older_than_stale_after_is_a_warning(healthy: Db) -> None:
    add_task(healthy, age="2 days 3 hours", user="bob")
    report = diagnose(healthy)
    [stale] = report.findings
    assert (stale.check, stale.severity) == ("stale_queued", "warning")
    assert "1 Queued task(s) older than stale_after (24:00:00)" in stale.message
    assert "the oldest has waited 2d 3h" in stale.message and "stale_queued_tasks" in stale.fix
    assert report.exit_code == 1 and report.status == "warning"
    healthy.execute("UPDATE task_hygiene_settings SET stale_after = interval '3 days'")  # the DBA's threshold wins
    assert diagnose(healthy).findings == []


def test_a_queued_task_created_at_minus_infinity_is_stale_too(healthy: Db) -> None:
    # its age is NULL in queue_health (PostgreSQL 15 cannot subtract it), but stale_queued_tasks counts it
    task = add_task(healthy, user="bob")
    healthy.execute("UPDATE tasks SET created_at = '-infinity' WHERE id = :id", id=task)
    [stale] = diagnose(healthy).findings
    assert stale.check == "stale_queued"
    assert "1 Queued task(s) older than stale_after" in stale.message and "since created_at -infinity" in stale.message


# -- the catalog of tasks ----------------------------------------------------------------------------------


def test_a_not_valid_constraint_is_a_warning_and_its_fix_works(healthy: Db) -> None:
    healthy.execute(
        "ALTER TABLE tasks ADD CONSTRAINT tasks_task_type_not_blank CHECK (btrim(task_type) <> '') NOT VALID"
    )
    [finding] = diagnose(healthy).findings
    assert finding.check == "constraints" and "tasks_task_type_not_blank on tasks is NOT VALID" in finding.message
    healthy.execute(finding.fix.split(";")[0])  # the fix as printed: ALTER TABLE tasks VALIDATE CONSTRAINT ...
    assert healthy.scalar("SELECT convalidated FROM pg_constraint WHERE conname = 'tasks_task_type_not_blank'")
    assert diagnose(healthy).findings == []


def test_an_invalid_index_left_by_a_failed_concurrent_build_is_a_warning(healthy: Db) -> None:
    add_task(healthy, task_type="duplicate")
    add_task(healthy, task_type="duplicate")
    with healthy.engine.connect() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            "CREATE UNIQUE INDEX CONCURRENTLY tasks_task_type_unique ON tasks (task_type)"
        )
    assert (
        healthy.scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = 'tasks_task_type_unique'::regclass") is False
    )
    [finding] = diagnose(healthy).findings
    assert finding.check == "indexes" and "index tasks_task_type_unique on tasks is INVALID" in finding.message
    assert (
        "CREATE UNIQUE INDEX CONCURRENTLY tasks_task_type_unique ON public.tasks USING btree (task_type)" in finding.fix
    )
    with healthy.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            "DROP INDEX CONCURRENTLY tasks_task_type_unique"
        )
    assert diagnose(healthy).findings == []


def test_a_flagged_queued_row_is_a_warning_as_is_the_missing_constraint(healthy: Db) -> None:
    healthy.execute("ALTER TABLE tasks DROP CONSTRAINT tasks_flagged_not_queued")
    task = add_task(healthy, user=None, run_type=None, reason="missing_user_id,missing_run_type")
    report = diagnose(healthy)
    assert {f.check for f in report.findings} == {"flagged_queued", "constraints"}
    [flagged] = findings(report, "flagged_queued")
    assert flagged.message.startswith("1 flagged task(s)") and task in flagged.message
    [missing] = findings(report, "constraints")
    assert "constraint tasks_flagged_not_queued on tasks is missing" in missing.message
    healthy.execute(flagged.fix.split(";")[0])  # the printed UPDATE cancels it
    assert healthy.scalar("SELECT status FROM tasks WHERE id = :id", id=task) == "Cancelled"
    assert [f.check for f in diagnose(healthy).findings] == ["constraints"]


# -- the revision --------------------------------------------------------------------------------------------


def test_a_database_behind_head_is_a_warning(healthy: Db) -> None:
    healthy.downgrade("0005_hygiene")
    report = diagnose(healthy)
    assert report.exit_code == 1 and report.checked == ALL_CHECKS
    [behind] = findings(report, "revision")
    assert behind.message == f"database revision 0005_hygiene is {len(REVISIONS) - 5} behind head {HEAD}"
    assert "taskdb upgrade" in behind.fix
    [job] = findings(report, "cleanup_job")  # 0006 is what schedules the job
    assert "has not had 0006_cron" in job.message
    assert {f.check for f in report.findings} == {"revision", "cleanup_job"}


def test_before_the_hygiene_revision_it_cannot_check_but_says_how_far_behind(healthy: Db) -> None:
    healthy.downgrade("0004_constraints")
    report = diagnose(healthy)
    assert report.status == "error" and report.exit_code == 2
    assert report.checked == ["schema", "revision"]
    [schema] = findings(report, "schema")
    assert schema.severity == "error" and "not upgraded to 0005_hygiene" in schema.message
    assert (
        findings(report, "revision")[0].message
        == f"database revision 0004_constraints is {len(REVISIONS) - 4} behind head {HEAD}"
    )


def test_a_database_without_taskdb_cannot_be_checked(db: Db) -> None:
    report = diagnose(db)
    assert report.exit_code == 2 and report.checked == ["schema"]
    assert "has no taskdb objects" in report.findings[0].message
    db.load("half_migrated")  # the incident's tables, never upgraded
    [never] = diagnose(db).findings
    assert never.severity == "error" and "taskdb has never upgraded this database" in never.message


def test_a_monitoring_role_needs_taskdb_monitor_and_reads_the_jobs_runs_from_the_log(healthy: Db) -> None:
    role, password = f"doctor_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    healthy.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    healthy.execute(f"GRANT SELECT ON tasks, taskdb_alembic_version TO {role}")
    monitor = Db(
        sa.make_url(healthy.url).set(username=role, password=password).render_as_string(hide_password=False),
        healthy.engine,
    )
    try:
        denied = diagnose(monitor)
        healthy.execute(f"GRANT taskdb_monitor TO {role}")
        allowed = diagnose(monitor)
    finally:
        healthy.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
    [stale] = findings(denied, "stale_queued")
    assert stale.severity == "error" and "permission denied for view queue_health" in stale.message
    assert denied.exit_code == 2 and password not in str(denied.as_dict())
    # taskdb_monitor reads queue_health and taskdb_cron_jobs; cron.job (no USAGE on schema cron) it cannot:
    # the job's runs then come from task_hygiene_runs, and the report says so
    assert allowed.findings == [] and allowed.exit_code == 0
    assert any("not readable" in note and "task_hygiene_runs" in note for note in allowed.notes), allowed.notes


def test_a_check_blocked_by_a_lock_gives_up_and_says_it_cannot_check(healthy: Db) -> None:
    started = time.monotonic()
    with healthy.engine.connect() as blocker:
        blocker.execute(sa.text("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE"))  # as an upgrade's DDL would
        with connection(with_driver(healthy.url, "psycopg")) as conn:
            conn.exec_driver_sql("SET lock_timeout = '7s'")
            report = doctor.diagnose(conn, lock_timeout_ms=200)
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "7s"  # the session's own value is back
        blocker.rollback()
    assert time.monotonic() - started < 30
    assert report.exit_code == 2 and report.checked == ALL_CHECKS
    blocked = [f for f in report.findings if "lock timeout" in f.message]
    assert {f.check for f in blocked} >= {"flagged_queued", "stale_queued"}
    assert all(f.severity == "error" for f in blocked)


# -- the pg_cron cleanup job ----------------------------------------------------------------------------------


def test_an_inactive_cleanup_job_is_a_warning_and_its_fix_works(healthy: Db, taskdb_pg_server: PostgresServer) -> None:
    job = cleanup_job(healthy)
    in_cron_database(taskdb_pg_server, healthy, "SELECT cron.alter_job(%s, active := false)", job["jobid"])
    [finding] = diagnose(healthy).findings
    assert finding.check == "cleanup_job" and f"{job['jobname']} (jobid {job['jobid']}) is inactive" in finding.message
    statement = finding.fix.split(": ", 1)[1].split(";")[0]  # "in database X: SELECT cron.alter_job(..); ..."
    assert statement == f"SELECT cron.alter_job({job['jobid']}, active => true)"
    in_cron_database(taskdb_pg_server, healthy, statement)
    assert diagnose(healthy).findings == []


def test_an_unscheduled_cleanup_job_is_missing(healthy: Db, taskdb_pg_server: PostgresServer) -> None:
    job = cleanup_job(healthy)
    in_cron_database(taskdb_pg_server, healthy, "SELECT cron.unschedule(%s::bigint)", job["jobid"])
    [finding] = diagnose(healthy).findings
    assert finding.check == "cleanup_job"
    assert f"{job['jobname']} is missing from cron.job in database {job['cron_database']}" in finding.message
    assert "taskdb cron install" in finding.fix and "taskdb cleanup" in finding.fix


def test_a_daily_job_without_a_successful_run_for_two_days_is_late(
    healthy: Db,
    taskdb_pg_server: PostgresServer,
) -> None:
    job = cleanup_job(healthy)
    healthy.execute("UPDATE taskdb_cron_jobs SET installed_at = now() - interval '36 hours'")
    assert diagnose(healthy).findings == []  # a daily job gets two days
    healthy.execute("UPDATE taskdb_cron_jobs SET installed_at = now() - interval '3 days'")
    [late] = diagnose(healthy).findings
    assert late.check == "cleanup_job"
    assert "(schedule '15 3 * * *', every 1d) is late: no successful run within 2d" in late.message
    assert "none since it was installed 3d ago" in late.message and f"jobid = {job['jobid']}" in late.fix

    def run(status: str, ended: str, message: str) -> None:
        in_cron_database(
            taskdb_pg_server,
            healthy,
            "INSERT INTO cron.job_run_details (jobid, status, return_message, start_time, end_time) "
            "VALUES (%s, %s, %s, now() - %s::interval, now() - %s::interval)",
            job["jobid"],
            status,
            message,
            ended,
            ended,
        )

    run("succeeded", "60 hours", "CALL")
    run("failed", "1 hour", "ERROR:  canceling statement due to statement timeout")
    [late] = diagnose(healthy).findings
    assert "(the last 2d 12h ago); its last run failed: ERROR: canceling statement" in late.message
    run("succeeded", "1 hour", "CALL")
    assert diagnose(healthy).findings == []


def test_without_pg_cron_the_job_finding_offers_taskdb_cleanup(no_cron_db: Db) -> None:
    no_cron_db.load("half_migrated")
    no_cron_db.upgrade()  # TASKDB_CRON=auto: upgrades without the job, with a warning
    report = diagnose(no_cron_db)
    [finding] = report.findings
    assert finding.check == "cleanup_job" and finding.message.startswith("pg_cron is not available (")
    assert "shared_preload_libraries" in finding.message
    assert "`taskdb cleanup` on a schedule of your own" in finding.fix and report.exit_code == 1


def test_pg_cron_ready_but_job_skipped_is_missing(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    db.load("half_migrated")
    monkeypatch.setenv("TASKDB_CRON", "skip")
    db.upgrade()
    [finding] = diagnose(db).findings
    assert finding.check == "cleanup_job" and "the cleanup job is not installed" in finding.message
    assert finding.fix.startswith("`taskdb cron install`")


@pytest.mark.slow
def test_a_minutely_job_that_really_runs_is_not_late(healthy: Db, taskdb_pg_server: PostgresServer) -> None:
    """pg_cron 1.4 runs '* * * * *' at the next minute: late while it has not, quiet once it has."""
    job = cleanup_job(healthy)
    now_second = healthy.scalar("SELECT extract(second FROM clock_timestamp())")
    if now_second > 45:  # keep the first look inside the minute, before pg_cron's first run
        time.sleep(61 - float(now_second))
    in_cron_database(taskdb_pg_server, healthy, "SELECT cron.alter_job(%s, schedule := '* * * * *')", job["jobid"])
    healthy.execute("UPDATE taskdb_cron_jobs SET installed_at = now() - interval '10 minutes'")
    [late] = diagnose(healthy).findings
    assert "every 1m) is late: no successful run within 2m" in late.message
    deadline = time.monotonic() + 150
    while (report := diagnose(healthy)).findings:
        assert time.monotonic() < deadline, report.findings
        time.sleep(2)
    assert (
        in_cron_database(
            taskdb_pg_server,
            healthy,
            "SELECT count(*) FROM cron.job_run_details WHERE jobid = %s AND status = 'succeeded'",
            job["jobid"],
        )[0][0]
        >= 1
    )


# -- schedules ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59.6, "1m"),
        (61, "1m 1s"),
        (3600, "1h"),
        (93784, "1d 2h 3m"),
        (2 * 86400 + 5, "2d"),
    ],
)
def test_duration_reads_like_a_person_would_say_it(seconds: float, text: str) -> None:
    assert doctor.duration(seconds) == text


# -- a server without pg_cron -------------------------------------------------------------------------------


@pytest.fixture
def no_cron_db(monkeypatch: pytest.MonkeyPatch) -> Iterator[Db]:
    """A database on a real server WITHOUT pg_cron preloaded (taskdb.testing always preloads it, so its
    settings merge is bypassed for this start)."""
    from taskdb.testing import container, local

    def merge(base: dict[str, str], extra: dict[str, str] | None) -> dict[str, str]:
        return {**base, **(extra or {})}

    monkeypatch.setattr(local, "merge_settings", merge)
    monkeypatch.setattr(container, "merge_settings", merge)
    with start_postgres(settings={"shared_preload_libraries": ""}) as server:
        monkeypatch.undo()
        assert not server.cron_preloaded
        url = server.url(server.create_database())
        engine = sa.create_engine(with_driver(url, "psycopg"), poolclass=sa.NullPool)
        try:
            yield Db(url, engine)
        finally:
            engine.dispose()
