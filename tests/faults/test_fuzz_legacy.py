"""Fuzzed legacy data (issue 6, item 4): hypothesis draws the ugliest ``tasks`` rows a legacy database may
hold, and every example runs ``upgrade head`` then ``downgrade base`` on a real PostgreSQL.

What is drawn (:func:`scenarios`): NULL in every nullable column; statuses and run types in any case and
spacing (``'queued'``, ``' QUEUED '``, ``'In progress'``, ``'gpu'``, ``' Local'``) and unknown ones, random
ASCII text among them; ``params`` that are no JSON object (arrays, strings, numbers, booleans, JSON null,
SQL NULL) or objects whose ``user_id`` / ``run_type`` / ``orchestrator_task_id_ref`` have the wrong type,
are not uuids, name missing tasks, the task itself, or close 2- and 3-cycles; ``dependant_on`` pointing
nowhere or at the task itself; ``created_at`` far in the past, in the future, or +-infinity; rows that
look like duplicates (the same values, another id); users and projects present or absent.

Four starting shapes: the incident's half-migrated table with text status; the same with an application
enum whose labels are odd spellings ('queued', ' QUEUED ', 'Pending', ...) and lack three canonical ones;
the legacy table without user_id / run_type; and a "loose" half-migrated table where every column but
id is nullable and project_id has no foreign key. The backfill window (1, 3 or 1000 ids) and the
driver (psycopg, pg8000) are drawn too.

Every example asserts: the upgrade never fails on data and leaves every constraint validated; each row
is healthy (an existing user, run_type cloud/local, a known status) or flagged with reasons from the
vocabulary and not Queued; statuses, owners and run types follow the README rules (an oracle written
here) and ``taskdb plan`` predicted each row; every column nobody logged a change for is identical;
every changed column has log entries whose first ``previous`` is the original value and last
``applied`` the new one (and each entry continues the one before); the claimable count equals what
claiming until nothing is left claims, and never a flagged row; ``queue_health`` and ``stale_queued_tasks``
read every row without failing; ``downgrade base`` gives back the original rows (same to_jsonb and md5
per row) and the original columns, constraints and indexes.

Bugs it found (each kept as an explicit @example): a NULL status on an otherwise healthy row was never
flagged (needs_work in sql/backfill.sql); a Queued task created at 'infinity' made queue_health fail on
PostgreSQL 15 ("cannot subtract infinite timestamps"), and with it ``taskdb doctor``.

Each example gets its own database, a ``CREATE DATABASE ... TEMPLATE`` copy of a prepared schema (~50 ms).
pg_cron is left out (``TASKDB_CRON=skip``): the jobs touch no rows, and this test is about data.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import uuid
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from string import Template
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.util import CommandError
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from taskdb import api, plan, seeds
from taskdb.db import create_engine
from tests.helpers import DRIVERS, HEAD, with_driver

pytestmark = pytest.mark.slow

# On a failure hypothesis imports libcst to suggest an @example patch, and libcst's DeprecationWarning then
# becomes an error (filterwarnings = error) that hides the failing example behind an INTERNALERROR.
with warnings.catch_warnings(), contextlib.suppress(ImportError):  # (libcst is optional)
    warnings.simplefilter("ignore", DeprecationWarning)
    import hypothesis.extra._patching  # noqa: F401

STATUSES = ("Queued", "In Progress", "Complete", "Failed", "Cancelled")
REASONS = {
    "missing_user_id",
    "unknown_user",
    "missing_run_type",
    "invalid_run_type",
    "missing_status",
    "invalid_status",
}
# What the README lets taskdb change in a task (updated_at only by the stale cleanup and the trigger).
TOUCHABLE = {"status", "user_id", "run_type", "error_message", "legacy_reason", "updated_at"}
TIMESTAMPS = {"created_at", "updated_at"}

# The application enum of the "enum" shape: odd spellings, no 'In Progress', 'Failed' or 'Cancelled'
# (0002 adds them); 'Queued' stays because the column's default names it.
ENUM_LABELS = (
    "queued",
    "Queued",
    " QUEUED ",
    "In progress",
    "in_progress",
    "Complete",
    "Pending",
    "canceled",
    "FAILED",
)

SHAPES = ("half_migrated_text", "half_migrated_enum", "legacy_text", "loose_text")
LOOSE_SQL = """
ALTER TABLE tasks ALTER COLUMN task_type DROP NOT NULL, ALTER COLUMN params DROP NOT NULL,
    ALTER COLUMN status DROP NOT NULL, ALTER COLUMN attempts DROP NOT NULL, ALTER COLUMN created_at DROP NOT NULL;
