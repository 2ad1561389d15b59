"""pytest fixtures for a throwaway PostgreSQL; off until enabled: ``-p taskdb.testing.pytest_plugin``.

- ``taskdb_pg_server`` (session): one server for the whole run
  (backend: ``--taskdb-pg-backend`` or ``TASKDB_PG_BACKEND``)
- ``taskdb_pg_database`` (function): a fresh empty database on it, dropped after the test; ``.name``, ``.url()``
- ``taskdb_pg_url`` (function): the plain ``postgresql://`` URL of ``taskdb_pg_database``
- ``taskdb_pg_database_factory`` (function): ``create(template=None) -> name``; all dropped after the test
- ``taskdb_pg_target_server`` (function, parametrized over :func:`available_targets`, ids ``local-15``,
  ``container-17``): one server per target, started on first use and kept for the session; container
  targets carry the ``container`` marker

Servers are shared: ``taskdb_pg_target_server`` reuses ``taskdb_pg_server`` when they are the same target. A
server that failed to start is not retried in every test: the same error is raised again at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from taskdb.testing import BACKENDS, available_targets, start_postgres
from taskdb.testing.base import PostgresServer, PostgresUnavailable, Target, suppress_all

_TARGETS_KEY = pytest.StashKey[list[Target]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("taskdb", "taskdb throwaway PostgreSQL")
    group.addoption(
        "--taskdb-pg-backend",
        dest="taskdb_pg_backend",
        choices=("auto", *BACKENDS),
        default=None,
        help="backend of taskdb_pg_server: auto (container where a Docker engine and the image are there, else "
        "local), local, container or url (default: env TASKDB_PG_BACKEND, else auto)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Also registered in pyproject.toml; repeated here so the plugin works in any project.
    config.addinivalue_line("markers", "container: needs a Docker engine (skipped where none answers)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "taskdb_pg_target_server" not in metafunc.fixturenames:
        return
    # Detected once per session: it pings Docker and runs `postgres --version`.
    targets = metafunc.config.stash.get(_TARGETS_KEY, None)
    if targets is None:
        try:
            targets = available_targets()
        except PostgresUnavailable as exc:  # a malformed TASKDB_PG_TARGETS: fail collection, say why
            raise pytest.UsageError(str(exc)) from None
        metafunc.config.stash[_TARGETS_KEY] = targets
    params = [
        pytest.param(target, id=target.id, marks=[pytest.mark.container] if target.backend == "container" else [])
        for target in targets
    ]
    # Empty list: pytest skips the test ("got empty parameter set"), e.g. no PostgreSQL at all.
    metafunc.parametrize("taskdb_pg_target_server", params, indirect=True)


class ServerPool:
    """Servers of one test session, started on first use, stopped at the end."""

    def __init__(self, backend: str | None) -> None:
        self.backend = backend
        self._servers: dict[Target, PostgresServer] = {}
        self._failures: dict[Target | None, str] = {}
        self._default: PostgresServer | None = None

    def default(self) -> PostgresServer:
        if self._default is None:
            if None in self._failures:
                raise PostgresUnavailable(self._failures[None])
            try:
                server = start_postgres(backend=self.backend)
            except PostgresUnavailable as exc:
                self._failures[None] = str(exc)
                raise
            self._default = server
            self._servers.setdefault(Target(server.backend, server.major), server)
        return self._default

    def for_target(self, target: Target) -> PostgresServer:
        key = target
        if key not in self._servers:
            if key in self._failures:
                raise PostgresUnavailable(self._failures[key])
            try:
                server = target.start()
            except PostgresUnavailable as exc:
                self._failures[key] = str(exc)
                raise
            self._servers[key] = server
            # A target without a major (e.g. "url") is also known under the major it turned out to be.
            self._servers.setdefault(Target(server.backend, server.major), server)
        return self._servers[key]

    def stop_all(self) -> None:
        for server in {id(s): s for s in self._servers.values()}.values():
            with suppress_all():
                server.stop()
        if self._default is not None:
            with suppress_all():
                self._default.stop()
        self._servers.clear()
        self._default = None


@dataclass
class TestDatabase:
    """A database made for one test: its name, its server and its URLs."""

    __test__ = False  # not a test class, whatever its name says

    name: str
    server: PostgresServer = field(repr=False)

    def url(self, driver: str | None = None) -> str:
        """Plain ``postgresql://`` (``driver=None``), or ``postgresql+psycopg://`` / ``+pg8000``."""
        return self.server.url(self.name, driver)

    def __str__(self) -> str:
        return self.name


@pytest.fixture(scope="session")
def taskdb_pg_server_pool(request: pytest.FixtureRequest) -> Iterator[ServerPool]:
    pool = ServerPool(request.config.getoption("taskdb_pg_backend", default=None))
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session")
def taskdb_pg_server(taskdb_pg_server_pool: ServerPool) -> PostgresServer:
    """The session's PostgreSQL (pg_cron preloaded; superuser URLs via ``.url(dbname)``)."""
    return taskdb_pg_server_pool.default()


@pytest.fixture
def taskdb_pg_target_server(request: pytest.FixtureRequest, taskdb_pg_server_pool: ServerPool) -> PostgresServer:
    """The server of this test's target (see ``available_targets``), kept for the session."""
    target = getattr(request, "param", None)
    if target is None:
        pytest.fail("taskdb_pg_target_server is parametrized by the taskdb plugin; do not call it indirectly")
    return taskdb_pg_server_pool.for_target(target)


@pytest.fixture
def taskdb_pg_database_factory(taskdb_pg_server: PostgresServer) -> Iterator[Callable[..., str]]:
    """``create(template=None, name=None) -> name``: more databases, all dropped after the test."""
    made: list[str] = []

    def create(template: str | None = None, name: str | None = None) -> str:
        made.append(taskdb_pg_server.create_database(name=name, template=template))
        return made[-1]

    yield create
    for name in reversed(made):
        taskdb_pg_server.drop_database(name)


@pytest.fixture
def taskdb_pg_database(taskdb_pg_server: PostgresServer) -> Iterator[TestDatabase]:
    """A fresh, empty database on ``taskdb_pg_server``, dropped (sessions terminated) after the test."""
    name = taskdb_pg_server.create_database()
    yield TestDatabase(name, taskdb_pg_server)
    taskdb_pg_server.drop_database(name)


@pytest.fixture
def taskdb_pg_url(taskdb_pg_database: TestDatabase) -> str:
    """The plain ``postgresql://user:pw@127.0.0.1:port/db`` URL of ``taskdb_pg_database``."""
    return taskdb_pg_database.url()
