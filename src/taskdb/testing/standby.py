"""A streaming hot standby of a throwaway local primary, for failover and replica-lag tests.

>>> from taskdb.testing.local import LocalServer
>>> with LocalServer() as primary, start_standby(primary) as standby:  # doctest: +SKIP
...     standby.pause_replay()                      # the standby receives WAL but applies none of it
...     ...                                         # write on the primary
...     standby.lag()                               # Lag(state='streaming', replay_bytes=..., ...)
...     primary.crash()                             # immediate shutdown of the primary
...     standby.promote()                           # now standby.server takes writes

How it is made: a physical replication slot on the primary (the primary keeps every WAL segment the standby
has not received, however far behind it falls), ``pg_basebackup -R`` over the primary's trusted unix socket
(``LocalServer(standby_of=...)``), the standby started on its own free port with ``primary_slot_name``, and
ready once the primary's ``pg_stat_replication`` shows it streaming. The primary needs nothing beyond
PostgreSQL's defaults (``wal_level = replica``, ``max_wal_senders``, ``max_replication_slots``, and initdb's
``replication`` lines in pg_hba). The standby gets the local backend's settings (pg_cron preloaded, its own
socket as ``cron.host``) on its command line, as the primary does, so pg_cron starts when it is promoted.
Local backend only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, NamedTuple, Self

import psycopg
from psycopg import sql

from taskdb.testing.base import PostgresUnavailable
from taskdb.testing.local import LocalServer

DEFAULT_SLOT = "taskdb_standby"
WAIT_S = 60.0


class Lag(NamedTuple):
    """How far the standby is behind, as the primary's ``pg_stat_replication`` sees it."""

    state: str  # walsender state: 'streaming', or 'catchup' while it receives the backlog
    sent_bytes: int  # pg_current_wal_lsn() - sent_lsn: WAL not yet sent
    replay_bytes: int  # pg_current_wal_lsn() - replay_lsn: WAL not yet applied on the standby
    replay_lag_s: float | None  # replay_lag (NULL once the standby has applied everything and is idle)