ALTER TABLE tasks DROP CONSTRAINT tasks_project_id_fkey;
"""
COLUMN_TYPES = {
    "id": "uuid",
    "task_type": "text",
    "params": "jsonb",
    "attempts": "integer",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
    "error_message": "text",
    "project_id": "uuid",
    "dependant_on": "uuid",
    "user_id": "uuid",
    "run_type": "text",
    "worker_id": "text",
    "output_location": "text",
}


class SqlNull:
    """``params`` as SQL NULL (None stands for JSON null there)."""

    def __repr__(self) -> str:
        return "SQL_NULL"


SQL_NULL = SqlNull()


@dataclass
class Scenario:
    shape: str
    users: list[tuple[str, int]] = field(default_factory=list)  # (id, credits)
    projects: list[tuple[str, str]] = field(default_factory=list)  # (id, owner)
    tasks: list[dict[str, Any]] = field(default_factory=list)  # column -> value; params: JSON value or SQL_NULL
    driver: str = "psycopg"
    batch_size: int = 1000


# --- the oracle: the README's normalisation rules, for ASCII input -----------------------------------------

_PG_SPACE = " \t\n\r\f\v"  # [[:space:]] for ASCII (Python's \s would also take \x1c-\x1f)


def canonical_status(value: str | None) -> str | None:
    if value is None:
        return None
    key = re.sub(r"[ \t\n\r\f\v_-]+", "", value.lower())
    return {
        "queued": "Queued",
        "inprogress": "In Progress",
        "complete": "Complete",
        "failed": "Failed",
        "cancelled": "Cancelled",
        "canceled": "Cancelled",
    }.get(key)


def canonical_run_type(value: str | None) -> str | None:
    if value is None:
        return None
    return {"cloud": "cloud", "gpu": "cloud", "local": "local"}.get(value.strip(_PG_SPACE).lower())


# --- strategies ---------------------------------------------------------------------------------------------

ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("\t\n\r\f\v"), max_size=12)
STATUS_SPELLINGS = st.sampled_from(
    [
        "Queued",
        "queued",
        " QUEUED ",
        "Queued\t",
        "In Progress",
        "In progress",
        "in_progress",
        "IN-PROGRESS",
        "in  progress",
        "Complete",
        "complete ",
        "Failed",
        "FAILED",
        "Cancelled",
        "canceled",
        " Canceled",
        # unknown ones
        "Pending",
        "pending",
        "Running",
        "queud",
        "",
        "  ",
        "null",
        "Qu\u0435ued",  # a Cyrillic e
        "Done",
        "Cancelled!",
        "0",
    ]
)
RUN_TYPE_SPELLINGS = st.sampled_from(
    [
        "cloud",
        "local",
        "gpu",
        "GPU",
        " Local",
        "Cloud ",
        "LOCAL",
        "\tgpu\n",
        " gpu ",
        # unknown or missing ones
        "",
        " ",
        "api",
        "g p u",
        "local_gpu",
        "cpu",
        "Cloud-GPU",
        "null",
        "ローカル",
    ]
)
JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8),  # jsonb cannot hold \u0000
)


def uuid_texts(value: str) -> st.SearchStrategy[Any]:
    """``value`` as params may spell it: plain, upper case, without dashes, in braces, padded, or wrapped."""
    u = uuid.UUID(value)
    return st.sampled_from([str(u), str(u).upper(), u.hex, "{" + str(u) + "}", " " + str(u), [str(u)], {"id": str(u)}])


NOT_A_UUID = st.one_of(
    st.sampled_from(["not-a-uuid", "", "12345", "00000000-0000-0000-0000", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"]),
    JSON_SCALAR,
)


@st.composite
def references(draw: st.DrawFn, own: str, tasks: list[str], missing: st.SearchStrategy[str]) -> str | None:
    """A uuid column's value: NULL, another task, the task itself, or an id nothing has."""
    return draw(st.one_of(st.none(), st.sampled_from(tasks), st.just(own), missing))


