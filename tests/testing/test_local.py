"""The local backend: initdb + postgres of the PostgreSQL installed here, pg_cron preloaded."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from taskdb.testing import local, start_postgres
from taskdb.testing.base import PostgresServer, PostgresUnavailable
from taskdb.testing.local import LocalServer
from tests.testing import checks
from tests.testing.conftest import EXPECTED_CRON, local_majors

pytestmark = pytest.mark.skipif(
    not local_majors(), reason="no local PostgreSQL (apt-get install postgresql-15 postgresql-15-cron)"
)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_local_server_is_real_and_has_pg_cron(local_server: PostgresServer) -> None:
    assert local_server.backend == "local"
    assert local_server.major == max(local_majors())
    version = checks.assert_all(local_server)
    if local_server.major in EXPECTED_CRON:
        assert version.startswith(EXPECTED_CRON[local_server.major])


def test_runs_as_an_unprivileged_user(local_server: PostgresServer) -> None:
    assert isinstance(local_server, LocalServer)
    pid = int((local_server.dir / "data" / "postmaster.pid").read_text().split()[0])
    owner = os.stat(f"/proc/{pid}").st_uid
    assert owner != 0, "PostgreSQL must never run as root"
    if os.geteuid() == 0:
        assert pwd.getpwuid(owner).pw_name in ("postgres", local.FALLBACK_SYSTEM_USER)
        assert os.stat(local_server.dir).st_uid == owner
    assert (os.stat(local_server.dir).st_mode & 0o077) == 0, "the temp dir (and its socket) is private"


def test_pg_cron_jobs_connect_without_a_password(local_server: PostgresServer) -> None:
    """pg_cron's jobs connect to cron.host (our socket dir) with no password: that path must be trusted."""
    cron_host = local_server.setting("cron.host")
    assert isinstance(local_server, LocalServer) and cron_host == local_server.socket_dir
    with psycopg.connect(host=cron_host, port=local_server.port, user=local_server.user, dbname="postgres") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_log_never_holds_the_password(local_server: PostgresServer) -> None:
    assert isinstance(local_server, LocalServer)
    log = local_server.log_path.read_text()
    assert local_server.password not in log
    assert "pg_cron scheduler started" in log or "pg_cron" in log


def test_stop_is_idempotent_and_cleans_up() -> None:
    started = time.monotonic()
    server = start_postgres(backend="local")
    elapsed = time.monotonic() - started
    assert isinstance(server, LocalServer)
    directory, port = server.dir, server.port
    assert port_open(port)
    server.stop()
    server.stop()
    assert server.stopped
    assert not directory.exists()
    assert not port_open(port)
    with pytest.raises(PostgresUnavailable, match="was stopped"):
        server.create_database()
    # Fast enough to start one per test module: the template data dir is initdb'd once per process.
    assert elapsed < 15


def test_context_manager_and_independent_servers() -> None:
    with start_postgres(backend="local") as one, start_postgres(backend="local") as two:
        assert one.port != two.port
        assert one.password != two.password
        name = one.create_database()
        with two.connect() as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        assert found is None
    assert one.stopped and two.stopped


def test_settings_are_applied_and_pg_cron_stays() -> None:
    settings = {"cron.database_name": "crondb", "shared_preload_libraries": "pg_stat_statements", "work_mem": "7MB"}
    with start_postgres(backend="local", settings=settings) as server:
        assert server.setting("work_mem") == "7MB"
        assert server.cron_database == "crondb"
        libs = server.setting("shared_preload_libraries")
        assert "pg_cron" in libs and "pg_stat_statements" in libs
        server.create_database("crondb")
        with server.connect("crondb") as conn:
            conn.execute("CREATE EXTENSION pg_cron")
        with server.connect() as conn, pytest.raises(psycopg.Error, match="can only create extension"):
            conn.execute("CREATE EXTENSION pg_cron")


def test_missing_pg_cron_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(local, "_pg_config", lambda bindir, flag: str(tmp_path))
    with pytest.raises(PostgresUnavailable) as info:
        local.find_installation()
    message = str(info.value)
    assert f"apt-get install postgresql-{max(local_majors())}-cron" in message
    assert "To fix this, either:" in message and "\n" not in message


def test_missing_major_names_the_package() -> None:
    with pytest.raises(PostgresUnavailable, match=r"apt-get install postgresql-9 postgresql-9-cron"):
        start_postgres(backend="local", major=9)


def test_sweep_removes_what_a_killed_process_left(tmp_path: Path) -> None:
    # A child that starts a server, then dies by SIGKILL: no atexit, no stop().
    script = (
        "import os, signal\n"
        "from taskdb.testing.local import LocalServer\n"
        "s = LocalServer()\n"
        "print(s.dir, s.port, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    left_dir, port = proc.stdout.split()
    assert Path(left_dir).exists() and port_open(int(port))
    local._swept = False  # the sweep runs once per process; run it again for this test
    local.sweep_leftovers()
    deadline = time.monotonic() + 10
    while port_open(int(port)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(left_dir).exists()
    assert not port_open(int(port))