class Standby:
    """A hot standby streaming from ``primary`` through the replication slot ``slot``.

    ``server`` is the standby's :class:`LocalServer` (``url()``, ``connect()``, ``fetch_value()``). Stop it with
    :meth:`stop` or ``with``; that also drops the slot when the primary still runs.
    """

    def __init__(
        self,
        primary: LocalServer,
        *,
        slot: str = DEFAULT_SLOT,
        settings: Mapping[str, str] | None = None,
        timeout: float = WAIT_S,
    ) -> None:
        """``settings``: extra ``-c`` settings of the standby (the primary's ``cron.database_name`` is a
        good one to repeat: pg_cron runs there once promoted)."""
        self.primary = primary
        self.slot = slot
        self.promoted = False
        self._conninfo = ""
        with primary.connect() as conn:
            # Reserved now, before the base backup starts: no WAL the standby needs can be recycled.
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
        try:
            self.server = LocalServer(standby_of=primary, settings={**(settings or {}), "primary_slot_name": slot})
        except BaseException:
            self._drop_slot()
            raise
        try:
            self.wait_streaming(timeout)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Standby slot={self.slot} of {self.primary!r}: {self.server!r}>"

    def url(self, dbname: str = "postgres", driver: str | None = None) -> str:
        return self.server.url(dbname, driver)

    # -- what the standby knows ---------------------------------------------------------------------------
    def _standby_value(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        with self.server.connect() as conn:
            row = conn.execute(query, params).fetchone()
            return None if row is None else row[0]

    def replay_lsn(self) -> str:
        """The last WAL position applied here (``pg_last_wal_replay_lsn()``)."""
        return str(self._standby_value("SELECT pg_last_wal_replay_lsn()"))

    def receive_lsn(self) -> str | None:
        """The last WAL position received and flushed here (``pg_last_wal_receive_lsn()``)."""
        value = self._standby_value("SELECT pg_last_wal_receive_lsn()")
        return None if value is None else str(value)

    def replay_paused(self) -> bool:
        return bool(self._standby_value("SELECT pg_is_wal_replay_paused()"))

    # -- what the primary sees ----------------------------------------------------------------------------
    def lag(self) -> Lag | None:
        """The standby's lag from the primary's ``pg_stat_replication`` (its walsender is the slot's active
        one); ``None`` when it is not connected."""
        with self.primary.connect() as conn:
            row = conn.execute(
                "SELECT r.state, pg_wal_lsn_diff(pg_current_wal_lsn(), r.sent_lsn)::bigint, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint, "
                "extract(epoch FROM r.replay_lag)::float8 "
                "FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid "
                "WHERE s.slot_name = %s",
                (self.slot,),
            ).fetchone()
        if row is None:
            return None
        return Lag(str(row[0]), int(row[1] or 0), int(row[2] or 0), None if row[3] is None else float(row[3]))

    # -- waiting ------------------------------------------------------------------------------------------
    def _wait(self, done: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() >= deadline:
                raise PostgresUnavailable(
                    f"the standby {self.server!r} did not {what} within {timeout:.0f}s; its log "
                    f"{self.server.log_path}, the primary's {self.primary.log_path}"
                )
            time.sleep(0.05)

    def wait_streaming(self, timeout: float = WAIT_S) -> None:
        """Until the primary's ``pg_stat_replication`` shows this standby streaming through its slot."""

        def streaming() -> bool:
            lag = self.lag()
            return lag is not None and lag.state == "streaming"

        self._wait(streaming, "stream from the primary", timeout)

    def wait_received(self, timeout: float = WAIT_S) -> None:
        """Until the standby has received (not necessarily applied) all the WAL the primary had when this was
        called: what paused replay keeps and promotion applies."""
        self._wait_position("pg_last_wal_receive_lsn()", self._primary_lsn(), "receive", timeout)

    def wait_caught_up(self, timeout: float = WAIT_S) -> None:
        """Until the standby has applied all the WAL the primary had when this was called."""
        self._wait_position("pg_last_wal_replay_lsn()", self._primary_lsn(), "apply", timeout)

    def wait_applied(self, timeout: float = WAIT_S, still_s: float = 1.0) -> str:
        """Until the standby applies nothing more of what it has (e.g. after :meth:`cut_off`: WAL received up
        to the middle of a record stays unapplied, so "applied = received" may never come); returns where
        replay stopped."""
        lsn, since = self.replay_lsn(), time.monotonic()

        def still() -> bool:
            nonlocal lsn, since
            now = self.replay_lsn()
            if now != lsn:
                lsn, since = now, time.monotonic()
            return time.monotonic() - since >= still_s

        self._wait(still, "stop applying WAL", timeout)
        return lsn

    def _primary_lsn(self) -> str:
        """Where the primary's WAL ends, all of it flushed (so sent). With the local backend's synchronous_commit
        = off the last commits may still sit in WAL buffers (an idle tail for many seconds; lost if the primary
        dies then): a transaction that writes a WAL record and commits synchronously flushes everything before
        its commit. The record is a logical-decoding message, which changes no table."""
        with self.primary.connect(autocommit=False) as conn:
            conn.execute("SET LOCAL synchronous_commit = on")
            conn.execute("SELECT pg_logical_emit_message(true, 'taskdb.testing.standby', 'flush')")
            conn.commit()
            row = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
        return str(row[0]) if row else "0/0"

    def _wait_position(self, position: str, target: str, verb: str, timeout: float) -> None:
        self._wait(
            lambda: bool(self._standby_value(f"SELECT {position} >= %s::pg_lsn", (target,))),
            f"{verb} the primary's WAL up to {target}",
            timeout,
        )

    # -- changing it --------------------------------------------------------------------------------------
    def pause_replay(self, timeout: float = WAIT_S) -> str:
        """Stop applying WAL (it is still received and kept); returns the position applied so far, which
        queries on the standby see until :meth:`resume_replay` or :meth:`promote`."""
        with self.server.connect() as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
        # 'pause requested' until the startup process notices, which it does between records and while idle.
        self._wait(lambda: self._standby_value("SELECT pg_get_wal_replay_pause_state()") == "paused", "pause", timeout)
        return self.replay_lsn()

    def resume_replay(self) -> None:
        with self.server.connect() as conn:
            conn.execute("SELECT pg_wal_replay_resume()")

    def cut_off(self, timeout: float = WAIT_S) -> str | None:
        """Stop receiving WAL, as when the network between the two fails: ``primary_conninfo`` emptied and
        reloaded, so the WAL receiver exits and is not restarted. The standby keeps and applies what it has
        received, the primary's slot keeps the rest; returns the position received
        (``pg_last_wal_receive_lsn()``). :meth:`reconnect` undoes it."""
        with self.server.connect() as conn:
            row = conn.execute("SELECT current_setting('primary_conninfo')").fetchone()
            self._conninfo = str(row[0]) if row else ""
            conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
            conn.execute("SELECT pg_reload_conf()")
        self._wait(
            lambda: self._standby_value("SELECT count(*) FROM pg_stat_wal_receiver") == 0,
            "stop its WAL receiver",
            timeout,
        )
        return self.receive_lsn()

    def reconnect(self, timeout: float = WAIT_S) -> None:
        """Stream again after :meth:`cut_off`, from where it stopped (the slot kept the WAL)."""
        with self.server.connect() as conn:
            conn.execute(sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(self._conninfo)))
            conn.execute("SELECT pg_reload_conf()")
        self.wait_streaming(timeout)

    def promote(self, timeout: float = WAIT_S) -> None:
        """Promote the standby (``pg_promote``, waiting until it takes writes). Paused replay ends and the WAL
        received but not yet applied is applied first (PostgreSQL 14+)."""
        with self.server.connect() as conn:
            row = conn.execute("SELECT pg_promote(true, %s)", (max(1, int(timeout)),)).fetchone()
        if not (row and row[0]):
            raise PostgresUnavailable(
                f"the standby {self.server!r} was not promoted within {timeout:.0f}s; its log {self.server.log_path}"
            )
        self.promoted = True

    def stop(self) -> None:
        """Stop the standby (idempotent) and drop its slot on the primary if the primary still runs."""
        server = getattr(self, "server", None)
        if server is not None:
            server.stop()
        self._drop_slot()

    def _drop_slot(self) -> None:
        if self.primary.stopped:
            return
        # The walsender may hold the slot a moment after the standby went: retry briefly, never raise.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with self.primary.connect() as conn:
                    conn.execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                        (self.slot,),
                    )
                return
            except psycopg.errors.ObjectInUse:
                time.sleep(0.05)
            except psycopg.Error:  # cleanup runs in teardown: it must not raise
                return


def start_standby(
    primary: LocalServer,
    *,
    slot: str = DEFAULT_SLOT,
    settings: Mapping[str, str] | None = None,
    timeout: float = WAIT_S,
) -> Standby:
    """A hot standby of the local ``primary``, streaming through the slot ``slot`` (see :class:`Standby`)."""
    return Standby(primary, slot=slot, settings=settings, timeout=timeout)
