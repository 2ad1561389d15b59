"""`taskdb sql` on the pg_cron starting states: the offline script, applied by psql, ends where the online upgrade
ends, pg_cron included (issue 13, "offline parity").

Each side gets a server of its own with the same settings and a database of the same name and rows (cron.job's
names and ids are per server), except where no job is scheduled (one server, two databases):

- pg_cron preloaded, ``cron.database_name`` this database, the extension not created yet: both create pg_cron,
  schedule both jobs and record them;
- pg_cron not preloaded: neither schedules; the script raises the online warning's text as a NOTICE (its error
  under TASKDB_CRON=require);
- pg_cron in another database (``cron.database_name = 'postgres'``): the script cannot reach it, says so (a
  NOTICE naming `taskdb cron install`), and after that command the state equals the online upgrade's.

Compared: the catalog, rows, log and bookkeeping of tests/acceptance/test_offline_sql.py's ``state``, plus the
cron.job rows of the server's cron database, taskdb_cron_jobs and whether pg_cron is installed where it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.util import CommandError

from taskdb.cli import main
from taskdb.cron.readiness import out_of_reach, require_failure, upgrade_warning
from taskdb.testing import start_postgres
from taskdb.testing.base import PostgresServer
from tests.acceptance.test_offline_sql import PSQL, apply, assert_same, copy_rows, generate, psql, state
from tests.helpers import DRIVERS, Db, with_driver

pytestmark = pytest.mark.skipif(not Path(PSQL).exists(), reason=f"{PSQL} is not installed")

QUEUE_DB = "taskdb_offline_cron"


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKDB_CRON", "auto")
    for name in ("TASKDB_BACKFILL_BATCH_SIZE", "TASKDB_BACKFILL_DELAY_MS", "TASKDB_LOCK_TIMEOUT_MS", "TASKDB_SCHEMA"):
        monkeypatch.delenv(name, raising=False)


@contextmanager
def queue_db(server: PostgresServer, name: str = QUEUE_DB, rows_of: Db | None = None) -> Iterator[Db]:
    """A database on ``server`` with the incident's half-migrated schema and rows."""
    with loaded(server.url(server.create_database(name)), rows_of) as db:
        yield db


@contextmanager
def loaded(url: str, rows_of: Db | None) -> Iterator[Db]:
    """The database at ``url`` with the incident's half-migrated schema and rows: those of ``rows_of`` where
    given (the seeds' timestamps are relative to now())."""
    db = Db(url, sa.create_engine(with_driver(url, "psycopg"), poolclass=sa.NullPool))
    try:
        db.load("half_migrated", incident=rows_of is None)
        if rows_of is not None:
            copy_rows(rows_of, db)
        yield db
    finally:
        db.engine.dispose()


@contextmanager
def twin_servers(settings: dict[str, str] | None = None) -> Iterator[tuple[PostgresServer, PostgresServer]]:
    with ExitStack() as stack:
        yield (
            stack.enter_context(start_postgres(settings=settings)),
            stack.enter_context(start_postgres(settings=settings)),
        )


@contextmanager
def servers_without_pg_cron(monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgresServer]:
    """A server WITHOUT pg_cron preloaded (taskdb.testing always preloads it: its merge is bypassed here, as in
    tests/integration/test_cron.py's no_cron_server)."""
    from taskdb.testing import container, local

    def merge(base: dict[str, str], extra: dict[str, str] | None) -> dict[str, str]:
        return {**base, **(extra or {})}

    with monkeypatch.context() as patch:
        patch.setattr(local, "merge_settings", merge)
        patch.setattr(container, "merge_settings", merge)
        server = start_postgres(settings={"shared_preload_libraries": ""})
    with server:
        assert not server.cron_preloaded
        yield server


