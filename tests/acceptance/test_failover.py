"""Failover mid-upgrade (issue 14, item 2): a real streaming standby (``pg_basebackup -R``, a replication slot),
the ``taskdb upgrade`` process SIGKILLed mid-backfill on the primary, the primary stopped at once (immediate
shutdown), the standby promoted, ``taskdb upgrade`` rerun against it: the end state equals an uninterrupted
run on the same data, pg_cron runs there with the cleanup job scheduled, and ``taskdb doctor`` exits 0.

The data, the kill and the comparison are the crash tests' (tests/faults/test_crash_resume.py): the incident's
rows plus 700 generated legacy rows, ``TASKDB_BACKFILL_BATCH_SIZE=50``, a failpoint in the middle of the second
backfill sweep, and their ``state`` / ``assert_same_state`` (schema dump and catalog, an md5 per row, the log as a
multiset, checkpoint, versions, owned objects, roles, pg_cron jobs). The reference runs on a server of its own,
so pg_cron's ``nodename`` (each server's socket directory, its ``cron.host``) is compared as the promoted
server's own.

How far behind the standby was when the primary died:
- ``caught-up``: it had applied everything; it resumes from the primary's last checkpoint;
- ``replay-paused``: replay paused since the first batches (the standby's own view of the checkpoint shows them),
  the rest received but not applied; promoted while still paused, it applies what it received first and resumes
  from the primary's last checkpoint;
- ``cut-off``: its WAL receiver cut after the first batches (as when the network fails) while the primary went on:
  the primary's later batches are lost with it, the promoted standby's checkpoint is earlier than the primary's,
  and the rerun resumes from that earlier checkpoint, redoing the lost batches to the same end state.

Both drivers run the killed upgrade, the rerun and doctor. Local backend only (the standby is a child process of
this one); skipped where no local PostgreSQL with pg_cron is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from taskdb.testing.base import PostgresUnavailable
from taskdb.testing.local import LocalServer, installed_majors
from taskdb.testing.standby import Standby, start_standby
from tests.faults.test_crash_resume import (
    BATCH_SIZE,
    DATABASE,
    J3,
    RESUME_LINE,
    ROOT,
    Sweeps,
    assert_same_state,
    checkpoint,
    ids_after,
    ids_scanned,
    killed,
    load,
    state,
    succeeded,
    sweeps_of,
    upgrade_env,
)
from tests.helpers import DRIVERS, with_driver

pytestmark = pytest.mark.slow

SETTINGS = {"cron.database_name": DATABASE}  # pg_cron in the upgraded database, on both servers
# Paced batches in the killed run: the test acts on the standby between the first batches and the kill.
DELAY_MS = "60"
SCENARIOS = ("caught-up", "replay-paused", "cut-off")


def local_server() -> LocalServer:
    if not installed_majors():
        pytest.skip("needs a local PostgreSQL installation with pg_cron (scripts/setup; CI has it)")
    try:
        return LocalServer(settings=SETTINGS)
    except PostgresUnavailable as exc:
        pytest.skip(f"needs a local PostgreSQL with pg_cron: {exc}")


@dataclass
class Reference:
    state: dict[str, Any]
    sweeps: Sweeps
    total_ids: int
    doctor: dict[str, Any]


@pytest.fixture(scope="module")
def reference() -> Iterator[Reference]:
    """The uninterrupted `taskdb upgrade` of the same data, on a server of its own."""
    with local_server() as server:
        server.create_database(DATABASE)
        load(server, DATABASE)
        log = succeeded(run(server, "psycopg"), "the uninterrupted upgrade")
        total = int(server.fetch_value("SELECT count(*) FROM tasks", DATABASE))
        yield Reference(own_cron_host(state(server), server), sweeps_of(log), total, doctor(server, "psycopg"))


@pytest.fixture
def pair() -> Iterator[tuple[LocalServer, Standby]]:
    """A primary holding the data (nothing upgraded yet) and a standby streaming from it."""
    with local_server() as primary:
        primary.create_database(DATABASE)
        load(primary, DATABASE)
        with start_standby(primary, settings=SETTINGS) as standby:
            standby.wait_caught_up()
            yield primary, standby


def env(server: LocalServer, driver: str, failpoint: str | None = None, **extra: str) -> dict[str, str]:
    values = upgrade_env(server, failpoint, **extra)
    values["TASKDB_DATABASE_URL"] = with_driver(server.url(DATABASE), driver)
    return values


def run(server: LocalServer, driver: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskdb.cli", *(args or ("upgrade",))],
        env=env(server, driver),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def doctor(server: LocalServer, driver: str) -> dict[str, Any]:
    """``taskdb doctor --json --fail-on error``, which must exit 0 (the data leaves a stale-Queued warning), as
    compared: each finding's check and severity, the queue's counts (not its ages, clock readings, nor
    dead_tuples, a statistic of how the rows were written)."""
    done = run(server, driver, "doctor", "--json", "--fail-on", "error")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    report["findings"] = [(f["check"], f["severity"]) for f in report["findings"]]
    report["queue_health"] = {k: v for k, v in report["queue_health"].items() if type(v) is int and k != "dead_tuples"}
    return dict(report)


def own_cron_host(snapshot: dict[str, Any], server: LocalServer) -> dict[str, Any]:
    """``snapshot`` with the server's socket directory (cron.host, so cron.job's nodename) made a placeholder."""
    if snapshot["cron_job"] is not None:
        snapshot["cron_job"] = [
            (*row[:-1], "<own cron.host>" if row[-1] == server.socket_dir else row[-1]) for row in snapshot["cron_job"]
        ]
    return snapshot


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def standby_checkpoint(standby: Standby) -> dict[str, Any] | None:
    """The backfill checkpoint as the standby has applied it so far (a read on the hot standby)."""
    if not standby.server.fetch_value("SELECT to_regclass('taskdb_backfill_progress') IS NOT NULL", DATABASE):
        return None
    if not standby.server.fetch_value(f"SELECT count(*) FROM taskdb_backfill_progress WHERE job = '{J3}'", DATABASE):
        return None
    return checkpoint(standby.server, J3)


def behind(earlier: dict[str, Any], later: dict[str, Any]) -> bool:
    """Whether checkpoint ``earlier`` is an earlier point of the same backfill than ``later``."""
    return (earlier["sweep"], earlier["rows_done"]) < (later["sweep"], later["rows_done"])


def kill_mid_backfill(primary: LocalServer, standby: Standby, driver: str, scenario: str, kill: str) -> dict[str, Any]:
    """Run the upgrade on the primary until the failpoint ``kill`` SIGKILLs it; in the middle, once the standby
    has applied two batches, pause its replay or cut it off. Returns the primary's checkpoint at the kill."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskdb.cli", "upgrade"],
        # not throttled on the standby's lag (taskdb.throttle): it must reach the kill however far behind it falls
        env=env(primary, driver, kill, TASKDB_BACKFILL_DELAY_MS=DELAY_MS, TASKDB_MAX_REPLICA_LAG_MS="0"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if scenario != "caught-up":

            def two_batches_applied() -> bool:
                assert proc.poll() is None, "the upgrade ended before the standby saw two batches"
                seen = standby_checkpoint(standby)
                return seen is not None and seen["sweep"] == 1 and seen["rows_done"] >= 2 * BATCH_SIZE

            wait_for(two_batches_applied, "the standby to apply two backfill batches")
            if scenario == "replay-paused":
                standby.pause_replay()
            else:
                standby.cut_off()
            assert proc.poll() is None, f"the upgrade reached {kill} before the standby fell behind: raise DELAY_MS"
        proc.wait(300)
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.communicate()[1]
    killed(proc, f"the upgrade ({kill})")
    assert "Traceback" not in stderr, stderr[-3000:]
    return checkpoint(primary, J3)


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_failover_mid_backfill_reruns_to_the_uninterrupted_state(
    reference: Reference, pair: tuple[LocalServer, Standby], scenario: str, driver: str
) -> None:
    primary, standby = pair
    sweeps = reference.sweeps
    kill = f"backfill.after_batch:{sweeps.batches(J3, 1) + sweeps.batches(J3, 2) // 2}"  # mid sweep 2

    # 1. the upgrade dies mid-backfill on the primary; the standby is as far behind as the scenario says
    at_kill = kill_mid_backfill(primary, standby, driver, scenario, kill)
    assert (at_kill["sweep"], at_kill["finished"]) == (2, False), at_kill
    expected = at_kill  # the checkpoint the promoted standby resumes from
    if scenario == "cut-off":
        standby.wait_applied()
        expected = standby_checkpoint(standby)  # all it will ever have: the primary's later batches are lost
        assert expected is not None and expected["sweep"] == 1, (expected, at_kill)
        assert standby.lag() is None  # not connected: the primary's later WAL never reaches it
    elif scenario == "replay-paused":
        seen = standby_checkpoint(standby)  # what queries on the paused standby see: a sweep behind
        assert seen is not None and seen["sweep"] == 1, (seen, at_kill)
        standby.wait_received()
        lag = standby.lag()
        assert lag is not None and lag.replay_bytes > 100_000 and standby.replay_paused(), lag
    else:
        standby.wait_caught_up()

    # 2. the primary dies too; the standby is promoted (a paused one applies what it received first)
    primary.crash()
    standby.promote()
    server = standby.server
    assert server.fetch_value("SELECT NOT pg_is_in_recovery()")
    resume_from = checkpoint(server, J3)
    assert resume_from == expected, (scenario, resume_from, at_kill)

    # 3. the rerun against the promoted standby resumes from its checkpoint
    log = succeeded(run(server, driver), "the rerun on the promoted standby")
    resumed = (J3, str(resume_from["sweep"]), resume_from["mode"], resume_from["last_id"])
    assert resumed in RESUME_LINE.findall(log), f"the rerun did not resume from {resume_from}:\n{log[-3000:]}"
    rest = ids_after(server, resume_from["last_id"])
    assert ids_scanned(log, J3, resume_from["sweep"]) == rest < reference.total_ids

    # 4. the uninterrupted run's end state; pg_cron runs on the promoted server with the job scheduled
    got = own_cron_host(state(server), server)
    assert got["cron_job"] and got["taskdb_cron_jobs"], "the pg_cron cleanup job is missing"
    assert_same_state(got, reference.state)
    wait_for(
        lambda: (
            server.fetch_value("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher'") == 1
        ),
        "pg_cron's scheduler to start on the promoted standby",
    )
    assert doctor(server, driver) == reference.doctor


def test_the_standby_reports_its_lag_and_catches_up(pair: tuple[LocalServer, Standby]) -> None:
    """What the replica-lag tests build on: paused replay shows in the primary's pg_stat_replication (bytes and
    replay_lag) while queries on the standby see the paused point; resumed replay catches up."""
    primary, standby = pair
    applied = standby.pause_replay()
    assert standby.replay_paused()
    with primary.connect(DATABASE) as conn:
        conn.execute("CREATE TABLE lag_probe AS SELECT g FROM generate_series(1, 50000) AS g")
    standby.wait_received()
    lag = standby.lag()
    assert lag is not None and lag.state == "streaming" and lag.sent_bytes == 0, lag
    assert lag.replay_bytes > 1_000_000 and lag.replay_lag_s is not None and lag.replay_lag_s > 0, lag
    assert standby.replay_lsn() == applied
    assert not standby.server.fetch_value("SELECT to_regclass('lag_probe') IS NOT NULL", DATABASE)
    standby.resume_replay()
    standby.wait_caught_up()
    assert standby.server.fetch_value("SELECT count(*) FROM lag_probe", DATABASE) == 50000
    lag = standby.lag()
    assert lag is not None and lag.replay_bytes == 0, lag


def test_the_slot_keeps_the_wal_of_a_cut_off_standby(pair: tuple[LocalServer, Standby]) -> None:
    """Cut off, the standby falls behind by several WAL segments and checkpoints; its slot keeps them, and it
    catches up when it reconnects."""
    primary, standby = pair
    received = standby.cut_off()
    assert received is not None and standby.lag() is None
    with primary.connect(DATABASE) as conn:
        for _ in range(3):
            conn.execute("INSERT INTO users (id, email, credits) SELECT gen_random_uuid(), 'x@example.com', 0")
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
        row = conn.execute(
            "SELECT wal_status, restart_lsn <= %s::pg_lsn, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) "
            "FROM pg_replication_slots WHERE slot_name = %s",
            (received, standby.slot),
        ).fetchone()
    assert row is not None and row[0] == "reserved" and row[1] and row[2] > 2 * 16 * 1024 * 1024, row
    standby.reconnect()
    standby.wait_caught_up()
    assert standby.server.fetch_value("SELECT count(*) FROM users WHERE email = 'x@example.com'", DATABASE) == 3


def test_the_standby_is_gone_with_its_slot(pair: tuple[LocalServer, Standby]) -> None:
    primary, standby = pair
    standby.stop()
    assert standby.server.stopped
    assert primary.fetch_value("SELECT count(*) FROM pg_replication_slots") == 0
    assert os.path.isdir(primary.dir)  # the primary is untouched
