"""Where the database is: URLs, libpq strings, PG* variables and services, the driver, redaction (no database
needed)."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from taskdb.config import normalize_url, parse_conninfo, redact, resolve_url
from taskdb.errors import ConfigError


def test_explicit_url_wins_then_taskdb_then_database_url() -> None:
    env = {"TASKDB_DATABASE_URL": "postgresql://a@h/taskdb", "DATABASE_URL": "postgresql://a@h/generic"}
    assert resolve_url("postgresql://a@h/explicit", env).endswith("/explicit")
    assert resolve_url(None, env).endswith("/taskdb")
    assert resolve_url(None, {"DATABASE_URL": "postgresql://a@h/generic"}).endswith("/generic")


def test_missing_url_is_one_clear_line() -> None:
    with pytest.raises(ConfigError, match="no database URL: pass -x url=") as error:
        resolve_url(None, {})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgres://u:p@h/db", "postgresql+psycopg://u:p@h/db"),  # Heroku-style scheme
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+pg8000://u@h/db", "postgresql+pg8000://u@h/db"),
        ("postgresql+psycopg://u@h/db?sslmode=require", "postgresql+psycopg://u@h/db?sslmode=require"),
    ],
)
def test_plain_urls_use_psycopg_and_pg8000_is_kept(raw: str, expected: str) -> None:
    assert normalize_url(raw) == expected


@pytest.mark.parametrize("raw", ["mysql://u@h/db", "postgresql+asyncpg://u@h/db", "not a url"])
def test_other_urls_are_refused_without_printing_the_password(raw: str) -> None:
    with pytest.raises(ConfigError):
        normalize_url(raw)


def test_a_percent_encoded_password_never_survives_redaction() -> None:
    url = "postgresql://app:p%40ss%3Aw%2Frd%25@db.internal:5432/prod"
    message = f"cannot connect to {url}: password authentication failed (password was p@ss:w/rd%)"
    cleaned = redact(message, url)
    assert "p%40ss" not in cleaned and "p@ss:w/rd%" not in cleaned
    assert "postgresql://app:***@db.internal:5432/prod" in cleaned
    with pytest.raises(ConfigError) as error:
        normalize_url("mysql://app:p%40ss@h/db")
    assert "p%40ss" not in str(error.value)


# -- libpq connection strings, PG* variables, services ------------------------------------------------------


def parts(url: str) -> tuple[str, str | None, str | None, str | None, int | None, str | None, dict[str, object]]:
    u = make_url(url)
    return u.drivername, u.username, u.password, u.host, u.port, u.database, dict(u.query)


def test_precedence_url_then_taskdb_then_database_url_then_pg_variables() -> None:
    pg = {"PGHOST": "pghost", "PGDATABASE": "pgdb"}
    assert parts(resolve_url("host=explicit", pg))[3] == "explicit"
    assert parts(resolve_url(None, pg | {"TASKDB_DATABASE_URL": "host=t", "DATABASE_URL": "host=d"}))[3] == "t"
    assert parts(resolve_url(None, pg | {"DATABASE_URL": "host=d"}))[3] == "d"
    assert parts(resolve_url(None, pg)) == ("postgresql+psycopg", None, None, "pghost", None, "pgdb", {})
    # an empty variable is unset (so that a caller can blank an inherited one)
    assert parts(resolve_url(None, pg | {"DATABASE_URL": "", "TASKDB_DATABASE_URL": ""}))[3] == "pghost"


def test_no_target_at_all_names_the_pg_variables_too() -> None:
    with pytest.raises(ConfigError) as error:
        resolve_url(None, {"PGHOST": "", "PGSSLMODE": "require"})  # PGSSLMODE says nothing of where
    assert str(error.value).startswith("no database URL:") and "PGHOST" in str(error.value)
    assert "PGSERVICE" in str(error.value) and "\n" not in str(error.value)


def test_conninfo_keywords_and_libpq_quoting() -> None:
    url = resolve_url(r"host=db port=5433 dbname=app user=me password='it\'s a \\ secret' sslmode=require", {})
    assert parts(url) == ("postgresql+psycopg", "me", "it's a \\ secret", "db", 5433, "app", {"sslmode": "require"})
    # spaces around =, an empty quoted value, a backslash outside quotes, tabs between pairs
    assert parts(resolve_url("host = db\tdbname=''  user=a\\ b", {}))[1:6] == ("a b", None, "db", None, None)
    assert parse_conninfo("options='-c statement_timeout=0'") == {"options": "-c statement_timeout=0"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("host=db dbname", 'missing "=" after "dbname"'),
        ("host=db password='open", 'unterminated quoted value of "password"'),
        ("host=db colour=blue", 'invalid connection option "colour"'),
        ("just words", "not a database URL or connection string"),
    ],
)
def test_a_broken_connection_string_is_one_line(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        resolve_url(raw, {})
    assert "open" not in str(error.value).replace("unterminated", "")  # the password is not echoed


def test_pg_variables_default_what_a_url_or_conninfo_leaves_out() -> None:
    env = {"PGHOST": "pghost", "PGPORT": "6000", "PGUSER": "pguser", "PGPASSWORD": "pgpw", "PGDATABASE": "pgdb"}
    assert parts(resolve_url("postgresql:///app", env)) == (
        "postgresql+psycopg",
        "pguser",
        "pgpw",
        "pghost",
        6000,
        "app",
        {},
    )
    assert parts(resolve_url("postgresql://u:p@h:1/d", env)) == ("postgresql+psycopg", "u", "p", "h", 1, "d", {})
    assert parts(resolve_url("dbname=other", env))[1:6] == ("pguser", "pgpw", "pghost", 6000, "other")
    # a host given in the URL's query is given: PGHOST does not override it
    assert parts(resolve_url("postgresql://u@/d?host=/run/pg", env))[3:] == (
        None,
        None,
        "d",
        {"host": "/run/pg", "port": "6000"},
    )


def test_a_url_query_dbname_stays_where_reset_sees_it() -> None:
    """libpq lets ?dbname= override the URL's path; taskdb leaves it in the query, so that `taskdb reset` can see
    the ambiguity and refuse it (and pg8000, which cannot take it, says where the name belongs)."""
    assert parts(resolve_url("postgresql://u@h/path?dbname=prod", {"PGDATABASE": "pgdb"}))[5:] == (
        "path",
        {"dbname": "prod"},
    )
    with pytest.raises(ConfigError, match="URL's path"):
        resolve_url("postgresql+pg8000://u@h/path?dbname=prod", {})


def test_driver_choice_taskdb_driver_and_a_named_driver_wins() -> None:
    pg8000 = {"TASKDB_DRIVER": "pg8000", "PGHOST": "db"}
    assert resolve_url(None, pg8000).startswith("postgresql+pg8000://")
    assert resolve_url("postgresql://u@h/d", pg8000).startswith("postgresql+pg8000://")
    assert resolve_url("host=h", pg8000).startswith("postgresql+pg8000://")
    assert resolve_url("postgresql+psycopg://u@h/d", pg8000).startswith("postgresql+psycopg://")
    assert resolve_url("postgresql+pg8000://u@h/d", {}).startswith("postgresql+pg8000://")
    with pytest.raises(ConfigError, match="TASKDB_DRIVER='asyncpg'"):
        resolve_url("host=h", {"TASKDB_DRIVER": "asyncpg"})


def test_unix_socket_hosts_for_both_drivers() -> None:
    env = {"PGHOST": "/var/run/postgresql", "PGPORT": "5433", "PGUSER": "me", "PGDATABASE": "app"}
    assert parts(resolve_url(None, env)) == (
        "postgresql+psycopg",
        "me",
        None,
        None,
        None,
        "app",
        {"host": "/var/run/postgresql", "port": "5433"},
    )
    assert parts(resolve_url(None, env | {"TASKDB_DRIVER": "pg8000"})) == (
        "postgresql+pg8000",
        "me",
        None,
        None,
        None,
        "app",
        {"unix_sock": "/var/run/postgresql/.s.PGSQL.5433"},
    )
    # resolving the answer again changes nothing (env.py resolves what the CLI hands it)
    for env_ in (env, env | {"TASKDB_DRIVER": "pg8000"}):
        once = resolve_url(None, env_)
        assert resolve_url(once, env_) == once
    # pg8000 without a user: the login name, as libpq
    assert make_url(resolve_url("host=/tmp", {"TASKDB_DRIVER": "pg8000"})).username == getpass.getuser()


def test_what_pg8000_cannot_do_is_refused_not_dropped() -> None:
    pg8000 = {"TASKDB_DRIVER": "pg8000"}
    with pytest.raises(ConfigError, match="one server"):
        resolve_url("host=a,b", pg8000)
    with pytest.raises(ConfigError, match="sslmode=require"):
        resolve_url("host=a sslmode=require", pg8000)
    with pytest.raises(ConfigError, match="target_session_attrs"):
        resolve_url("host=a target_session_attrs=read-write", pg8000)
    url = make_url(resolve_url("host=a connect_timeout=5 sslmode=prefer hostaddr=10.0.0.1", pg8000))
    assert (url.host, dict(url.query)) == ("10.0.0.1", {"timeout": "5"})


SERVICE_FILE = """\
# comment
[other]
host=wrong

