"""Where the database is: URL or libpq connection string, libpq's PG* defaults, the driver, redaction.

Order: an explicit target (``alembic -x url=...`` or ``taskdb --url``), then ``TASKDB_DATABASE_URL``, then
``DATABASE_URL``, each a URL (``postgresql://...``) or a libpq keyword/value string (``host=db dbname=app``);
when none is set, libpq's environment (``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGDATABASE``, ``PGPASSWORD``,
``PGSERVICE``). Inside any of them, what is left out comes, as libpq does it, from the service (``service=`` or
``PGSERVICE``, looked up in pg_service.conf), then from those variables. The answer is always a SQLAlchemy URL
with its driver named, worked out here rather than by libpq, so that pg8000 (which knows nothing of libpq)
reaches the same server as psycopg: ``postgresql+psycopg://`` (the default) or ``postgresql+pg8000://``
(``TASKDB_DRIVER=pg8000``; a driver named in the URL wins). Passwords are never printed: use :func:`redact` on
anything that may contain one.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from taskdb.errors import ConfigError

URL_ENV_VARS = ("TASKDB_DATABASE_URL", "DATABASE_URL")
DRIVER_ENV = "TASKDB_DRIVER"
SUPPORTED_DRIVERS = ("psycopg", "pg8000")
REDACTED = "***"

# libpq's environment variables taskdb reads itself, by the keyword each one defaults (libpq reads more of
# them, e.g. PGSSLMODE: psycopg still sees those, pg8000 does not).
PG_ENV = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE", "password": "PGPASSWORD"}
PG_ENV_VARS = (*PG_ENV.values(), "PGSERVICE")

# The keywords libpq accepts in a connection string or a service (PostgreSQL 17, plus 18's servicefile).
LIBPQ_KEYWORDS = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "require_auth", "channel_binding",
    "connect_timeout", "client_encoding", "options", "application_name", "fallback_application_name",
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
    "replication", "gssencmode", "sslmode", "sslnegotiation", "sslcompression", "sslcert", "sslkey",
    "sslpassword", "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer",
    "ssl_min_protocol_version", "ssl_max_protocol_version", "krbsrvname", "gsslib", "gssdelegation",
    "service", "servicefile", "target_session_attrs", "load_balance_hosts",
})  # fmt: skip

# A URL's query: a key given once, or a tuple for a repeated key (?host=a&host=b)
UrlQuery = dict[str, str | tuple[str, ...]]
# What a plain hostname looks like (anything else, a socket directory or a list of hosts, goes in ?host=)
PLAIN_HOST = re.compile(r"[A-Za-z0-9._-]+")
# pg8000 connects without TLS; these sslmodes allow that, the others would silently lose what they ask for
PG8000_SSLMODES = frozenset({"disable", "allow", "prefer"})
# keywords pg8000 has no use for and that change nothing about where it connects
PG8000_IGNORED = frozenset({"fallback_application_name", "sslmode"})
SCHEME = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://")


def resolve_url(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The database to use, as a SQLAlchemy URL with an explicit driver (see the module's docstring)."""
    env = os.environ if environ is None else environ
    raw = explicit or next((env[name] for name in URL_ENV_VARS if env.get(name)), None)
    if raw:
        params, extra, driver = _parse_target(raw)
    elif any(env.get(name) for name in PG_ENV_VARS):
        params, extra, driver = {}, {}, None
    else:
        raise ConfigError(
            "no database URL: pass -x url=postgresql://... (alembic) or --url (taskdb), or set "
            "TASKDB_DATABASE_URL or DATABASE_URL (a URL or a libpq string like 'host=db dbname=app'), or "
            "libpq's PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD or PGSERVICE"
        )
    driver = driver or _driver_from_env(env)
    _add_defaults(params, extra, env)
    if driver == "pg8000" and "sslmode" not in params and "sslmode" not in extra and env.get("PGSSLMODE"):
        # libpq (psycopg) reads PGSSLMODE itself; pg8000 would connect without TLS whatever it asks for
        params["sslmode"] = env["PGSSLMODE"]
    return _build_url(params, extra, driver)