@st.composite
def params_values(draw: st.DrawFn, own: str, tasks: list[str], users: list[str], shape: str) -> Any:
    missing = st.uuids().map(str)
    kind = draw(
        st.sampled_from(["object", "object", "object", "array", "string", "number", "bool", "null", "sql_null"])
    )
    if kind == "array":
        return draw(st.lists(JSON_SCALAR, max_size=3))
    if kind == "string":
        return draw(st.one_of(ASCII, st.sampled_from(tasks + users).flatmap(uuid_texts)))
    if kind == "number":
        return draw(st.integers() | st.floats(-1e9, 1e9, allow_nan=False, allow_infinity=False))
    if kind == "bool":
        return draw(st.booleans())
    if kind == "null" or (kind == "sql_null" and shape != "loose_text"):
        return None
    if kind == "sql_null":
        return SQL_NULL
    obj: dict[str, Any] = {}
    user_choice = st.one_of(
        st.sampled_from(users).flatmap(uuid_texts) if users else st.nothing(),
        missing,
        NOT_A_UUID,
        st.sampled_from(tasks),
    )
    if draw(st.booleans()):
        obj["user_id"] = draw(user_choice)
    if draw(st.booleans()):
        obj["run_type"] = draw(
            st.one_of(RUN_TYPE_SPELLINGS, ASCII, JSON_SCALAR, st.lists(RUN_TYPE_SPELLINGS, max_size=2))
        )
    if draw(st.booleans()):
        # a parent: another task (a cycle when it points back), itself, a task nobody has, no uuid at all
        target = draw(st.one_of(st.sampled_from(tasks), st.just(own), missing))
        obj["orchestrator_task_id_ref"] = draw(st.one_of(uuid_texts(target), NOT_A_UUID))
    if draw(st.booleans()):  # owner-looking values one level down, which no rule reads
        obj["orchestrator_details"] = {"user_id": draw(user_choice), "run_type": draw(RUN_TYPE_SPELLINGS)}
    if draw(st.booleans()):
        obj[draw(st.sampled_from(["segment_index", "prompt", "", "user_id "]))] = draw(JSON_SCALAR)
    return obj


def created_at_values(loose: bool) -> st.SearchStrategy[str | None]:
    now = datetime.now(UTC)
    offsets = st.sampled_from(
        [
            timedelta(days=-65),
            timedelta(days=-8, microseconds=123),
            timedelta(days=-3),
            timedelta(hours=-1),
            timedelta(0),
            timedelta(days=1),
            timedelta(days=3650),
        ]
    )
    values = st.one_of(offsets.map(lambda d: (now + d).isoformat()), st.sampled_from(["infinity", "-infinity"]))
    return values | st.none() if loose else values


@st.composite
def task_rows(
    draw: st.DrawFn, shape: str, own: str, tasks: list[str], users: list[str], projects: list[str]
) -> dict[str, Any]:
    loose = shape == "loose_text"
    missing = st.uuids().map(str)

    def nullable(strategy: st.SearchStrategy[Any], may_be_null: bool = True) -> Any:
        return draw(st.none() | strategy) if may_be_null else draw(strategy)

    if shape == "half_migrated_enum":
        status = draw(st.sampled_from(ENUM_LABELS))
    else:
        status = nullable(STATUS_SPELLINGS | ASCII, loose)
    row: dict[str, Any] = {
        "id": own,
        "task_type": nullable(st.sampled_from(["travel_segment", "travel_orchestrator", "", "image_edit"]), loose),
        "params": draw(params_values(own, tasks, users, shape)),
        "status": status,
        "attempts": nullable(st.integers(0, 5), loose),
        "created_at": draw(created_at_values(loose)),
        "updated_at": nullable(created_at_values(False)),
        "error_message": nullable(st.sampled_from(["", "boom", "Cancelled by hand"]) | ASCII),
        # project_id has a foreign key except in the loose shape
        "project_id": nullable(st.sampled_from(projects) if projects else st.nothing())
        if not loose
        else draw(references(own, projects or [own], missing)),
        "dependant_on": draw(references(own, tasks, missing)),
        "worker_id": nullable(st.sampled_from(["gpu-worker-1", ""])),
        "output_location": nullable(ASCII),
    }
    if shape != "legacy_text":
        row["user_id"] = draw(
            st.one_of(st.none(), st.sampled_from(users) if users else st.nothing(), missing, st.sampled_from(tasks))
        )
        row["run_type"] = nullable(RUN_TYPE_SPELLINGS | ASCII)
    return row


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    shape = draw(st.sampled_from(SHAPES))
    user_ids = draw(st.lists(st.uuids().map(str), max_size=3, unique=True))
    users = [(u, draw(st.sampled_from([0, 1, 100]))) for u in user_ids]
    project_ids = draw(st.lists(st.uuids().map(str), max_size=2, unique=True)) if users else []
    projects = [(p, draw(st.sampled_from(user_ids))) for p in project_ids]
    n = draw(st.integers(1, 9))
    ids = draw(st.lists(st.uuids().map(str), min_size=n, max_size=n, unique=True))
    tasks: list[dict[str, Any]] = []
    for own in ids:
        if tasks and draw(st.integers(0, 4)) == 0:  # a duplicate-looking row: everything the same but the id
            tasks.append(tasks[draw(st.integers(0, len(tasks) - 1))] | {"id": own})
        else:
            tasks.append(draw(task_rows(shape, own, ids, user_ids, project_ids)))
    if draw(st.integers(0, 7)) == 7:  # attempts < 0: the documented refusal (README "Constraints")
        bad = draw(st.integers(0, len(tasks) - 1))
        tasks[bad] = tasks[bad] | {"attempts": -1}
    return Scenario(
        shape,
        users,
        projects,
        tasks,
        driver=draw(st.sampled_from(DRIVERS)),
        batch_size=draw(st.sampled_from([1, 3, 1000])),
    )


