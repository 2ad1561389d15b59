"""taskdb.driver's client-side literals (what pg8000 sends behind a transaction pooler) mean exactly what the
bound parameter means: each value goes through the server both ways and must come back equal."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskdb.db import autocommit_connection, scalar
from taskdb.driver import literal
from tests.helpers import Db, with_driver

VALUES = [
    "plain",
    "it's",
    "back\\slash",
    "new\nline",
    "emoji 🚀",
    "%s %% %(x)s",
    "$1 $$ $tag$",
    "",
    None,
    True,
    False,
    0,
    -7,
    2**62,
    1.5,
    float("inf"),
    Decimal("12.340"),
    b"\x00\xffbytes",
    dt.datetime(2026, 12, 3, 23, 45, 1, 123456, tzinfo=dt.UTC),
    dt.date(2026, 1, 2),
    dt.timedelta(days=7, seconds=3),
    uuid.UUID("7e57d004-2b97-4e22-9f3a-5f1a2b3c4d5e"),
    ["a,b", 'q"uote', "back\\", None, "{brace}"],
]


def sql_type(value: object) -> str:
    """The type the value has where taskdb uses it (a column or a CAST): literals are typed by context."""
    for kind, name in (
        (bool, "boolean"),
        (int, "bigint"),
        (float, "float8"),
        (Decimal, "numeric"),
        (bytes, "bytea"),
        (dt.datetime, "timestamptz"),
        (dt.date, "date"),
        (dt.timedelta, "interval"),
        (uuid.UUID, "uuid"),
        (list, "text[]"),
    ):
        if isinstance(value, kind):
            return name
    return "text"


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_literal_is_what_the_bound_parameter_is(db: Db, value: object) -> None:
    kind = sql_type(value)
    with autocommit_connection(with_driver(db.url, "psycopg")) as conn:
        bound = scalar(conn, f"SELECT CAST(:v AS {kind})", {"v": value})
        inlined = scalar(conn, f"SELECT CAST({literal(value)} AS {kind})")
    assert inlined == bound and (value is None or inlined is not None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")))
def test_any_text_round_trips_through_pg8000(db: Db, text: str) -> None:
    with autocommit_connection(with_driver(db.url, "pg8000")) as conn:
        assert scalar(conn, "SELECT CAST(:v AS text)", {"v": text}) == text
        assert scalar(conn, "SELECT CAST(:v AS text[])", {"v": [text, text]}) == [text, text]
