"""The ``local`` backend: the PostgreSQL installed on this machine, in a temp dir, on a free port.

``initdb`` runs once per process into a template data directory; each server is a copy of it (about
0.1 s instead of about a second), started with ``postgres`` directly so we own its process. The server
listens on 127.0.0.1 only, its unix socket sits in its private temp dir (trusted there: only the server's
OS user can reach it), TCP connections need the SCRAM password. As root the server runs as the
``postgres`` system user (PostgreSQL refuses to run as root), created if missing.
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from taskdb.testing.base import (
    LIVE_SERVERS,
    SPEED_SETTINGS,
    SUPERUSER,
    PostgresServer,
    PostgresUnavailable,
    free_port,
    merge_settings,
    pid_alive,
    scram_verifier,
    start_timeout,
    suppress_all,
    tail,
    wait_until_ready,
)

DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
FALLBACK_SYSTEM_USER = "taskdb-postgres"
DIR_PREFIX = "taskdb-pg-"
PORT_ATTEMPTS = 3
SHM_MIN_FREE = 1 << 30  # bytes free on /dev/shm before we put data dirs there


class Installation(NamedTuple):
    major: int
    bindir: Path
    pkglibdir: Path


class RunAs(NamedTuple):
    """The OS user the server runs as; ``None`` fields mean "this process's user"."""

    uid: int | None
    gid: int | None

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        if self.uid is None or self.gid is None:
            return
        os.chown(path, self.uid, self.gid)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), self.uid, self.gid)


def _pg_config(bindir: Path | None, flag: str) -> str | None:
    exe = str(bindir / "pg_config") if bindir and (bindir / "pg_config").exists() else shutil.which("pg_config")
    if not exe:
        return None
    try:
        return subprocess.run([exe, flag], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _major_of(bindir: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    return int(match.group(1)) if match else None


def installed_majors() -> dict[int, Path]:
    """Major version -> bindir of every PostgreSQL server installed here (Debian layout, then pg_config)."""
    found: dict[int, Path] = {}
    override = os.environ.get("TASKDB_PG_BINDIR")
    candidates: list[Path] = [Path(override)] if override else []
    if DEBIAN_PG_ROOT.is_dir():
        candidates += sorted(p / "bin" for p in DEBIAN_PG_ROOT.iterdir() if p.name.isdigit())
    if (bindir := _pg_config(None, "--bindir")) is not None:
        candidates.append(Path(bindir))
    for bindir_path in candidates:
        if (bindir_path / "postgres").exists() and (bindir_path / "initdb").exists():
            major = _major_of(bindir_path)
            if major is not None:
                found.setdefault(major, bindir_path)
    return found


def find_installation(major: int | None = None) -> Installation:
    majors = installed_majors()
    if not majors:
        raise PostgresUnavailable(
            "no local PostgreSQL server found (checked TASKDB_PG_BINDIR, /usr/lib/postgresql/*/bin and "
            "pg_config --bindir). To fix this, either: apt-get install postgresql-15 postgresql-15-cron, "
            "or use a container (scripts/start-docker && scripts/build-pg-image, TASKDB_PG_BACKEND=container), "
            "or TASKDB_PG_BACKEND=url with TASKDB_PG_URL"
        )
    if major is None:
        major = max(majors)
    elif major not in majors:
        raise PostgresUnavailable(
            f"PostgreSQL {major} is not installed locally (found: {', '.join(map(str, sorted(majors)))}). "
            f"To fix this, either: apt-get install postgresql-{major} postgresql-{major}-cron, "
            f"or use TASKDB_PG_BACKEND=container with the image taskdb-pg:{major}"
        )
    bindir = majors[major]
    pkglibdir = Path(_pg_config(bindir, "--pkglibdir") or bindir.parent / "lib")
    if not (pkglibdir / "pg_cron.so").exists():
        raise PostgresUnavailable(
            f"pg_cron is not installed for PostgreSQL {major} (no pg_cron.so in {pkglibdir}). "
            f"To fix this, either: apt-get install postgresql-{major}-cron, or use TASKDB_PG_BACKEND=container"
        )
    return Installation(major, bindir, pkglibdir)


def _run_as() -> RunAs:
    if os.geteuid() != 0:
        return RunAs(None, None)
    for name in (SUPERUSER, FALLBACK_SYSTEM_USER):
        try:
            entry = pwd.getpwnam(name)
            return RunAs(entry.pw_uid, entry.pw_gid)
        except KeyError:
            continue
    # Root, and no postgres user: make an unprivileged system user to run the server.
    try:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                FALLBACK_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise PostgresUnavailable(
            f"running as root, no 'postgres' user, and creating the system user {FALLBACK_SYSTEM_USER!r} "
            f"failed ({exc}). To fix this, either: useradd --system postgres, or run the tests as a normal user"
        ) from None
    entry = pwd.getpwnam(FALLBACK_SYSTEM_USER)
    return RunAs(entry.pw_uid, entry.pw_gid)


def base_dirs() -> list[Path]:
    """Where servers' temp dirs go, best first: ``TASKDB_PG_TMPDIR``, else /dev/shm, else the temp dir.

    /dev/shm (RAM) when it has room: a data dir is about a thousand files, and creating them on a disk
    temp dir can take most of a second; on tmpfs it takes a few milliseconds.
    """
    override = os.environ.get("TASKDB_PG_TMPDIR")
    if override:
        return [Path(override)]
    dirs = []
    shm = Path("/dev/shm")
    with suppress_all():
        stat = os.statvfs(shm)
        if os.access(shm, os.W_OK | os.X_OK) and stat.f_bavail * stat.f_frsize >= SHM_MIN_FREE:
            dirs.append(shm)
    dirs.append(Path(tempfile.gettempdir()))
    return dirs


def _make_dir(run_as: RunAs, kind: str) -> Path:
    # The owner pid in the name lets a later process sweep what a killed one left behind.
    path = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-{kind}-", dir=base_dirs()[0]))
    path.chmod(0o700)
    run_as.chown(path)
    return path


# -- one initdb per process and installation ----------------------------------------------------------
_templates: dict[Path, Path] = {}
_templates_lock = threading.Lock()
_swept = False


def _template(inst: Installation, run_as: RunAs) -> Path:
    """A data directory made by initdb once; servers start from copies of it."""
    with _templates_lock:
        if inst.bindir in _templates and (_templates[inst.bindir] / "PG_VERSION").exists():
            return _templates[inst.bindir]
        workdir = _make_dir(run_as, "template")
        data = workdir / "data"
        cmd = [
            str(inst.bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "--encoding=UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=workdir, **run_as.popen_kwargs())
        if proc.returncode != 0:
            shutil.rmtree(workdir, ignore_errors=True)
            raise PostgresUnavailable(
                f"initdb of PostgreSQL {inst.major} failed (exit {proc.returncode}): {tail(proc.stderr)}"
            )
        _templates[inst.bindir] = data
        atexit.register(shutil.rmtree, workdir, True)
        return data


def sweep_leftovers() -> None:
    """Stop servers and remove dirs left by processes that died without cleaning up (kill -9, OOM)."""
    global _swept
    if _swept:
        return
    _swept = True
    candidates = {Path("/dev/shm"), Path(tempfile.gettempdir()), *base_dirs()}
    for path in (p for base in candidates if base.is_dir() for p in base.glob(f"{DIR_PREFIX}*-*-*")):
        match = re.fullmatch(rf"{DIR_PREFIX}(\d+)-(server|template)-\w+", path.name)
        if not match or pid_alive(int(match.group(1))):
            continue
        with suppress_all():
            pidfile = path / "data" / "postmaster.pid"
            if pidfile.exists():
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGQUIT)  # immediate shutdown
            shutil.rmtree(path, ignore_errors=True)


class LocalServer(PostgresServer):
    """``postgres`` from the installed PostgreSQL, as a child process of this one."""

    backend = "local"

    def __init__(
        self,
        major: int | None = None,
        settings: Mapping[str, str] | None = None,
        *,
        standby_of: LocalServer | None = None,
    ) -> None:
        """``standby_of``: a hot standby of that (local) primary, made with ``pg_basebackup -R`` and streaming
        from it; same major, same superuser password (replicated with the catalog)."""
        super().__init__()
        sweep_leftovers()
        self.installation = find_installation(standby_of.major if standby_of else major)
        self._run_as = _run_as()
        self._proc: subprocess.Popen[bytes] | None = None
        self.standby_of = standby_of
        self.dir = _make_dir(self._run_as, "server")
        try:
            if standby_of is None:
                shutil.copytree(_template(self.installation, self._run_as), self.dir / "data", symlinks=True)
                self._run_as.chown(self.dir / "data")
            else:
                self._password = standby_of.password
                self._base_backup(standby_of)
            self._start(settings)
        except BaseException:
            self._cleanup()
            raise
        LIVE_SERVERS.add(self)

    def _base_backup(self, primary: LocalServer) -> None:
        proc = subprocess.run(
            [
                str(self.installation.bindir / "pg_basebackup"),
                "-D",
                str(self.dir / "data"),
                "-R",
                "-X",
                "stream",
                "-h",
                primary.socket_dir,
                "-p",
                str(primary.port),
                "-U",
                primary.user,
                "--no-sync",
                # not the default spread checkpoint, paced over checkpoint_timeout: 90 s here after a CREATE DATABASE
                "--checkpoint=fast",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=self.dir,
            **self._run_as.popen_kwargs(),
        )
        if proc.returncode != 0:
            raise PostgresUnavailable(f"pg_basebackup failed (exit {proc.returncode}): {tail(proc.stderr)}")

    @property
    def log_path(self) -> Path:
        return self.dir / "postgres.log"

    @property
    def socket_dir(self) -> str:
        return str(self.dir)

    def _start(self, extra: Mapping[str, str] | None) -> None:
        timeout = start_timeout()
        for attempt in range(PORT_ATTEMPTS):
            self.port = free_port()
            self.settings = merge_settings(
                {
                    "listen_addresses": self.host,
                    "unix_socket_directories": self.socket_dir,
                    "shared_preload_libraries": "pg_cron",
                    "cron.database_name": "postgres",
                    # pg_cron's jobs connect over the trusted socket, so they need no password.
                    "cron.host": self.socket_dir,
                    **SPEED_SETTINGS,
                },
                extra,
            )
            args = [str(self.installation.bindir / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port)]
            for name, value in self.settings.items():
                args += ["-c", f"{name}={value}"]
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                    start_new_session=True,  # a Ctrl-C in pytest must not kill it before teardown
                    umask=0o077,
                    **self._run_as.popen_kwargs(),
                )
            try:
                wait_until_ready(
                    self._socket_connect,
                    self._exit_reason,
                    timeout,
                    f"local PostgreSQL {self!r}",
                    lambda: tail(self._log_text()),
                )
                break
            except PostgresUnavailable:
                port_taken = "could not bind" in self._log_text() or "already in use" in self._log_text()
                self._kill()
                if port_taken and attempt + 1 < PORT_ATTEMPTS:
                    continue  # someone took the port between free_port() and bind(): another port
                raise
        if self.standby_of is None:  # a standby is read-only; its password is the primary's
            # The template has no password; each server gets its own, set as a SCRAM verifier.
            with self._socket_connect() as conn:
                conn.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(self.user), sql.Literal(scram_verifier(self.password))
                    )
                )
        self.major = self._read_major()

    def _socket_connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.socket_dir,
            port=self.port,
            user=self.user,
            dbname="postgres",
            autocommit=True,
            connect_timeout=5,
        )

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _exit_reason(self) -> str | None:
        if self._proc is None or self._proc.poll() is None:
            return None
        return f"exit code {self._proc.returncode}; log {self.log_path}: {tail(self._log_text())}"

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # SIGINT = fast shutdown: disconnect sessions, stop cleanly; SIGQUIT if it hangs.
        for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            with suppress_all():
                proc.send_signal(sig)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _cleanup(self) -> None:
        self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def crash(self) -> None:
        """Stop at once, as a dying machine would (immediate shutdown: no checkpoint, sessions cut, nothing
        more sent to standbys), then remove what it left as :meth:`stop` does."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGQUIT)
            with suppress_all():
                self._proc.wait(10)
        self.stop()

    def _stop(self) -> None:
        LIVE_SERVERS.discard(self)
        self._cleanup()
