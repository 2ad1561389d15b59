"""The ``url`` backend: an existing PostgreSQL server named by ``TASKDB_PG_URL`` (an admin URL).

Nothing is started or stopped: throwaway databases are created on that server and ``stop()`` drops the
ones this object created. pg_cron is whatever that server has; :attr:`cron_preloaded` tells.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import psycopg
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from taskdb.testing.base import LIVE_SERVERS, PostgresServer, PostgresUnavailable, scrub, suppress_all

URL_ENV = "TASKDB_PG_URL"


class UrlServer(PostgresServer):
    """A server someone else runs; we only add and remove databases on it."""

    backend = "url"

    def __init__(
        self, url: str | None = None, major: int | None = None, settings: Mapping[str, str] | None = None
    ) -> None:
        super().__init__()
        raw = url or os.environ.get(URL_ENV, "")
        if not raw:
            raise PostgresUnavailable(
                f"the url backend needs {URL_ENV} (checked the environment). To fix this, either: set "
                f"{URL_ENV}=postgresql://user:password@host:5432/postgres, or use TASKDB_PG_BACKEND=local "
                "or container"
            )
        try:
            parsed = make_url(raw)
        except ArgumentError:
            raise PostgresUnavailable(f"{URL_ENV} is not a database URL: {scrub(raw)!r}") from None
        # Never keep the raw text around: it holds the password unencoded.
        self._admin = parsed.set(drivername="postgresql")
        self.host = parsed.host or "localhost"
        self.port = int(parsed.port or 5432)
        self.user = parsed.username or os.environ.get("PGUSER", "postgres")
        self._password = parsed.password or ""
        self._admin_db = parsed.database or "postgres"
        if settings:
            # Server settings belong to whoever runs that server: say so rather than ignore them.
            raise PostgresUnavailable(
                f"the url backend cannot apply server settings ({', '.join(sorted(settings))}). To fix this, "
                "either: set them on that server, or use TASKDB_PG_BACKEND=local or container"
            )
        try:
            self.major = self._read_major()
        except psycopg.Error as exc:
            reason = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "", self._password)
            raise PostgresUnavailable(
                f"cannot connect to {URL_ENV} ({self._admin.render_as_string(hide_password=True)}): {reason}. "
                "To fix this, either: check that server and the URL, or use TASKDB_PG_BACKEND=local"
            ) from None
        if major is not None and major != self.major:
            raise PostgresUnavailable(
                f"{URL_ENV} points at PostgreSQL {self.major}, not {major}. To fix this, either: point it at "
                f"a PostgreSQL {major} server, or ask for major={self.major}"
            )
        LIVE_SERVERS.add(self)

    def url_object(self, dbname: str = "postgres", driver: str | None = None) -> URL:
        # Keep the host, port and query (sslmode, ...) of the admin URL; change only database and driver.
        return self._admin.set(drivername="postgresql" if driver is None else f"postgresql+{driver}", database=dbname)

    def connect_kwargs(self, dbname: str = "postgres") -> dict[str, Any]:
        kwargs = super().connect_kwargs(dbname)
        if not self._admin.password:
            kwargs.pop("password")  # let libpq use PGPASSWORD / ~/.pgpass
        kwargs.update({k: v if isinstance(v, str) else v[-1] for k, v in self._admin.query.items()})
        return kwargs

    def connect(self, dbname: str | None = None, autocommit: bool = True) -> psycopg.Connection[Any]:
        return super().connect(self._admin_db if dbname is None else dbname, autocommit)

    def _read_major(self) -> int:
        with psycopg.connect(**self.connect_kwargs(self._admin_db)) as conn:
            row = conn.execute("SHOW server_version_num").fetchone()
        return int(str(row[0]) if row else "0") // 10000

    def _stop(self) -> None:
        LIVE_SERVERS.discard(self)
        # stop() marks us stopped first; drop directly, not through drop_database()'s running check.
        self._stopped = False
        try:
            for name in self.created_databases:
                with suppress_all():
                    self.drop_database(name)
        finally:
            self._stopped = True
