"""What every backend shares: the server interface, errors, passwords, ports and readiness.

A server hands out URLs and throwaway databases; how it runs (a local ``postgres`` process, a container, an
existing server) is the backend's business. The superuser password is random per server and made of
characters that break naive URL building (``@ : / % # ? & =``), so that code which forgets to
percent-encode it, or prints it, is caught by the tests. It never appears in ``repr()`` or an error.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, ClassVar, NamedTuple, Self

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from taskdb.errors import TaskdbError

#: the backends, in the order ``TASKDB_PG_BACKEND`` documents them
BACKENDS = ("local", "container", "url")
SUPERUSER = "postgres"
LOOPBACK = "127.0.0.1"
DEFAULT_START_TIMEOUT = 60.0
DATABASE_PREFIX = "taskdb_test_"

# Throwaway servers: durability buys nothing and costs seconds on every CREATE DATABASE.
SPEED_SETTINGS: dict[str, str] = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresUnavailable(TaskdbError):
    """No throwaway PostgreSQL could be started."""


class Target(NamedTuple):
    """One place tests can run against: a backend and a PostgreSQL major version."""

    backend: str
    major: int | None = None

    @property
    def id(self) -> str:
        """A pytest id: ``local-15``, ``container-17``, ``url``."""
        return self.backend if self.major is None else f"{self.backend}-{self.major}"

    def start(self, settings: Mapping[str, str] | None = None) -> PostgresServer:
        from taskdb.testing import start_postgres  # the dispatcher lives in the package root

        return start_postgres(backend=self.backend, major=self.major, settings=settings)


def start_timeout() -> float:
    """Seconds a server may take to accept connections (env ``TASKDB_PG_START_TIMEOUT``)."""
    raw = os.environ.get("TASKDB_PG_START_TIMEOUT", "")
    try:
        return float(raw) if raw else DEFAULT_START_TIMEOUT
    except ValueError:
        return DEFAULT_START_TIMEOUT


def generate_password() -> str:
    """A fresh superuser password like ``Xy3@kL:/q9%#?&=Tz``: URL-hostile on purpose, ASCII only.

    No space or ``+``: SQLAlchemy renders those unencoded and libpq rejects a space in a URL, which would
    test SQLAlchemy rather than our code. ASCII keeps SCRAM's SASLprep an identity.
    """
    parts = [secrets.token_urlsafe(6) for _ in range(4)]
    return f"{parts[0]}@{parts[1]}:/{parts[2]}%#?&={parts[3]}"


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802, RFC 7677).

    ``CREATE/ALTER ROLE ... PASSWORD`` and ``initdb --pwfile`` store a verifier as is, so the cleartext
    password never has to reach the server process, its command line, the container or a file.
    """
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def free_port() -> int:
    """A TCP port free on the loopback right now (the caller retries if someone takes it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def random_database_name() -> str:
    return f"{DATABASE_PREFIX}{secrets.token_hex(4)}"


def merge_settings(base: Mapping[str, str], extra: Mapping[str, str] | None) -> dict[str, str]:
    """The caller's settings win, except that pg_cron always stays preloaded (it is why we exist)."""
    merged = {**base, **(extra or {})}
    libs = [lib.strip() for lib in merged.get("shared_preload_libraries", "").split(",") if lib.strip()]
    if "pg_cron" not in libs:
        libs.insert(0, "pg_cron")
    merged["shared_preload_libraries"] = ",".join(libs)
    return merged


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


