"""URL discovery, driver normalisation and redaction (no database needed)."""

from __future__ import annotations

import pytest

from taskdb.config import normalize_url, redact, resolve_url
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