# -- reading what the user wrote ----------------------------------------------------------------------------


def _parse_target(raw: str) -> tuple[dict[str, str], UrlQuery, str | None]:
    """``raw`` as libpq keywords, query parameters kept for the driver as they are, and the driver it names."""
    if SCHEME.match(raw):
        return _url_params(raw)
    if "=" in raw:
        return parse_conninfo(raw), {}, None
    raise ConfigError(
        f"not a database URL or connection string: {redact(raw)!r} "
        "(expected postgresql://... or libpq keywords, e.g. 'host=db dbname=app')"
    )


def _url_params(raw: str) -> tuple[dict[str, str], UrlQuery, str | None]:
    named = parse_url(raw.strip()).drivername.partition("+")[2]  # a driver the URL names wins
    url = parse_url(normalize_url(raw.strip()))  # refuses what is not PostgreSQL with a supported driver
    params = {
        key: str(value)
        for key, value in (
            ("host", url.host),
            ("port", url.port),
            ("user", url.username),
            ("password", url.password),
            ("dbname", url.database),
        )
        if value not in (None, "")
    }
    extra: UrlQuery = {}
    for key, value in url.query.items():
        if key in LIBPQ_KEYWORDS and key != "dbname" and isinstance(value, str):  # as libpq: given
            params[key] = value
        else:  # the driver's own (pg8000's unix_sock), SQLAlchemy's multihost form (?host=a:1&host=b:2), and a
            # ?dbname= that overrides the path, left where `taskdb reset` sees it and refuses the ambiguity
            extra[key] = value
    return params, extra, url.drivername.partition("+")[2] if named else None