[app]
host=svc-host
port = 7000
dbname=svc-db
user=svc-user
password=svc pw
sslmode=require
"""


def test_a_service_from_pgservicefile_defaults_before_the_pg_variables(tmp_path: Path) -> None:
    services = tmp_path / "services.conf"
    services.write_text(SERVICE_FILE)
    env = {"PGSERVICEFILE": str(services), "PGSERVICE": "app", "PGHOST": "pghost", "PGDATABASE": "pgdb"}
    # as libpq: the service wins over PG* variables, an explicit value over the service
    assert parts(resolve_url(None, env)) == (
        "postgresql+psycopg",
        "svc-user",
        "svc pw",
        "svc-host",
        7000,
        "svc-db",
        {"sslmode": "require"},
    )
    assert parts(resolve_url("dbname=mine", env))[5] == "mine"
    assert parts(resolve_url("service=app", {"PGSERVICEFILE": str(services)}))[3] == "svc-host"
    assert parts(resolve_url("postgresql:///x?service=app", {"PGSERVICEFILE": str(services)}))[3:6] == (
        "svc-host",
        7000,
        "x",
    )


def test_the_service_files_are_searched_as_libpq_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, sysconf = tmp_path / "home", tmp_path / "etc"
    home.mkdir()
    sysconf.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (sysconf / "pg_service.conf").write_text("[app]\nhost=system\n[sys-only]\nhost=sys-only\n")
    env = {"PGSYSCONFDIR": str(sysconf)}
    assert parts(resolve_url("service=app", env))[3] == "system"
    (home / ".pg_service.conf").write_text("[app]\nhost=home\n")
    assert parts(resolve_url("service=app", env))[3] == "home"  # the user's file first
    assert parts(resolve_url("service=sys-only", env))[3] == "sys-only"  # then the system's
    with pytest.raises(ConfigError, match=r"service 'nope'.*is not defined in") as error:
        resolve_url("service=nope", env)
    assert str(home / ".pg_service.conf") in str(error.value)
    (home / ".pg_service.conf").write_text("[app]\nhost\n")
    with pytest.raises(ConfigError, match=r"syntax error in the service file .*line 2"):
        resolve_url("service=app", env)


def test_redaction_hides_conninfo_passwords_and_pgpassword() -> None:
    assert redact("cannot use host=db password='a b\\' c' user=me", environ={}) == (
        "cannot use host=db password=*** user=me"
    )
    assert redact("x password=s3cret y", environ={}) == "x password=*** y"
    assert redact("postgresql://u@h/d?password=s3cret&x=1", environ={}) == "postgresql://u@h/d?password=***&x=1"
    assert redact("server said: s3cr3t-pw rejected", environ={"PGPASSWORD": "s3cr3t-pw"}) == (
        "server said: *** rejected"
    )
    # the password of a libpq string, wherever else it appears
    assert redact("auth failed for hunter2", "host=db password=hunter2", environ={}) == "auth failed for ***"
    # a password with spaces stays inside the URL taskdb builds, where the pattern finds it
    url = resolve_url("host=db user=me password='two words'", {})
    assert redact(f"cannot connect to {url}", environ={}) == "cannot connect to postgresql+psycopg://me:***@db"


def test_a_broken_string_error_never_shows_its_password() -> None:
    with pytest.raises(ConfigError) as error:
        resolve_url("password=hunter2 just", {})
    assert "hunter2" not in str(error.value)


def test_pgsslmode_that_needs_tls_is_refused_for_pg8000_as_in_the_string() -> None:
    """libpq (psycopg) reads PGSSLMODE itself; pg8000 does not, so a mode that needs TLS is refused, not lost."""
    for mode in ("require", "verify-ca", "verify-full"):
        with pytest.raises(ConfigError, match=f"sslmode={mode}"):
            resolve_url("host=db", {"TASKDB_DRIVER": "pg8000", "PGSSLMODE": mode})
    assert resolve_url("host=db", {"TASKDB_DRIVER": "pg8000", "PGSSLMODE": "prefer"}) == "postgresql+pg8000://" + (
        f"{getpass.getuser()}@db"
    )
    assert resolve_url("host=db", {"PGSSLMODE": "verify-full"}) == "postgresql+psycopg://db"


def test_sslpassword_is_redacted_too() -> None:
    assert redact("host=db sslpassword=keypass password=pw") == "host=db sslpassword=*** password=***"
    assert "keypass" not in redact("postgresql://db/app?sslpassword=keypass")