# --- databases ------------------------------------------------------------------------------------------------


def _schema_sql(status_type: str, status_enum: str, user_columns: bool) -> str:
    return Template(files(seeds.__name__).joinpath("schema.sql").read_text(encoding="utf-8")).substitute(
        status_type=status_type,
        status_enum=status_enum,
        user_columns="user_id uuid,\n    run_type text," if user_columns else "",
    )


SHAPE_SQL = {
    "half_migrated_text": _schema_sql("text", "", True),
    "half_migrated_enum": _schema_sql(
        "task_status",
        "CREATE TYPE task_status AS ENUM (" + ", ".join(f"'{label}'" for label in ENUM_LABELS) + ");",
        True,
    ),
    "legacy_text": _schema_sql("text", "", False),
    "loose_text": _schema_sql("text", "", True) + LOOSE_SQL,
}


@pytest.fixture(scope="module")
def templates(taskdb_pg_server) -> Iterator[dict[str, str]]:
    """One prepared database per shape (the application's schema, no rows), copied for every example."""
    made: dict[str, str] = {}
    try:
        for shape, script in SHAPE_SQL.items():
            made[shape] = taskdb_pg_server.create_database()
            engine = sa.create_engine(with_driver(taskdb_pg_server.url(made[shape]), "psycopg"), poolclass=sa.NullPool)
            try:
                with engine.begin() as conn:
                    conn.exec_driver_sql(script)
            finally:
                engine.dispose()  # a template must have no sessions
        yield made
    finally:
        for name in made.values():
            taskdb_pg_server.drop_database(name)


@pytest.fixture(scope="module")
def no_cron() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TASKDB_CRON", "skip")
        yield


def insert(conn: sa.Connection, scenario: Scenario, status_type: str) -> None:
    for user, credits in scenario.users:
        conn.execute(
            sa.text("INSERT INTO users (id, credits) VALUES (CAST(:id AS uuid), :c)"), {"id": user, "c": credits}
        )
    for project, owner in scenario.projects:
        conn.execute(
            sa.text("INSERT INTO projects (id, user_id) VALUES (CAST(:id AS uuid), CAST(:u AS uuid))"),
            {"id": project, "u": owner},
        )
    for task in scenario.tasks:
        values = dict(task)
        params = values.pop("params")
        values["params"] = None if params is SQL_NULL else json.dumps(params)
        names = list(values)
        types = COLUMN_TYPES | {"status": status_type}
        conn.execute(
            sa.text(
                f"INSERT INTO tasks ({', '.join(names)}) VALUES "
                f"({', '.join(f'CAST(:{n} AS {types[n]})' for n in names)})"
            ),
            values,
        )


def rows_by_id(conn: sa.Connection, sql: str) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in (dict(m) for m in conn.execute(sa.text(sql)).mappings())}


def snapshot(conn: sa.Connection) -> dict[str, dict[str, Any]]:
    """Every row: its columns as JSON (to_jsonb) and an md5 of its text form."""
    return {
        k: {"row": v["row"], "md5": v["md5"]}
        for k, v in rows_by_id(
            conn, "SELECT id::text AS id, to_jsonb(t) AS row, md5(t::text) AS md5 FROM tasks t"
        ).items()
    }


