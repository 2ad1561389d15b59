"""Throttle on the replicas: pause while a streaming replica replays too far behind this server.

A backfill writes as fast as the primary allows; a standby that replays more slowly falls behind, and reads
served there grow stale (seen: 15 s / 302 MB behind at 21,900 rows/s with nothing noticing). Before each backfill
batch, cleanup batch and step, :meth:`ReplicaThrottle.wait` reads ``pg_stat_replication`` (``replica_lag`` in
sql/throttle.sql) and, while a replica's replay lag exceeds ``TASKDB_MAX_REPLICA_LAG_MS`` (gh-ost's default:
1500; 0 = off), waits, holding no transaction and no lock, saying what it waits for and since when. The wait is
bounded (``TASKDB_MAX_THROTTLE_WAIT_S``): then :class:`~taskdb.errors.ReplicaLagTooHigh` (exit 3), and a rerun
resumes from the checkpoint.

The signal is the replay lag PostgreSQL itself measures on the primary (no heartbeat table: the primary
interpolates a stuck replay position's lag from the times it wrote the WAL, so a paused standby's lag keeps
growing). What it does not watch: a replica that is disconnected (it is not in ``pg_stat_replication``; its slot,
if any, holds WAL back, which the DBA's monitoring sees), logical replication subscribers, the WAL archiver's
backlog and autovacuum (docs/reliability.md says why).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.engine import Connection

from taskdb.db import rows
from taskdb.errors import ReplicaLagTooHigh
from taskdb.sql import queries

log = logging.getLogger("taskdb.throttle")

_warned_invisible: set[str] = set()  # databases whose replicas' lag this process could not read (said once)


@dataclass(frozen=True)
class ReplicaThrottle:
    """How far behind a replica may replay (``max_lag_ms``; 0: never throttle) and how long to wait for it."""

    max_lag_ms: int = 1500
    max_wait_s: float = 600.0
    poll_s: float = 0.5  # how often a waiting run looks again
    report_every_s: float = 10.0  # a line while it waits, so a long wait is visibly alive

    @classmethod
    def from_env(cls) -> ReplicaThrottle:
        """``TASKDB_MAX_REPLICA_LAG_MS`` (default 1500, 0 = off), ``TASKDB_MAX_THROTTLE_WAIT_S`` (default 600)."""
        lag = os.environ.get("TASKDB_MAX_REPLICA_LAG_MS")
        wait = os.environ.get("TASKDB_MAX_THROTTLE_WAIT_S")
        throttle = cls(
            max_lag_ms=int(lag) if lag else cls.max_lag_ms,
            max_wait_s=float(wait) if wait else cls.max_wait_s,
        )
        if throttle.max_lag_ms < 0 or throttle.max_wait_s < 0:
            raise ValueError(
                "TASKDB_MAX_REPLICA_LAG_MS and TASKDB_MAX_THROTTLE_WAIT_S must be >= 0, "
                f"not {throttle.max_lag_ms} and {throttle.max_wait_s}"
            )
        return throttle

    def lagging(self, conn: Connection) -> dict[str, object] | None:
        """The replica furthest behind, if it replays more than ``max_lag_ms`` behind; else None."""
        if not self.max_lag_ms:
            return None
        replicas = rows(conn, queries("throttle")["replica_lag"])
        hidden = [r for r in replicas if not r["visible"]]
        if hidden:
            database = str(conn.engine.url.database)
            if database not in _warned_invisible:
                _warned_invisible.add(database)
                log.warning(
                    "cannot read the replay lag of %d replica(s) (%s): this role needs pg_monitor "
                    "(GRANT pg_monitor TO ...); taskdb does not throttle on them",
                    len(hidden),
                    ", ".join(str(r["replica"]) for r in hidden),
                )
        behind = [r for r in replicas if r["visible"] and int(r["replay_lag_ms"]) > self.max_lag_ms]
        return behind[0] if behind else None

    def wait(self, conn: Connection, before: str) -> float:
        """Return once no replica replays more than ``max_lag_ms`` behind (at once, usually): the seconds waited.
        ``before`` names what waits (e.g. "backfill batch of 0003_backfill"), in the log lines and the error."""
        replica = self.lagging(conn)
        if replica is None:
            return 0.0
        max_lag = self.max_lag_ms
        started, since = time.monotonic(), datetime.now(UTC).strftime("%H:%M:%S UTC")
        log.warning("throttled before %s since %s: %s", before, since, _describe(replica, max_lag))
        reported = started
        while replica is not None:
            waited = time.monotonic() - started
            if waited >= self.max_wait_s:
                raise ReplicaLagTooHigh(before, _describe(replica, max_lag), self.max_wait_s)
            if time.monotonic() - reported >= self.report_every_s:
                reported = time.monotonic()
                log.warning("still throttled before %s (%.0f s): %s", before, waited, _describe(replica, max_lag))
            time.sleep(min(self.poll_s, max(self.max_wait_s - waited, 0.0)))
            replica = self.lagging(conn)
        waited = time.monotonic() - started
        log.warning("replicas caught up after %.1f s throttled: %s goes on", waited, before)
        return waited


def _describe(replica: dict[str, object], max_lag_ms: int) -> str:
    behind_mb = int(str(replica["behind_bytes"])) / 1e6
    return (
        f"replica {replica['replica']!r} replays {int(str(replica['replay_lag_ms'])) / 1000:.1f} s behind "
        f"({behind_mb:.1f} MB of WAL), above TASKDB_MAX_REPLICA_LAG_MS={max_lag_ms}"
    )
