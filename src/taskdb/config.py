"""Where the database is: URL discovery, driver normalisation and redaction.

Order: an explicit URL (``alembic -x url=...`` or ``taskdb --url``), then ``TASKDB_DATABASE_URL``, then
``DATABASE_URL``. A plain ``postgresql://`` URL (as providers hand it out) uses psycopg 3;
``postgresql+pg8000://`` uses pg8000. Passwords are never printed: use :func:`redact` on anything
that may contain one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import quote, unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from taskdb.errors import ConfigError

URL_ENV_VARS = ("TASKDB_DATABASE_URL", "DATABASE_URL")
SUPPORTED_DRIVERS = ("psycopg", "pg8000")
REDACTED = "***"


def resolve_url(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The database URL to use, normalised to a SQLAlchemy URL with an explicit driver."""
    env = os.environ if environ is None else environ
    raw = explicit or next((env[name] for name in URL_ENV_VARS if env.get(name)), None)
    if not raw:
        raise ConfigError(
            "no database URL: pass -x url=postgresql://... (alembic) or --url (taskdb), "
            "or set TASKDB_DATABASE_URL or DATABASE_URL"
        )
    return normalize_url(raw)


def parse_url(raw: str) -> URL:
    try:
        return make_url(raw)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigError(f"not a database URL: {redact(raw)!r}") from None


def normalize_url(raw: str) -> str:
    """``postgres://`` / ``postgresql://`` -> ``postgresql+psycopg://``; pg8000 and psycopg are kept."""
    url = parse_url(raw)
    backend, _, driver = url.drivername.partition("+")
    if backend not in ("postgres", "postgresql"):
        raise ConfigError(f"not a PostgreSQL URL: {redact(raw)!r} (expected postgresql://...)")
    if driver in ("", "psycopg2", "psycopg3"):
        driver = "psycopg"  # psycopg 3 is the default driver; psycopg2 is not a dependency
    if driver not in SUPPORTED_DRIVERS:
        raise ConfigError(
            f"unsupported driver {driver!r} in {redact(raw)!r}: use postgresql:// (psycopg 3) "
            "or postgresql+pg8000://"
        )
    return url.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)


def driver_of(url: str) -> str:
    return parse_url(url).drivername.partition("+")[2] or "psycopg"


def redact(text: str, url: str | None = None) -> str:
    """Replace every password in ``text`` with ``***``.

    Passwords inside URLs in the text are found by pattern; when the connection URL is known, its
    password (raw and percent-encoded) is removed wherever else it appears, e.g. in a driver's message.
    """
    text = re.sub(r"(://[^:/@\s]*:)([^@\s]*)(@)", rf"\g<1>{REDACTED}\g<3>", text)
    if url:
        try:
            password = parse_url(url).password
        except ConfigError:
            password = None
        if password:
            for form in {password, quote(password, safe=""), quote(password), unquote(password)}:
                if form:
                    text = text.replace(form, REDACTED)
    return text