def catalog(conn: sa.Connection) -> dict[str, Any]:
    """What a downgrade must give back: tables, columns (type, nullability, default), constraints, indexes."""

    def q(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in conn.execute(sa.text(sql))]

    # taskdb_owned_objects may stay, holding only the record of the group roles and enum labels this
    # database's upgrade created: neither is ever dropped (README "Roles", "Downgrades"); asserted in the test.
    return {
        "relations": q(
            "SELECT c.relname, c.relkind FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace "
            "AND c.relname NOT LIKE 'taskdb_alembic_version%' AND c.relname NOT LIKE 'taskdb_owned_objects%' "
            "ORDER BY 1"
        ),
        "columns": q(
            "SELECT table_name, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = 'public' "
            "AND table_name NOT IN ('taskdb_alembic_version', 'taskdb_owned_objects') ORDER BY 1, 2"
        ),
        "constraints": q(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace AND conrelid <> 0 "
            "AND conrelid::regclass::text NOT IN ('taskdb_alembic_version', 'taskdb_owned_objects') ORDER BY 1, 2"
        ),
        "indexes": q(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
            "AND tablename NOT IN ('taskdb_alembic_version', 'taskdb_owned_objects') ORDER BY 1"
        ),
        "functions": q("SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1"),
    }


def predict(conn: sa.Connection) -> dict[str, dict[str, Any]]:
    """``taskdb plan``'s per-row prediction (plan.predict_rows), only the columns compared: its other columns
    include created_at, which a Python driver cannot load when it is -infinity."""
    sql = "SELECT id::text AS id, final_status, user_id::text AS user_id, run_type, legacy_reason FROM ({}) p"
    result = conn.execute(sa.text(sql.format(plan.render(conn, "predict"))), {"queued_ttl": plan.queued_ttl(conn)})
    return {r["id"]: dict(r) for r in result.mappings()}


def enum_labels(conn: sa.Connection) -> list[str]:
    return list(
        conn.execute(
            sa.text(
                "SELECT e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid "
                "WHERE t.typname = 'task_status' ORDER BY e.enumsortorder"
            )
        ).scalars()
    )


def norm(column: str, value: Any) -> Any:
    """One spelling per value: timestamps as datetimes (the log and the row may render them in different
    sessions), uuids in lower case."""
    if value is None:
        return None
    if column in TIMESTAMPS and value not in ("infinity", "-infinity"):
        return datetime.fromisoformat(value)
    if column in {"user_id", "project_id", "dependant_on", "id"}:
        return str(value).lower()
    return value


# --- the test ------------------------------------------------------------------------------------------------

A, B, C, D = (f"00000000-0000-4000-8000-00000000000{i}" for i in range(1, 5))
U1, U2 = "00000000-0000-4000-8000-0000000000a1", "00000000-0000-4000-8000-0000000000a2"
P1 = "00000000-0000-4000-8000-0000000000b1"
NOW = datetime.now(UTC)
OLD, FRESH, FUTURE = ((NOW + d).isoformat() for d in (timedelta(days=-65), timedelta(hours=-1), timedelta(days=30)))


def legacy(task: str, **values: Any) -> dict[str, Any]:
    """A task row of the half-migrated shape: NULL everywhere a column may be NULL, unless given."""
    return {
        "id": task,
        "task_type": "travel_segment",
        "params": {},
        "status": "Queued",
        "attempts": 0,
        "created_at": FRESH,
        "updated_at": None,
        "error_message": None,
        "project_id": None,
        "dependant_on": None,
        "worker_id": None,
        "output_location": None,
        "user_id": None,
        "run_type": None,
    } | values


def ref(task: str, **extra: Any) -> dict[str, Any]:
    return {"orchestrator_task_id_ref": task, **extra}