def cron_state(server: PostgresServer, db: Db) -> dict[str, Any]:
    """What pg_cron holds for ``db``: cron.job in the server's cron database (as the superuser: every user's
    jobs), pg_cron there, and the record in ``db``."""
    cron_db = server.cron_database
    with server.connect(cron_db) as conn:
        installed = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'").fetchone()
        jobs = (
            conn.execute(
                "SELECT jobid, jobname::text, schedule, command, database, active FROM cron.job ORDER BY jobname"
            ).fetchall()
            if installed
            else []
        )
    recorded = (
        db.rows(
            "SELECT job, jobname, jobid, cron_database, run_database, schedule, command FROM taskdb_cron_jobs "
            "ORDER BY job"
        )
        if db.scalar("SELECT to_regclass('taskdb_cron_jobs') IS NOT NULL")
        else None
    )
    health = (
        db.rows("SELECT cron_job_installed, cron_job_active FROM queue_health")
        if db.scalar("SELECT to_regclass('queue_health') IS NOT NULL")
        else None
    )
    return {
        "pg_cron": None if installed is None else (cron_db, installed[0]),
        "jobs": [tuple(job) for job in jobs],
        "recorded": recorded,
        "health": health,
    }


def online_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "taskdb.cron" and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("driver", DRIVERS)
def test_pg_cron_preloaded_without_the_extension_here(tmp_path: Path, driver: str) -> None:
    """cron.database_name is the queue's database and pg_cron is not created yet: the script creates it (recorded
    as taskdb's), schedules both jobs and records them, as the online upgrade does; a rerun changes nothing."""
    script = generate(tmp_path)
    with (
        twin_servers({"cron.database_name": QUEUE_DB}) as (offline, online),
        queue_db(offline) as db,
        queue_db(online, rows_of=db) as reference,
    ):
        assert not db.scalar("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron')")
        output = apply(db, script)
        reference.upgrade(driver=driver)
        assert_same(state(db), state(reference))
        after = cron_state(offline, db)
        assert after == cron_state(online, reference)
        assert after["pg_cron"] is not None and len(after["jobs"]) == 2
        assert after["health"] == [{"cron_job_installed": True, "cron_job_active": True}]
        assert {"kind": "extension", "name": f"pg_cron in database {QUEUE_DB}", "revision": "0006_cron"} in (
            state(db)["owned"]
        )
        assert "created pg_cron in this database" in output
        assert "pg_cron job taskdb_cancel_stale_queued scheduled (15 3 * * *) in this database" in output
        assert "upgrading without" not in output
        apply(db, script)  # a rerun: nothing scheduled twice, the record not rewritten
        assert cron_state(offline, db) == after


