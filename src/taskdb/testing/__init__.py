"""A real, throwaway PostgreSQL with pg_cron preloaded, for tests.

>>> from taskdb.testing import start_postgres
>>> with start_postgres() as server:                  # doctest: +SKIP
...     name = server.create_database()
...     url = server.url(name)                         # postgresql://postgres:<encoded>@127.0.0.1:port/name

Backends (``backend=`` or env ``TASKDB_PG_BACKEND``; unset or ``auto`` picks ``container`` where a Docker
engine answers and the image for the major exists, else ``local``):

- ``local``: initdb + postgres of the PostgreSQL installed here (``postgresql-<major>-cron`` for pg_cron);
- ``container``: image ``taskdb-pg:<major>`` (``scripts/build-pg-image``) through testcontainers;
- ``url``: an existing server named by ``TASKDB_PG_URL``; only databases are created and dropped.

:func:`available_targets` lists what a test matrix can run on (env ``TASKDB_PG_TARGETS`` forces it, e.g.
``local:15,container:15,container:17``). The pytest plugin (:mod:`taskdb.testing.pytest_plugin`) turns
all this into fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from taskdb.testing.base import BACKENDS, PostgresServer, PostgresUnavailable, Target

__all__ = [
    "BACKENDS",
    "PostgresServer",
    "PostgresUnavailable",
    "Target",
    "available_targets",
    "resolve_backend",
    "start_postgres",
]

BACKEND_ENV = "TASKDB_PG_BACKEND"
TARGETS_ENV = "TASKDB_PG_TARGETS"


def resolve_backend(backend: str | None = None, major: int | None = None) -> str:
    """The backend ``start_postgres`` would use: the argument, else ``TASKDB_PG_BACKEND``, else auto."""
    chosen = (backend or os.environ.get(BACKEND_ENV, "") or "auto").strip().lower()
    if chosen == "auto":
        from taskdb.testing import container

        return "container" if container.usable(major) else "local"
    if chosen not in BACKENDS:
        raise PostgresUnavailable(
            f"unknown backend {chosen!r} (from {'the argument' if backend else BACKEND_ENV}). To fix this, "
            f"use one of: auto, {', '.join(BACKENDS)}"
        )
    return chosen


def start_postgres(
    backend: str | None = None, major: int | None = None, settings: Mapping[str, str] | None = None
) -> PostgresServer:
    """Start (or, for ``url``, attach to) a PostgreSQL server; stop it with ``.stop()`` or ``with``.

    ``settings`` are extra ``-c name=value`` server settings, e.g. ``{"cron.database_name": "other"}``
    (pg_cron stays in ``shared_preload_libraries`` whatever they say).
    """
    chosen = resolve_backend(backend, major)
    if chosen == "local":
        from taskdb.testing.local import LocalServer

        return LocalServer(major=major, settings=settings)
    if chosen == "container":
        from taskdb.testing.container import ContainerServer

        return ContainerServer(major=major, settings=settings)
    from taskdb.testing.url import UrlServer

    return UrlServer(major=major, settings=settings)


def _parse_targets(raw: str) -> list[Target]:
    targets: list[Target] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        backend, _, major = item.partition(":")
        backend = backend.strip().lower()
        if backend not in BACKENDS or (major and not major.strip().isdigit()):
            raise PostgresUnavailable(
                f"{TARGETS_ENV} has {item!r}. To fix this, write it as backend:major, e.g. "
                "local:15,container:15,container:17 (backends: " + ", ".join(BACKENDS) + ")"
            )
        target = Target(backend, int(major) if major.strip() else None)
        if target not in targets:
            targets.append(target)
    return targets


def available_targets() -> list[Target]:
    """Where tests can run here: each local major installed, each container image present.

    ``TASKDB_PG_TARGETS`` replaces the detection (then a listed target that cannot start is an error in
    the tests that use it, not a skip).
    """
    raw = os.environ.get(TARGETS_ENV, "").strip()
    if raw:
        return _parse_targets(raw)
    from taskdb.testing import container, local

    targets = [Target("local", major) for major in sorted(local.installed_majors())]
    targets += [Target("container", major or None) for major in sorted(container.available_images())]
    return targets