NASTY = [
    # a 2-cycle of orchestrator references whose members could be healthy from params, plus a self-reference
    Scenario(
        "half_migrated_text",
        users=[(U1, 100)],
        tasks=[
            legacy(A, params=ref(B, user_id=U1, run_type="gpu")),
            legacy(B, params=ref(A)),
            legacy(C, params=ref(C), status=" QUEUED "),
        ],
        batch_size=1,
    ),
    # a 3-cycle with a healthy child hanging off it, dependant_on a task nobody has, a future created_at
    Scenario(
        "half_migrated_text",
        users=[(U1, 100)],
        tasks=[
            legacy(A, params=ref(B)),
            legacy(B, params=ref(C)),
            legacy(C, params=ref(A.upper())),
            legacy(D, params=ref(A), user_id=U1, run_type=" Local", dependant_on=U2, created_at=FUTURE),
        ],
    ),
    # unknown statuses on a parent and a child, the child owned through the parent; old Queued rows for the cleanup
    Scenario(
        "half_migrated_text",
        users=[(U1, 100), (U2, 0)],
        projects=[(P1, U2)],
        tasks=[
            legacy(A, status="Pending", user_id=U1, run_type="Cloud ", created_at=OLD),
            legacy(B, status="in progress", params=ref(A), created_at=OLD),
            legacy(C, status="queued", project_id=P1, run_type="gpu", created_at=OLD, dependant_on=A),
            legacy(D, status="queued", params=ref(C), created_at=FRESH, user_id=U1, run_type="local"),
        ],
        driver="pg8000",
        batch_size=1,
    ),
    # Queued rows created at +-infinity (a sentinel some applications write): the oldest Queued one left after the
    # cleanup is at infinity
    Scenario(
        "half_migrated_text",
        users=[(U1, 100)],
        tasks=[
            legacy(A, user_id=U1, run_type="cloud", created_at="infinity"),
            legacy(B, user_id=U1, run_type="gpu", created_at="-infinity", params=ref(A)),
            legacy(
                C, user_id=U1, run_type="local", created_at=(NOW + timedelta(days=3650)).isoformat(), status="Complete"
            ),
        ],
    ),
    # params of every non-object kind, and SQL NULL everywhere the loose table allows it
    Scenario(
        "loose_text",
        users=[(U1, 1)],
        tasks=[
            legacy(
                A,
                params=SQL_NULL,
                status=None,
                task_type=None,
                attempts=None,
                created_at=None,
                user_id=U1,
                run_type="gpu",
            ),
            legacy(B, params=[U1, "gpu"], user_id=U1, run_type="local", project_id=U2),
            legacy(C, params="gpu", status="Complete "),
            legacy(D, params=None, status=None, run_type="api", user_id=U2),
        ],
        batch_size=3,
    ),
    # an application enum with odd labels: a parent with an unknown one, duplicates of a Queued child
    Scenario(
        "half_migrated_enum",
        users=[(U1, 100)],
        tasks=[
            legacy(A, status="Pending", user_id=U1, run_type="GPU"),
            legacy(B, status=" QUEUED ", params=ref(A)),
            legacy(C, status=" QUEUED ", params=ref(A)),
            legacy(D, status="canceled", params={"user_id": {"id": U1}, "run_type": ["gpu"]}),
        ],
    ),
    # the legacy shape: owner and run type only from params, a project, or a parent
    Scenario(
        "legacy_text",
        users=[(U1, 100)],
        projects=[(P1, U1)],
        tasks=[
            {
                k: v
                for k, v in legacy(A, params={"user_id": U1.upper().replace("-", ""), "run_type": " GPU "}).items()
                if k not in ("user_id", "run_type")
            },
            {
                k: v
                for k, v in legacy(B, params=ref(A), project_id=P1, created_at="-infinity").items()
                if k not in ("user_id", "run_type")
            },
            {
                k: v
                for k, v in legacy(C, params={"user_id": 7, "run_type": None}, status="Failed").items()
                if k not in ("user_id", "run_type")
            },
        ],
        driver="pg8000",
    ),
    # Regression (bug 1): a NULL status on a row whose user and run type are fine was never flagged: NULL is
    # not distinct from its NULL canonical form, so needs_work skipped the row and it kept status NULL.
    Scenario(
        "loose_text",
        users=[(U1, 0)],
        tasks=[legacy(A, status=None, user_id=U1, run_type="cloud", task_type=None, attempts=None)],
    ),
    # Regression (bug 3): a row with attempts < 0 stops 0004 at VALIDATE (the documented refusal), leaving its
    # CHECKs NOT VALID at revision 0003; downgrade base then failed: a NOT VALID CHECK still checks UPDATEs, so
    # restoring ' QUEUED ' (and -1) was refused, and no row could be given back.
    Scenario(
        "half_migrated_text",
        users=[(U1, 100)],
        tasks=[legacy(A, status=" QUEUED ", attempts=-1), legacy(B, user_id=U1, run_type="GPU", status="queued")],
        batch_size=1,
    ),
]


@settings(
    max_examples=45,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios())