def test_pg_cron_not_preloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No pg_cron: the online upgrade goes on with one warning; the script raises that very text as a NOTICE and
    ends in the same state. Under TASKDB_CRON=require both fail at 0006 with the same message."""
    script = generate(tmp_path)
    monkeypatch.setenv("TASKDB_CRON", "require")
    required = generate(tmp_path, name="require.sql")
    monkeypatch.setenv("TASKDB_CRON", "auto")
    with servers_without_pg_cron(monkeypatch) as server:
        with queue_db(server, "offline_auto") as db, queue_db(server, "online_auto", db) as reference:
            output = apply(db, script)
            with caplog.at_level(logging.WARNING, logger="taskdb.cron"):
                reference.upgrade()
            [warning] = online_warnings(caplog)
            assert warning.startswith("upgrading without the pg_cron job taskdb_cancel_stale_queued")
            assert "the pg_cron library is not loaded" in warning
            assert f"NOTICE:  {warning}\n" in output
            assert_same(state(db), state(reference))
            assert cron_state(server, db) == cron_state(server, reference)
            assert cron_state(server, db)["recorded"] == []

        with queue_db(server, "offline_require") as db, queue_db(server, "online_require", db) as reference:
            done = psql(db, required)
            assert done.returncode == 3
            monkeypatch.setenv("TASKDB_CRON", "require")
            with pytest.raises(CommandError) as failed:  # alembic's, with taskdb.cron.CronUnavailable's text
                reference.upgrade()
            assert str(failed.value).startswith("TASKDB_CRON=require: pg_cron is not available: the pg_cron library")
            assert f"ERROR:  {failed.value}\n" in done.stderr
            assert_same(state(db), state(reference))
            assert state(db)["version"] == [{"version_num": "0005_hygiene"}]


def test_pg_cron_in_another_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cron.database_name is 'postgres': the online upgrade schedules there (cron.schedule_in_database), which a
    script run in the queue's database cannot reach. The script says so, in a NOTICE naming `taskdb cron install`
    (under require it fails, changing nothing of 0006); after that command both sides are equal."""
    script = generate(tmp_path)
    monkeypatch.setenv("TASKDB_CRON", "require")
    required = generate(tmp_path, name="require.sql")
    monkeypatch.setenv("TASKDB_CRON", "auto")
    with twin_servers() as (offline, online), queue_db(offline) as db, queue_db(online, rows_of=db) as reference:
        done = psql(db, required)
        assert done.returncode == 3
        assert f"ERROR:  {require_failure(out_of_reach('postgres', required=True))}\n" in done.stderr
        assert state(db)["version"] == [{"version_num": "0005_hygiene"}]

        output = apply(db, script)
        assert f"NOTICE:  {upgrade_warning(out_of_reach('postgres'))}\n" in output
        assert cron_state(offline, db)["recorded"] == []
        assert main(["--url", db.url, "cron", "install"]) == 0
        reference.upgrade()
        # the same records; `taskdb cron install` records pg_cron after the script's later revisions, 0006 before
        mine, theirs = state(db), state(reference)
        for side in (mine, theirs):
            side["owned"] = sorted(side["owned"], key=lambda row: (row["kind"], row["name"]))
        assert_same(mine, theirs)
        assert cron_state(offline, db) == cron_state(online, reference)
        assert [job[4] for job in cron_state(offline, db)["jobs"]] == [QUEUE_DB, "postgres"]


@contextmanager
def owned_by_app_role(server: PostgresServer, rows_of: Db | None = None) -> Iterator[Db]:
    """QUEUE_DB owned by a role that is not a superuser (it may read settings), its tables the role's: it cannot
    CREATE EXTENSION pg_cron, which is not a trusted extension. The Db connects as that role."""
    password = "app-pw"
    with server.connect() as conn:
        conn.execute(f"CREATE ROLE taskdb_app LOGIN PASSWORD '{password}' IN ROLE pg_read_all_settings")
        conn.execute(f"CREATE DATABASE {QUEUE_DB} OWNER taskdb_app")
    with server.connect(QUEUE_DB) as conn:
        conn.execute("ALTER SCHEMA public OWNER TO taskdb_app")
    url = server.url_object(QUEUE_DB).set(username="taskdb_app", password=password).render_as_string(False)
    with loaded(url, rows_of) as db:
        yield db


def test_pg_cron_this_role_cannot_create(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """cron.database_name is the queue's database, pg_cron is not created and the role applying the upgrade may
    not create it: both try, neither schedules, and the script's NOTICE is the online warning's text (the
    refusal and who may create pg_cron)."""
    script = generate(tmp_path)
    with (
        twin_servers({"cron.database_name": QUEUE_DB}) as (offline, online),
        owned_by_app_role(offline) as db,
        owned_by_app_role(online, rows_of=db) as reference,
    ):
        output = apply(db, script)
        with caplog.at_level(logging.WARNING, logger="taskdb.cron"):
            reference.upgrade()
        [warning] = online_warnings(caplog)
        assert f"CREATE EXTENSION pg_cron in database '{QUEUE_DB}' failed: permission denied" in warning
        assert f"NOTICE:  {warning}\n" in output
        assert_same(state(db), state(reference))
        assert cron_state(offline, db) == cron_state(online, reference)
        assert cron_state(offline, db)["pg_cron"] is None