def wait_until_ready(
    connect: Callable[[], psycopg.Connection[Any]],
    check_alive: Callable[[], str | None],
    timeout: float,
    what: str,
    log_tail: Callable[[], str] | None = None,
) -> None:
    """Poll ``connect`` until it works; stop early when ``check_alive`` reports why the server died.

    Bounded by ``timeout``; the last connection error (never holding the password: libpq does not echo
    it) goes into the message.
    """
    deadline = time.monotonic() + timeout
    last_error = "no attempt made"
    delay = 0.02
    while True:
        died = check_alive()
        if died is not None:
            raise PostgresUnavailable(f"{what} exited before accepting connections: {died}")
        try:
            with connect():
                return
        except psycopg.Error as exc:
            last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if time.monotonic() >= deadline:
            # The log goes into the message: the temp dir or container holding it is removed next.
            log = f"; server log: {log_tail()}" if log_tail else ""
            raise PostgresUnavailable(
                f"{what} did not accept connections within {timeout:.0f}s (last error: {last_error}{log}). "
                "To fix this, either: raise TASKDB_PG_START_TIMEOUT on a slow machine, or fix what the log says"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


class PostgresServer(ABC):
    """A running PostgreSQL that tests may use and throw away.

    Use it as a context manager or call :meth:`stop` (idempotent; also run at interpreter exit).
    """

    backend: ClassVar[str]

    host: str
    port: int
    user: str
    major: int
    settings: dict[str, str]

    def __init__(self) -> None:
        self.host = LOOPBACK
        self.port = 0
        self.user = SUPERUSER
        self.major = 0
        self.settings = {}
        self._password = generate_password()
        self._stopped = False
        self._created_names: set[str] = set()
        self._lock = threading.Lock()

    # The password is a property, not a field, so that no dataclass/vars() dump carries it by accident.
    @property
    def password(self) -> str:
        return self._password

    @property
    def stopped(self) -> bool:
        return self._stopped

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return (
            f"<{type(self).__name__} backend={self.backend} major={self.major} "
            f"{self.user}@{self.host}:{self.port} {state}>"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- URLs and connections ------------------------------------------------------------------------
    def url_object(self, dbname: str = "postgres", driver: str | None = None) -> URL:
        return URL.create(
            "postgresql" if driver is None else f"postgresql+{driver}",
            username=self.user,
            password=self._password,
            host=self.host,
            port=self.port,
            database=dbname,
        )

    def url(self, dbname: str = "postgres", driver: str | None = None) -> str:
        """``postgresql://user:pw@127.0.0.1:port/db`` with the password percent-encoded.

        ``driver=None`` gives the plain URL users paste (libpq/psycopg read it as is); ``"psycopg"`` or
        ``"pg8000"`` give the SQLAlchemy forms ``postgresql+psycopg://`` / ``postgresql+pg8000://``.
        """
        return self.url_object(dbname, driver).render_as_string(hide_password=False)

    def connect_kwargs(self, dbname: str = "postgres") -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect`` (keywords, not a URL: no quoting to get wrong)."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self._password,
            "dbname": dbname,
            "connect_timeout": 10,
            "application_name": "taskdb.testing",
        }

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> psycopg.Connection[Any]:
        """A psycopg 3 connection as the superuser (autocommit by default: admin statements)."""
        self._check_running()
        return psycopg.connect(autocommit=autocommit, **self.connect_kwargs(dbname))

    def fetch_value(self, query: str, dbname: str = "postgres") -> Any:
        """The first column of the first row of ``query`` (a small helper for checks and tests)."""
        with self.connect(dbname) as conn:
            row = conn.execute(query).fetchone()  # caller's literal SQL
            return None if row is None else row[0]

    def setting(self, name: str) -> str:
        """``current_setting(name)``, e.g. ``shared_preload_libraries`` or ``cron.database_name``."""
        with self.connect() as conn:
            row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
            return str(row[0]) if row else ""

    @property
    def cron_database(self) -> str:
        """The database pg_cron runs its jobs from (``cron.database_name``)."""
        return self.setting("cron.database_name")

    @property
    def cron_preloaded(self) -> bool:
        """Whether pg_cron is in ``shared_preload_libraries`` (always, except maybe on the url backend)."""
        libs = self.setting("shared_preload_libraries")
        return "pg_cron" in [lib.strip().strip('"') for lib in libs.split(",")]

    # -- databases ----------------------------------------------------------------------------------
    def create_database(self, name: str | None = None, template: str | None = None) -> str:
        """Create an empty database (or a copy of ``template``) and return its name."""
        self._check_running()
        name = name or random_database_name()
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
        with self.connect() as conn:
            conn.execute(stmt)
        self._created(name)
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, terminating its sessions first."""
        self._check_running()
        with self.connect() as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
            if self.major >= 13:
                conn.execute(drop + sql.SQL(" WITH (FORCE)"))
            else:  # before 13: terminate, then drop (a new session may slip in: retry once)
                for attempt in range(2):
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (name,),
                    )
                    try:
                        conn.execute(drop)
                        break
                    except psycopg.errors.ObjectInUse:
                        if attempt:
                            raise
        self._dropped(name)

    def _created(self, name: str) -> None:
        with self._lock:
            self._created_names.add(name)

    def _dropped(self, name: str) -> None:
        with self._lock:
            self._created_names.discard(name)

    @property
    def created_databases(self) -> list[str]:
        """Databases made by :meth:`create_database` and not dropped since (the url backend drops them)."""
        with self._lock:
            return sorted(self._created_names)

    # -- lifecycle -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the server and remove what it left behind. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._stop()

    @abstractmethod
    def _stop(self) -> None: ...

    def _check_running(self) -> None:
        if self._stopped:
            raise PostgresUnavailable(f"{self!r} was stopped; start a new server with start_postgres()")

    def _read_major(self) -> int:
        with psycopg.connect(**self.connect_kwargs()) as conn:
            row = conn.execute("SHOW server_version_num").fetchone()
        return int(str(row[0]) if row else "0") // 10000


def tail(text: str, lines: int = 8) -> str:
    """The last lines of a server log, on one line, for an error message."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "(empty log)"


def scrub(text: str, *secrets_: str) -> str:
    """Remove secrets from text that is about to go into an error message."""
    for secret in secrets_:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"(SCRAM-SHA-256\$)\S+", r"\1***", text)


def suppress_all() -> contextlib.suppress:
    """Cleanup paths must not raise: they run from atexit and teardown."""
    return contextlib.suppress(Exception)


# Every running server of any backend, stopped at interpreter exit if a test run forgot one.
LIVE_SERVERS: set[PostgresServer] = set()


@atexit.register
def _stop_live_servers() -> None:
    for server in list(LIVE_SERVERS):
        with suppress_all():
            server.stop()