@example(scenario=NASTY[0])
@example(scenario=NASTY[1])
@example(scenario=NASTY[2])
@example(scenario=NASTY[3])
@example(scenario=NASTY[4])
@example(scenario=NASTY[5])
@example(scenario=NASTY[6])
@example(scenario=NASTY[7])
@example(scenario=NASTY[8])
def test_fuzzed_legacy_rows_upgrade_and_downgrade(taskdb_pg_server, templates, no_cron, scenario: Scenario) -> None:
    note(f"scenario: {scenario!r}")
    name = taskdb_pg_server.create_database(template=templates[scenario.shape])
    previous_batch = os.environ.get("TASKDB_BACKFILL_BATCH_SIZE")
    os.environ["TASKDB_BACKFILL_BATCH_SIZE"] = str(scenario.batch_size)
    url = taskdb_pg_server.url(name)
    engine = create_engine(with_driver(url, "psycopg"))
    try:
        check(engine, with_driver(url, scenario.driver), scenario)
    finally:
        engine.dispose()
        if previous_batch is None:
            os.environ.pop("TASKDB_BACKFILL_BATCH_SIZE", None)
        else:
            os.environ["TASKDB_BACKFILL_BATCH_SIZE"] = previous_batch
        taskdb_pg_server.drop_database(name)


def check(engine: sa.Engine, url: str, scenario: Scenario) -> None:
    status_type = "task_status" if scenario.shape == "half_migrated_enum" else "text"
    with engine.begin() as conn:
        insert(conn, scenario, status_type)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        original, catalog_before, labels_before = snapshot(conn), catalog(conn), enum_labels(conn)
        predicted = predict(conn)
        original_columns = set(next(iter(original.values()))["row"])

    refused = [t["id"] for t in scenario.tasks if (t.get("attempts") or 0) < 0]
    if refused:
        # attempts < 0 is no legacy shape taskdb repairs (it invents no values): VALIDATE stops 0004 naming the
        # constraint and the rows, nothing lost, and downgrade base still restores everything (bug 3).
        with pytest.raises(CommandError, match="tasks_attempts_nonnegative") as stopped:
            api.upgrade(url)
        assert all(task in str(stopped.value) for task in refused), stopped.value
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM taskdb_alembic_version")).scalar() == "0003_backfill"
            assert set(snapshot(conn)) == set(original), "a row was lost or invented"
    else:
        check_upgraded(engine, url, original, predicted)

    # 4. downgrade base gives back the original rows, columns and constraints (enum labels stay: README)
    api.downgrade(url, "base")
    with engine.connect() as conn:
        assert snapshot(conn) == original
        catalog_after = catalog(conn)
        for key, items in catalog_before.items():
            gone, extra = set(items) - set(catalog_after[key]), set(catalog_after[key]) - set(items)
            assert not gone and not extra, f"{key} after downgrade base: lost {sorted(gone)}, left {sorted(extra)}"
        if conn.execute(sa.text("SELECT to_regclass('taskdb_owned_objects') IS NOT NULL")).scalar():
            kinds = conn.execute(sa.text("SELECT DISTINCT kind FROM taskdb_owned_objects")).scalars()
            assert set(kinds) <= {"role", "enum_label"}, "downgrade base left a record of more than roles and labels"
        labels = enum_labels(conn)
        assert labels[: len(labels_before)] == labels_before and set(labels) - set(labels_before) <= set(STATUSES)
        assert set(next(iter(snapshot(conn).values()))["row"]) == original_columns


