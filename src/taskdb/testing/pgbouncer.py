"""Debian's PgBouncer in front of a throwaway server, as our users' poolers run (Supabase's port 6543 is
transaction pooling): ``with PgBouncer(server, mode="transaction", pool_size=3) as pooler: pooler.url(db)``.

It runs as the server's OS user (PgBouncer refuses root), listens on 127.0.0.1 on a free port, and
authenticates clients with SCRAM against the superuser's password (kept in its private temp dir, never
printed). ``server_reset_query`` stays PgBouncer's default (DISCARD ALL, session mode only): in transaction
mode nothing cleans a server connection between clients, which is what the tests need to see.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg
from sqlalchemy.engine import URL

from taskdb.testing.base import LOOPBACK, PostgresServer, PostgresUnavailable, free_port, tail
from taskdb.testing.local import _run_as

PGBOUNCER = Path("/usr/sbin/pgbouncer")


def pgbouncer_available() -> bool:
    return PGBOUNCER.exists() or shutil.which("pgbouncer") is not None


class PgBouncer:
    """A PgBouncer process pooling every database of ``server``."""

    def __init__(self, server: PostgresServer, *, mode: str = "transaction", pool_size: int = 3) -> None:
        if not pgbouncer_available():
            raise PostgresUnavailable("PgBouncer is not installed: apt-get install pgbouncer (scripts/setup does)")
        self.server, self.mode, self.pool_size = server, mode, pool_size
        self.host, self.port = LOOPBACK, 0
        self.dir = Path(tempfile.mkdtemp(prefix="taskdb-pgbouncer-"))
        self.process: subprocess.Popen[bytes] | None = None
        self._start()

    def _start(self) -> None:
        run_as = _run_as()
        self.port = free_port()
        password = self.server.password.replace('"', '""')
        (self.dir / "users.txt").write_text(f'"{self.server.user}" "{password}"\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={self.server.host} port={self.server.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = {self.host}\nlisten_port = {self.port}\nunix_socket_dir =\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {self.dir / 'users.txt'}\n"
            f"pool_mode = {self.mode}\ndefault_pool_size = {self.pool_size}\nmin_pool_size = 0\n"
            "reserve_pool_size = 0\nmax_client_conn = 200\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
            f"pidfile = {self.dir / 'pgbouncer.pid'}\n"
        )
        self.dir.chmod(0o700)
        run_as.chown(self.dir)
        exe = str(PGBOUNCER) if PGBOUNCER.exists() else str(shutil.which("pgbouncer"))
        self.process = subprocess.Popen(
            [exe, str(self.dir / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **run_as.popen_kwargs(),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.conninfo("postgres"), connect_timeout=5, prepare_threshold=None) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "pgbouncer.log").read_text() if (self.dir / "pgbouncer.log").exists() else ""
                    self.stop()
                    raise PostgresUnavailable(f"PgBouncer did not start: {tail(log)}") from None
                time.sleep(0.1)

    def url_object(self, dbname: str, driver: str | None = None) -> URL:
        return self.server.url_object(dbname, driver).set(host=self.host, port=self.port)

    def url(self, dbname: str, driver: str | None = None) -> str:
        """The server's URL for ``dbname``, through the pooler."""
        return self.url_object(dbname, driver).render_as_string(hide_password=False)

    def conninfo(self, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=self.port, user=self.server.user, password=self.server.password, dbname=dbname
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
