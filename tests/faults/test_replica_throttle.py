"""The throttle on the replicas (taskdb.throttle, issue 14 item 1), against a real streaming standby
(taskdb.testing.standby: a replication slot, ``pg_basebackup -R``).

With replay paused on the standby mid-backfill, its replay lag (``pg_stat_replication.replay_lag``, which the
primary keeps growing for a stuck replay position) passes ``TASKDB_MAX_REPLICA_LAG_MS``: the backfill stops
changing rows within a few seconds, says what it waits for and since when, and finishes once replay resumes. A
wait longer than ``TASKDB_MAX_THROTTLE_WAIT_S`` ends the run with exit 3 and the reason; the rerun resumes.

The data is the crash tests' (tests/faults/test_crash_resume.py), in small paced batches so that the backfill is
still running when the lag passes the limit. Local backend only; skipped without a local PostgreSQL.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskdb.testing.base import PostgresUnavailable
from taskdb.testing.local import LocalServer, installed_majors
from taskdb.testing.standby import Standby, start_standby
from tests.faults.test_crash_resume import DATABASE, J3, ROOT, load, upgrade_env
from tests.helpers import DRIVERS, HEAD, with_driver

pytestmark = pytest.mark.slow

LIMIT_MS = 1000
# Small paced batches: the backfill's first sweep takes some 4 s, so the standby falls behind mid-backfill.
PACED = {"TASKDB_BACKFILL_BATCH_SIZE": "25", "TASKDB_BACKFILL_DELAY_MS": "100"}
# The standby reports its replay position every second (default 10 s): the primary sees it catch up promptly.
STANDBY = {"wal_receiver_status_interval": "1s"}


@pytest.fixture
def pair() -> Iterator[tuple[LocalServer, Standby]]:
    if not installed_majors():
        pytest.skip("needs a local PostgreSQL installation (scripts/setup; CI has it)")
    try:
        primary = LocalServer()
    except PostgresUnavailable as exc:
        pytest.skip(f"needs a local PostgreSQL: {exc}")
    with primary:
        primary.create_database(DATABASE)
        load(primary, DATABASE)
        with start_standby(primary, settings=STANDBY) as standby:
            standby.wait_caught_up()
            yield primary, standby


def start_upgrade(primary: LocalServer, driver: str, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    env = upgrade_env(primary, None, **{"TASKDB_MAX_REPLICA_LAG_MS": str(LIMIT_MS), **PACED, **extra})
    env["TASKDB_DATABASE_URL"] = with_driver(primary.url(DATABASE), driver)
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "taskdb.cli", "upgrade"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out
        )


def rows_done(primary: LocalServer) -> int:
    """The backfill's progress: rows it changed so far (0 before its checkpoint table exists)."""
    if not primary.fetch_value("SELECT to_regclass('taskdb_backfill_progress') IS NOT NULL", DATABASE):
        return 0
    found = primary.fetch_value(f"SELECT sum(rows_done) FROM taskdb_backfill_progress WHERE job = '{J3}'", DATABASE)
    return int(found or 0)


def wait_for(
    condition: Callable[[], bool], what: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None
) -> float:
    started = time.monotonic()
    while not condition():
        assert proc is None or proc.poll() is None, f"the upgrade ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.1)
    return time.monotonic()


def pause_mid_backfill(primary: LocalServer, standby: Standby, proc: subprocess.Popen[bytes]) -> float:
    """Pause the standby's replay once the backfill has begun; return when its lag passed the limit."""
    wait_for(lambda: rows_done(primary) >= 20, "the backfill's first batches", proc=proc)
    standby.pause_replay()

    def over_limit() -> bool:
        lag = standby.lag()
        return lag is not None and (lag.replay_lag_s or 0) * 1000 > LIMIT_MS

    return wait_for(over_limit, "the standby's replay lag to pass the limit", proc=proc)


def test_the_backfill_waits_while_the_standby_lags_and_finishes_when_it_catches_up(
    pair: tuple[LocalServer, Standby], tmp_path: Path
) -> None:
    primary, standby, driver = *pair, "psycopg"  # pg8000 runs the same throttle below
    log = tmp_path / "upgrade.log"
    proc = start_upgrade(primary, driver, log)
    try:
        over = pause_mid_backfill(primary, standby, proc)
        said = wait_for(lambda: "throttled before a backfill batch" in log.read_text(), "the throttle's line", 30, proc)
        assert said - over < 5, f"the backfill went on {said - over:.1f} s after the lag passed the limit"
        # It changes nothing more while it waits (each batch commits with its checkpoint).
        done = rows_done(primary)
        time.sleep(3)
        assert rows_done(primary) == done, "rows changed while throttled"
        assert proc.poll() is None, "the upgrade must wait, not end"
        text = log.read_text()
        assert "since" in text and "replays" in text and f"TASKDB_MAX_REPLICA_LAG_MS={LIMIT_MS}" in text, text[-2000:]

        standby.resume_replay()
        assert proc.wait(120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "replicas caught up after" in text, text[-2000:]
    assert finished(primary)


def finished(primary: LocalServer) -> bool:
    """The backfill finished and the upgrade reached the head."""
    ended = primary.fetch_value(
        f"SELECT finished_at IS NOT NULL FROM taskdb_backfill_progress WHERE job = '{J3}'", DATABASE
    )
    return bool(ended) and primary.fetch_value("SELECT version_num FROM taskdb_alembic_version", DATABASE) == HEAD


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_lag_that_outlasts_the_wait_stops_with_exit_3_and_the_rerun_resumes(
    pair: tuple[LocalServer, Standby], driver: str, tmp_path: Path
) -> None:
    primary, standby = pair
    log = tmp_path / "upgrade.log"
    proc = start_upgrade(primary, driver, log, TASKDB_MAX_THROTTLE_WAIT_S="2")
    try:
        pause_mid_backfill(primary, standby, proc)
        assert proc.wait(60) == 3, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith("taskdb: throttled before a backfill batch of 0003_backfill for 2 s"), last
    assert "TASKDB_MAX_REPLICA_LAG_MS" in last and "rerun" in last and "checkpoint" in last, last
    standby.resume_replay()
    rerun = tmp_path / "rerun.log"
    again = start_upgrade(primary, driver, rerun, TASKDB_BACKFILL_DELAY_MS="0")
    assert again.wait(120) == 0, rerun.read_text()[-3000:]
    assert "resuming sweep" in rerun.read_text()
    assert finished(primary)
