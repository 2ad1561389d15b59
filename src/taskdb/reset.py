"""Drop and recreate a development database, upgrade it and load sample data (``taskdb reset``).

Only for the developer loop: the target must be a local server (a loopback address, ``localhost`` or a Unix
socket) unless the caller forces it. The check reads the URL only (and, for psycopg, the libpq environment
that decides the host when the URL names none), so a remote database is refused before any connection.
Whatever happens, the caller is told which database is about to be dropped before it is.

Seeds:

- ``none``: the empty tables at head;
- ``incident``: the incident's half-migrated schema and rows, loaded *before* the upgrade, so the result is
  the repaired incident (with ``upgrade=False`` it stays half-migrated, to try ``taskdb plan`` / ``upgrade``);
- ``demo``: a small healthy queue, loaded after the upgrade (``seeds/demo.sql``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from taskdb import api, cron, seeds, version_table
from taskdb.catalog import table_exists
from taskdb.config import driver_of, normalize_url, parse_url, redact
from taskdb.db import connect, create_engine, pin_schema, quote_ident, rows, scalar, sqlstate
from taskdb.errors import ConnectError, TaskdbError
from taskdb.target import configured_schema

log = logging.getLogger("taskdb.reset")

SEEDS = ("none", "demo", "incident")
# The maintenance databases reset connects to (the first that accepts), and that it never drops.
MAINTENANCE_DATABASES = ("postgres", "template1")
PROTECTED_DATABASES = frozenset({"postgres", "template0", "template1"})
# Query parameters that would make the driver connect to another database than the URL's path names.
DATABASE_OVERRIDES = ("dbname", "database", "service")
# The revision whose downgrade removes taskdb's pg_cron jobs: reset removes them the same way before the drop.
CRON_REVISION = "0006_cron"
OBJECT_IN_USE = "55006"
APPLICATION_NAME = "taskdb reset"


class ResetRefused(TaskdbError):
    """taskdb reset refused to drop this database."""

    exit_code = 2


@dataclass(frozen=True)
class Target:
    """The database a URL names, and where it is, read from the URL alone (no connection)."""

    # normalised (postgresql+psycopg:// or postgresql+pg8000://), password included: never print it
    url: str = field(repr=False)
    database: str
    hosts: tuple[str, ...]  # every host the driver could connect to; "" is the default Unix socket
    port: int | None
    remote: tuple[str, ...] = field(default=())  # the hosts (or reasons) that are not local

    @property
    def local(self) -> bool:
        return not self.remote

    @property
    def host(self) -> str:
        """For people: ``127.0.0.1:5432``, ``localhost``, ``the default Unix socket``."""
        names = ", ".join(h or "the default Unix socket" for h in self.hosts)
        return f"{names}:{self.port}" if self.port and len(self.hosts) == 1 and self.hosts[0] else names

    @property
    def redacted_url(self) -> str:
        return redact(parse_url(self.url).render_as_string(hide_password=True), self.url)

    def describe(self) -> str:
        return f'database "{self.database}" on host {self.host} ({self.redacted_url})'


@dataclass
class ResetResult:
    """What a reset did (``taskdb reset --json``)."""

    database: str
    host: str
    url: str  # redacted
    seed: str
    existed: bool
    revision: str | None
    upgrade: dict[str, Any] | None
    tasks_by_status: dict[str, int]
    cron_jobs_removed: bool = False


def is_local_host(host: str | None) -> bool:
    """A loopback address (127.0.0.0/8, ::1), ``localhost`` (or ``*.localhost``), or a Unix socket (a path,
    or empty: the driver's default socket). Names are not resolved: a name that is not ``localhost`` is remote."""
    if not host:
        return True
    host = host.strip()
    if host.startswith(("/", "@")):  # a Unix socket directory, or a Linux abstract socket
        return True
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _split_hosts(value: Any) -> list[str]:
    """A host query parameter as SQLAlchemy passes it on: ``h1,h2``, ``h1:port``, or repeated."""
    values = value if isinstance(value, list | tuple) else [value]
    hosts: list[str] = []
    for item in values:
        for token in str(item).split(","):
            token = token.strip()
            if token.startswith("[") and "]" in token:  # [::1]:5432
                token = token[1 : token.index("]")]
            elif token.count(":") == 1 and not token.startswith("/"):  # host:port
                token = token.split(":", 1)[0]
            hosts.append(token)
    return hosts


def inspect_target(url: str, environ: Mapping[str, str] | None = None) -> Target:
    """Which database ``url`` names and every host its driver may connect to: the URL's host, ``host`` and
    ``hostaddr`` query parameters (pg8000: ``unix_sock``), and for psycopg (libpq) ``PGHOST`` /
    ``PGHOSTADDR`` where the URL leaves them out. Reads no network."""
    env = os.environ if environ is None else environ
    url = normalize_url(url)
    parsed = parse_url(url)
    database = parsed.database or ""
    query = dict(parsed.query)
    driver = driver_of(url)
    remote: list[str] = []
    if driver == "pg8000":
        if "unix_sock" in query:
            hosts = [str(query["unix_sock"])]
        else:
            hosts = _split_hosts(query["host"]) if "host" in query else [parsed.host or "localhost"]
    else:
        hosts = _split_hosts(query["host"]) if "host" in query else [parsed.host] if parsed.host else []
        if not hosts:
            hosts = _split_hosts(env["PGHOST"]) if env.get("PGHOST") else [""]
        # libpq connects to hostaddr instead of resolving host: both must be local.
        addresses = query.get("hostaddr") or env.get("PGHOSTADDR")
        if addresses:
            hosts += [a for a in _split_hosts(addresses) if a not in hosts]
        if env.get("PGSERVICE") and "host" not in query and not parsed.host:
            remote.append(f"PGSERVICE={env['PGSERVICE']} (its host is unknown)")
    remote = [h for h in hosts if not is_local_host(h)] + remote
    return Target(url=url, database=database, hosts=tuple(hosts), port=parsed.port, remote=tuple(remote))


def check_target(target: Target, *, force: bool = False) -> None:
    """Raise :class:`ResetRefused` (exit 2) unless ``target`` may be dropped: a named database that is not a
    maintenance database, whose URL says where it is, on a local host (or ``force``)."""
    parsed = parse_url(target.url)
    overrides = [key for key in DATABASE_OVERRIDES if key in parsed.query]
    if overrides:
        raise ResetRefused(
            f"refusing to reset: the URL's query sets {', '.join(overrides)}, so the database the driver would "
            f"use is not the one its path names ({target.redacted_url}); put the database name in the URL's path"
        )
    if not target.database:
        raise ResetRefused(
            f"refusing to reset: the URL names no database ({target.redacted_url}); "
            "add one, e.g. postgresql://user@localhost/taskdb_dev"
        )
    if target.database in PROTECTED_DATABASES:
        raise ResetRefused(
            f'refusing to reset database "{target.database}" on host {target.host}: it is a maintenance '
            "database of the server (--force does not change this); use a database of your own, e.g. taskdb_dev"
        )
    if target.remote and not force:
        raise ResetRefused(
            f"refusing to reset {target.describe()}: {', '.join(target.remote)} is not a local host "
            "(loopback, localhost or a Unix socket); nothing was dropped. Pass --force to drop and recreate it anyway"
        )


def reset(
    url: str,
    seed: str = "none",
    *,
    upgrade: bool = True,
    force: bool = False,
    announce: Callable[[str], None] = print,
    environ: Mapping[str, str] | None = None,
) -> ResetResult:
    """Drop the database ``url`` names (if it exists), create it again, load ``seed`` and upgrade to head.

    Checks the target first (:func:`check_target`, before any connection), then calls ``announce`` with the
    database, its host and the redacted URL before anything is dropped. Other sessions of the database are
    terminated (``DROP DATABASE ... WITH (FORCE)`` from PostgreSQL 13). taskdb's pg_cron jobs for it are
    removed first, as a downgrade would, so none keeps running against the new database.
    """
    if seed not in SEEDS:
        raise ResetRefused(f"unknown seed {seed!r}: use one of {', '.join(SEEDS)}")
    if seed == "demo" and not upgrade:
        raise ResetRefused("--seed demo needs the head schema: drop --no-upgrade, or use --seed incident or none")
    target = inspect_target(url, environ)
    check_target(target, force=force)
    versions = version_table.configured()  # a misnamed version table stops the reset before anything is dropped
    announce(f"about to drop and recreate {target.describe()}")

    with _maintenance(target) as admin:
        existed = bool(
            scalar(admin, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = :d)", {"d": target.database})
        )
        removed = _remove_cron_jobs(target) if existed else False
        _drop(admin, target.database)
        admin.exec_driver_sql(f"CREATE DATABASE {_quote(admin, target.database)}")
    announce(f'{"dropped and " if existed else ""}created database "{target.database}"')
    schema = configured_schema()
    if schema:  # the queue in its own schema (TASKDB_SCHEMA): the new database gets it, the seeds go there
        with _session(target.url) as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")

    if seed == "incident":
        with _session(target.url, transaction=True) as conn:
            seeds.load_schema(conn, "half_migrated")
            seeds.load_incident(conn)
        announce("loaded the incident: the half-migrated schema and its rows")
    outcome = None
    if upgrade:
        outcome = api.upgrade(target.url, raise_taskdb_errors=True)
        changes = ", ".join(f"{n} {action}" for action, n in outcome["changes"].items()) or "no row changed"
        announce(
            f"upgraded {outcome['from_revision'] or '<none>'} -> {outcome['to_revision']} in "
            f"{outcome['seconds']:.1f}s; {changes}"
        )
    if seed == "demo":
        with _session(target.url, transaction=True) as conn:
            seeds.load_demo(conn)
        announce("loaded the demo queue")

    with _session(target.url) as conn:
        revision = version_table.revision(conn, versions)
        counts = (
            {
                r["status"]: int(r["n"])
                for r in rows(conn, "SELECT status::text AS status, count(*) AS n FROM tasks GROUP BY 1 ORDER BY 1")
            }
            if table_exists(conn, "tasks")
            else {}
        )
    return ResetResult(
        database=target.database,
        host=target.host,
        url=target.redacted_url,
        seed=seed,
        existed=existed,
        revision=revision,
        upgrade=outcome,
        tasks_by_status=counts,
        cron_jobs_removed=removed,
    )


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


@contextmanager
def _session(url: str, *, transaction: bool = False) -> Iterator[Connection]:
    """An AUTOCOMMIT connection to ``url``, or with ``transaction`` one transaction (committed at the end);
    pinned to ``TASKDB_SCHEMA`` where one is named (taskdb.db.pin_schema)."""
    engine = create_engine(url, application_name=APPLICATION_NAME)
    try:
        with connect(engine) as conn:
            schema = configured_schema()
            if schema:
                pin_schema(conn, schema)
            if transaction:
                with conn.begin():
                    yield conn
            else:
                yield conn.execution_options(isolation_level="AUTOCOMMIT")
    finally:
        engine.dispose()


@contextmanager
def _maintenance(target: Target) -> Iterator[Connection]:
    """An AUTOCOMMIT connection to the server's ``postgres`` database, else ``template1`` (same URL otherwise)."""
    for database in MAINTENANCE_DATABASES:
        engine = create_engine(
            parse_url(target.url).set(database=database).render_as_string(hide_password=False),
            application_name=APPLICATION_NAME,
        )
        try:
            try:
                conn = connect(engine)
            except ConnectError as exc:
                if f'database "{database}" does not exist' in str(exc) and database != MAINTENANCE_DATABASES[-1]:
                    continue
                raise ConnectError(f"cannot reset {target.describe()}: {exc}") from None
            with conn.execution_options(isolation_level="AUTOCOMMIT") as admin:
                yield admin
            return
        finally:
            engine.dispose()


def _remove_cron_jobs(target: Target) -> bool:
    """Unschedule taskdb's pg_cron jobs of this database (they live in the cron database, which the drop does
    not touch). Best effort: a database that cannot be read is dropped all the same, with a warning."""
    try:
        with _session(target.url) as conn:
            if not table_exists(conn, cron.RECORD_TABLE):
                return False
            cron.unschedule_jobs(conn, CRON_REVISION, mode="auto")
            return True
    except (TaskdbError, DBAPIError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        log.warning("could not look for taskdb's pg_cron jobs of %s: %s", target.database, redact(reason, target.url))
        return False


def _drop(admin: Connection, database: str) -> None:
    """DROP DATABASE IF EXISTS, ending the database's other sessions first."""
    drop = f"DROP DATABASE IF EXISTS {_quote(admin, database)}"
    if int(scalar(admin, "SHOW server_version_num")) >= 130000:
        admin.exec_driver_sql(drop + " WITH (FORCE)")
        return
    for attempt in range(3):  # before 13: terminate, then drop; a session may slip in between, so retry
        admin.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"
            ),
            {"d": database},
        )
        try:
            admin.exec_driver_sql(drop)
            return
        except DBAPIError as exc:
            if sqlstate(exc) != OBJECT_IN_USE or attempt == 2:
                raise