def parse_conninfo(raw: str) -> dict[str, str]:
    """A libpq keyword/value string (``host=db port=5432 password='it''s'``) as a dict, by libpq's rules:
    values in single quotes may hold spaces, a backslash escapes the next character (in quotes or not),
    spaces around ``=`` are allowed, unknown keywords are an error."""
    params: dict[str, str] = {}
    i, n = 0, len(raw)
    while True:
        while i < n and raw[i].isspace():
            i += 1
        if i >= n:
            return params
        start = i
        while i < n and raw[i] != "=" and not raw[i].isspace():
            i += 1
        key = raw[start:i]
        while i < n and raw[i].isspace():
            i += 1
        if i >= n or raw[i] != "=":
            raise ConfigError(f'missing "=" after "{key}" in the connection string (libpq keyword=value pairs)')
        i += 1
        while i < n and raw[i].isspace():
            i += 1
        value: list[str] = []
        if i < n and raw[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise ConfigError(f'unterminated quoted value of "{key}" in the connection string')
                if raw[i] == "\\" and i + 1 < n:
                    value.append(raw[i + 1])
                    i += 2
                elif raw[i] == "'":
                    i += 1
                    break
                else:
                    value.append(raw[i])
                    i += 1
        else:
            while i < n and not raw[i].isspace():
                if raw[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(raw[i])
                i += 1
        if key not in LIBPQ_KEYWORDS:
            raise ConfigError(f'invalid connection option "{key}" in the connection string')
        params[key] = "".join(value)


# -- what is left out: the service, then libpq's environment ------------------------------------------------


def _add_defaults(params: dict[str, str], extra: Mapping[str, object], env: Mapping[str, str]) -> None:
    """Fill, in place, what ``params`` leaves out as libpq does: from the service, then from PG* variables
    (an empty value counts as unset). A host the driver was given its own way (``unix_sock``, SQLAlchemy's
    ``?host=a:1&host=b:2``) counts as given."""
    given = {key for key, value in params.items() if value} | set(extra)
    if "unix_sock" in extra:
        given |= {"host", "port"}
    service = params.pop("service", "") or env.get("PGSERVICE", "")
    if service:
        for key, value in service_params(service, env).items():
            if key not in given and value:
                params[key] = value
                given.add(key)
    for key, var in PG_ENV.items():
        if key not in given and env.get(var):
            params[key] = env[var]
    for key in [key for key, value in params.items() if not value]:
        del params[key]


def service_files(env: Mapping[str, str]) -> list[Path]:
    """Where libpq looks for a service, in order: PGSERVICEFILE, else ~/.pg_service.conf; then
    PGSYSCONFDIR/pg_service.conf (taskdb knows no compiled-in directory: set PGSYSCONFDIR for a system file)."""
    files = [Path(env["PGSERVICEFILE"]) if env.get("PGSERVICEFILE") else Path.home() / ".pg_service.conf"]
    if env.get("PGSYSCONFDIR"):
        files.append(Path(env["PGSYSCONFDIR"]) / "pg_service.conf")
    return files


def service_params(name: str, env: Mapping[str, str]) -> dict[str, str]:
    """The keywords of service ``name``: from the first file (see :func:`service_files`) that defines it."""
    files = service_files(env)
    for path in files:
        if path.is_file():
            found = _read_service(path, name)
            if found is not None:
                return found
    raise ConfigError(
        f"service {name!r} (PGSERVICE or service=) is not defined in {' or '.join(str(p) for p in files)}; "
        "set PGSERVICEFILE (or PGSYSCONFDIR) to the pg_service.conf that defines it"
    )


def _read_service(path: Path, name: str) -> dict[str, str] | None:
    """Service ``name`` of one pg_service.conf (``[name]`` then ``keyword=value`` lines, ``#`` comments; values
    are taken as written, without quoting), or None when the file does not define it."""
    found: dict[str, str] | None = None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the service file {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if found is not None:
                return found  # the next section: the service is complete
            if line.endswith("]") and line[1:-1].strip() == name:
                found = {}
            continue
        if found is None:
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or key not in LIBPQ_KEYWORDS or key == "service":
            raise ConfigError(
                f"syntax error in the service file {path}, line {number}: expected keyword=value "
                "with a libpq keyword (a service cannot name another service)"
            )
        found.setdefault(key, value.strip())  # the first one counts
    return found


# -- the URL for the driver ---------------------------------------------------------------------------------


def _driver_from_env(env: Mapping[str, str]) -> str:
    chosen = env.get(DRIVER_ENV, "").strip().lower() or "psycopg"
    if chosen in ("psycopg3", "psycopg2"):
        chosen = "psycopg"
    if chosen not in SUPPORTED_DRIVERS:
        raise ConfigError(f"{DRIVER_ENV}={chosen!r}: use psycopg (the default) or pg8000")
    return chosen


def _build_url(params: dict[str, str], extra: UrlQuery, driver: str) -> str:
    build = _pg8000_url if driver == "pg8000" else _psycopg_url
    rendered = build(dict(params), dict(extra)).render_as_string(hide_password=False)
    # SQLAlchemy leaves spaces in the user, password and database as they are: encoded, the URL stays one word
    # (and redact's pattern finds its password)
    head, sep, query = rendered.partition("?")
    return head.replace(" ", "%20") + sep + query


def _psycopg_url(params: dict[str, str], query: UrlQuery) -> URL:
    """Everything libpq knows goes to psycopg as it is: user, password and database in the URL, a plain host
    and port there too, a socket directory or a host list in ``?host=`` (with ``?port=``), the rest as query
    keywords."""
    host, port = params.pop("host", None), params.pop("port", None)
    if host is not None and not PLAIN_HOST.fullmatch(host):
        query["host"] = host
        if port is not None:
            query["port"] = port
        host = port = None
    user, password, dbname = params.pop("user", None), params.pop("password", None), params.pop("dbname", None)
    query.update(params)
    return URL.create(
        "postgresql+psycopg",
        username=user,
        password=password,
        host=host,
        port=_port(port) if port is not None else None,
        database=dbname,
        query=query,
    )


def _pg8000_url(params: dict[str, str], query: UrlQuery) -> URL:
    """pg8000 takes one host or one Unix socket (``unix_sock=<dir>/.s.PGSQL.<port>``, as libpq names it), a
    timeout, an application_name; no user means the login name, as libpq; the libpq options it cannot honour
    are refused rather than dropped."""
    hostaddr = params.pop("hostaddr", None)
    host = hostaddr or params.pop("host", None)  # libpq connects to hostaddr without looking host up
    params.pop("host", None)
    port = params.pop("port", None)
    for value, what in ((host, "host"), (port, "port")):
        if value is not None and "," in value:
            raise ConfigError(
                f"pg8000 connects to one server, and the {what} is a list ({value}); "
                "use psycopg (the default driver: unset TASKDB_DRIVER) for several hosts"
            )
    if host is not None and host.startswith("/"):
        query["unix_sock"] = f"{host.rstrip('/')}/.s.PGSQL.{_port(port or '5432')}"
        host = port = None
    elif host is not None and host.startswith("@"):
        raise ConfigError(
            f"pg8000 cannot connect to the abstract Unix socket {host}; use psycopg (the default "
            "driver: unset TASKDB_DRIVER)"
        )
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in PG8000_SSLMODES:
        raise ConfigError(
            f"pg8000 cannot be given sslmode={sslmode} by taskdb (it would connect without TLS); "
            "use psycopg (the default driver: unset TASKDB_DRIVER)"
        )
    if "connect_timeout" in params:
        query["timeout"] = params.pop("connect_timeout")
    if "application_name" in params:
        query["application_name"] = params.pop("application_name")
    user, password, dbname = params.pop("user", None), params.pop("password", None), params.pop("dbname", None)
    if "dbname" in query or "database" in query:
        raise ConfigError("pg8000 takes the database from the URL's path only: put it there instead of ?dbname=")
    unknown = sorted(set(params) - PG8000_IGNORED)
    if unknown:
        raise ConfigError(
            f"pg8000 cannot use the libpq option(s) {', '.join(unknown)}; use psycopg (the default "
            "driver: unset TASKDB_DRIVER and use postgresql://, not postgresql+pg8000://)"
        )
    return URL.create(
        "postgresql+pg8000",
        username=user or getpass.getuser(),
        password=password,
        host=host,
        port=_port(port) if port is not None else None,
        database=dbname,
        query=query,
    )


def _port(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"the port {value!r} is not a number") from None


# -- URLs as they are ---------------------------------------------------------------------------------------


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
            f"unsupported driver {driver!r} in {redact(raw)!r}: use postgresql:// (psycopg 3) or postgresql+pg8000://"
        )
    return url.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)


def driver_of(url: str) -> str:
    return parse_url(url).drivername.partition("+")[2] or "psycopg"


# -- never a password ---------------------------------------------------------------------------------------

# password=... in a libpq string (quoted or not) or in a URL's query
CONNINFO_PASSWORD = re.compile(r"(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|(?:[^\s'&\\]|\\.)+)")


def redact(text: str, url: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Replace every password in ``text`` with ``***``.

    Passwords inside URLs and ``password=`` in libpq strings are found by pattern; the password of ``url``
    (a URL or a libpq string) and ``PGPASSWORD``'s value are removed wherever else they appear (raw and
    percent-encoded), e.g. in a driver's message.
    """
    env = os.environ if environ is None else environ
    text = re.sub(r"(://[^:/@\s]*:)([^@\s]*)(@)", rf"\g<1>{REDACTED}\g<3>", text)
    text = CONNINFO_PASSWORD.sub(rf"\g<1>{REDACTED}", text)
    passwords = {env.get("PGPASSWORD", ""), _password_of(url) if url else ""}
    for password in filter(None, passwords):
        for form in {password, quote(password, safe=""), quote(password), unquote(password)}:
            if form:
                text = text.replace(form, REDACTED)
    return text


def _password_of(target: str) -> str | None:
    try:
        if SCHEME.match(target):
            return parse_url(target).password
        return parse_conninfo(target).get("password")
    except ConfigError:
        return None