def check_upgraded(
    engine: sa.Engine, url: str, original: dict[str, dict[str, Any]], predicted: dict[str, dict[str, Any]]
) -> None:
    # 1. the upgrade never fails on data, and every constraint ends validated
    api.upgrade(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM taskdb_alembic_version")).scalar() == HEAD
        not_valid = conn.execute(
            sa.text("SELECT conname FROM pg_constraint WHERE conrelid = 'tasks'::regclass AND NOT convalidated")
        ).scalars()
        assert list(not_valid) == []
        after = snapshot(conn)
        users = {str(u) for u in conn.execute(sa.text("SELECT id FROM users")).scalars()}
        log = [
            dict(r)
            for r in conn.execute(
                sa.text(
                    "SELECT id, task_id::text AS task_id, action, actor, previous, applied "
                    "FROM task_hygiene_log ORDER BY id"
                )
            ).mappings()
        ]
    assert set(after) == set(original), "a row was lost or invented"

    entries: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in log:
        entries[entry["task_id"]].append(entry)
    for task, before in original.items():
        check_row(task, before["row"], after[task]["row"], entries[task], users, predicted[task])

    # 2. the count never counts a flagged row, and claiming until nothing is left claims exactly the count
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM taskdb_ready_tasks r JOIN tasks t USING (id) "
                    "WHERE t.legacy_reason IS NOT NULL"
                )
            ).scalar()
            == 0
        )
        for run_type in ("cloud", "local"):
            count = conn.execute(sa.text("SELECT claimable_task_count(:r)"), {"r": run_type}).scalar()
            claimed: list[str] = []
            while (
                got := conn.execute(
                    sa.text("SELECT id::text FROM claim_next_task('fuzz', :r)"), {"r": run_type}
                ).scalar()
            ) is not None:
                claimed.append(got)
            assert len(claimed) == count == len(set(claimed)), run_type
            for task in claimed:
                assert after[task]["row"]["legacy_reason"] is None and after[task]["row"]["run_type"] == run_type
            conn.rollback()

    # 3. the monitoring views read every row without failing (to_jsonb: a driver cannot load an infinite
    # timestamp), and agree with the rows
    with engine.connect() as conn:
        health = conn.execute(sa.text("SELECT to_jsonb(h) FROM queue_health h")).scalar()
        stale = conn.execute(sa.text("SELECT coalesce(jsonb_agg(to_jsonb(s)), '[]') FROM stale_queued_tasks s"))
        stale_ids = {row["id"] for row in stale.scalar()}
    rows = [r["row"] for r in after.values()]
    assert health["queued_total"] == sum(r["status"] == "Queued" for r in rows)
    assert health["flagged_count"] == sum(r["legacy_reason"] is not None for r in rows)
    assert stale_ids <= {r["id"] for r in rows if r["status"] == "Queued"}


def check_row(
    task: str,
    before: dict[str, Any],
    after: dict[str, Any],
    entries: list[dict[str, Any]],
    users: set[str],
    predicted: dict[str, Any],
) -> None:
    """One row after the upgrade: healthy or flagged, by the rules, and every change logged."""
    status, reason = after["status"], after["legacy_reason"]
    where = f"task {task}: {before} -> {after}; log {entries}"

    # healthy or flagged, never a flagged row Queued
    assert status in STATUSES, where
    if reason is None:
        assert after["user_id"] in users and after["run_type"] in ("cloud", "local"), where
    else:
        reasons = reason.split(",")
        assert set(reasons) <= REASONS and len(reasons) == len(set(reasons)), where
        assert status != "Queued", where

    # the README's rules, independently of the engine
    was = canonical_status(before["status"])
    cancelled_later = any(e["action"] == "cancel" for e in entries)  # the stale cleanup or tasks_cancel_children
    if was is None:
        assert reason and ("missing_status" if before["status"] is None else "invalid_status") in reason, where
        assert status == "Cancelled", where
    elif reason is not None and was == "Queued":
        assert status == "Cancelled", where
    elif cancelled_later:
        assert was == "Queued" and status == "Cancelled", where
    else:
        assert status == was, where
    own_user = before.get("user_id")
    if own_user in users:
        assert after["user_id"] == own_user, where
    if reason is not None and "unknown_user" in reason:
        assert own_user is not None and own_user not in users and after["user_id"] is None, where
    own_run_type = canonical_run_type(before.get("run_type"))
    if own_run_type:
        assert after["run_type"] == own_run_type, where
    elif reason is not None and "invalid_run_type" in reason:
        assert after["run_type"] == before.get("run_type"), "an invalid run type is kept for a human to read"
    # taskdb plan said so
    said = (predicted["final_status"], predicted["user_id"], predicted["run_type"], predicted["legacy_reason"])
    assert said == (status, after["user_id"], after["run_type"], reason), f"plan predicted {said}; {where}"

    # untouched columns identical; every changed column logged, from its original to its final value
    logged = {column for e in entries for column in (*e["previous"], *e["applied"])}
    assert logged <= TOUCHABLE, where
    for column in set(before) | set(after):
        old, new = norm(column, before.get(column)), norm(column, after.get(column))
        if column not in logged:
            assert old == new, f"{column} changed without a log entry; {where}"
            continue
        chain = [e for e in entries if column in e["previous"] or column in e["applied"]]
        assert all(column in e["previous"] and column in e["applied"] for e in chain), where
        assert norm(column, chain[0]["previous"][column]) == old, f"{column}: first previous is not the original"
        assert norm(column, chain[-1]["applied"][column]) == new, f"{column}: last applied is not the value"
        for earlier, later in itertools.pairwise(chain):
            assert norm(column, later["previous"][column]) == norm(column, earlier["applied"][column]), where
    if reason is not None:
        assert any(e["action"] == "flag" and e["applied"].get("legacy_reason") == reason for e in entries), where
