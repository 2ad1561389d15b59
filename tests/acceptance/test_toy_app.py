"""taskdb beside an application's own Alembic history: the toy application in tests/toyapp.

The toy application has its own alembic.ini, env.py (with taskdb.autogenerate's filters), model and revisions:
toy_0001 (users, projects, tasks in the old shape), toy_0002 (tasks.user_id and run_type added nullable: the
incident's half-migration) and toy_0003 (this release: tasks.priority). Every command runs as a deploy runs it, as
a subprocess: ``python -m alembic -c tests/toyapp/alembic.ini ...`` and ``python -m taskdb.cli upgrade``, both
reading DATABASE_URL.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import make_url

from taskdb import seeds
from taskdb.autogenerate import TASKDB_OBJECTS, combine, include_name, include_object
from tests.helpers import DRIVERS, HEAD, Db, with_driver
from tests.helpers_catalog import catalog

ROOT = Path(__file__).resolve().parents[2]
TOYAPP = ROOT / "tests" / "toyapp"
URL_VARS = ("TASKDB_DATABASE_URL", "DATABASE_URL", "TASKDB_CRON")
APP_HEAD = "toy_0003"
REFUSAL = (
    "FAILED: taskdb revision 0001_baseline runs only through `taskdb upgrade` (or alembic with taskdb's own "
    "alembic.ini), not in another Alembic environment: remove taskdb's versions directory from version_locations"
)


def run(*args: str, url: str, ini: Path = TOYAPP / "alembic.ini", **env: str) -> subprocess.CompletedProcess[str]:
    """``alembic ...`` (the toy application's) or ``taskdb ...``, as a subprocess with DATABASE_URL=url.

    pg_cron is skipped (TASKDB_CRON=skip): two databases of one cluster would get jobs of different names, and
    nothing here is about the job."""
    command = ["taskdb.cli", *args[1:]] if args[0] == "taskdb" else ["alembic", "-c", str(ini), *args]
    base = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    return subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        env=base | {"DATABASE_URL": url, "TASKDB_CRON": "skip"} | env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def engine(url: str, **kwargs: Any) -> sa.Engine:
    return sa.create_engine(with_driver(url, "psycopg"), poolclass=sa.NullPool, **kwargs)


def app_database(
    url: str, revision: str = "toy_0002", app_url: str | None = None, *, engine_options: dict[str, Any] | None = None
) -> None:
    """The application's database before the release: its revisions up to ``revision``, then its rows (the
    incident's on toy_0002, the old shape's on toy_0001)."""
    ok(run("upgrade", revision, url=app_url or with_driver(url, "psycopg")))
    loader = engine(url, **(engine_options or {}))
    try:
        with loader.begin() as conn:
            if revision == "toy_0001":
                seeds.load_legacy_rows(conn)
            else:
                seeds.load_incident(conn)
    finally:
        loader.dispose()


def rows(db: Db, settled_after: datetime | None = None) -> dict[str, list[str]]:
    """Every row of every table in the schema, as sorted JSON text; with ``settled_after``, a timestamp from the
    deploy (cleanup's updated_at, the log's acted_at, ...) reads ``<deploy>``."""
    tables = [r["tablename"] for r in db.rows("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
    return {
        table: sorted(
            settle(r["row"], settled_after) for r in db.rows(f'SELECT to_jsonb(t)::text AS row FROM "{table}" t')
        )
        for table in sorted(tables)
    }


TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d(?::?\d\d)?)?")


def settle(text: str, after: datetime | None) -> str:
    if after is None:
        return text

    def replace(match: re.Match[str]) -> str:
        stamp = datetime.fromisoformat(match.group(0))
        return "<deploy>" if stamp.tzinfo is not None and stamp >= after else match.group(0)

    return TIMESTAMP.sub(replace, text)


def without_roles(found: dict[str, list[str]]) -> dict[str, list[str]]:
    """Roles are the cluster's: the first database upgraded on a server creates (and records) them, not the next."""
    owned = [r for r in found["taskdb_owned_objects"] if '"kind": "role"' not in r]
    return found | {"taskdb_owned_objects": owned}


def state(db: Db) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The schema (catalog) and every row of every table, taskdb_alembic_version and alembic_version included."""
    return catalog(db), rows(db)


def versions(db: Db) -> tuple[list[str], list[str]]:
    """(the application's alembic_version, taskdb_alembic_version), as rows."""

    def read(table: str) -> list[str]:
        if db.scalar(f"SELECT to_regclass('{table}') IS NULL"):
            return []
        return [r["version_num"] for r in db.rows(f"SELECT version_num FROM {table} ORDER BY 1")]

    return read("alembic_version"), read("taskdb_alembic_version")


@pytest.fixture
def make_db(taskdb_pg_server: Any, taskdb_pg_database_factory: Callable[..., str]) -> Iterator[Callable[..., Db]]:
    """``make_db(template=None) -> Db``: a fresh database (a copy of ``template``'s), dropped after the test."""
    engines: list[sa.Engine] = []

    def make(template: Db | None = None) -> Db:
        name = taskdb_pg_database_factory(template=None if template is None else make_url(template.url).database)
        url = taskdb_pg_server.url(name)
        engines.append(engine(url))
        return Db(url, engines[-1])

    yield make
    for made in engines:
        made.dispose()


# (a) + (b) + (d): the release deploys in either order, on either driver, to the same end.


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_release_deploys_in_either_order_to_the_same_schema_and_rows(
    make_db: Callable[..., Db], driver: str
) -> None:
    app_first = make_db()
    app_database(app_first.url, app_url=with_driver(app_first.url, driver))
    taskdb_first = make_db(template=app_first)  # the same rows, created_at to the microsecond
    deploy_started = app_first.scalar("SELECT clock_timestamp()")

    url = with_driver(app_first.url, driver)
    ok(run("upgrade", "head", url=url))
    ok(run("taskdb", "upgrade", url=url))

    url = with_driver(taskdb_first.url, driver)
    ok(run("taskdb", "upgrade", url=url))
    ok(run("upgrade", "head", url=url))

    assert catalog(app_first) == catalog(taskdb_first)
    assert without_roles(rows(app_first, deploy_started)) == without_roles(rows(taskdb_first, deploy_started))
    for db in (app_first, taskdb_first):
        assert versions(db) == ([APP_HEAD], [HEAD])  # each history in its own table, only its own
        assert "legacy_reason" in db.columns() and "priority" in db.columns()
        assert db.scalar("SELECT count(*) FROM tasks WHERE legacy_reason IS NOT NULL") > 0  # the repair ran
        # (b) the application's autogenerate, with taskdb.autogenerate's filters, finds nothing to do
        check = ok(run("check", url=with_driver(db.url, driver)))
        assert "No new upgrade operations detected." in check.stdout


# (b) the negative control: without the filters the same check reports taskdb's objects.


def test_without_the_filters_autogenerate_reports_taskdb_objects(make_db: Callable[..., Db]) -> None:
    db = make_db()
    app_database(db.url)
    url = with_driver(db.url, "psycopg")
    ok(run("upgrade", "head", url=url))
    ok(run("taskdb", "upgrade", url=url))

    assert "No new upgrade operations detected." in ok(run("check", url=url)).stdout
    unfiltered = run("-x", "taskdb_filter=off", "check", url=url)
    assert unfiltered.returncode != 0
    report = unfiltered.stdout + unfiltered.stderr
    assert "New upgrade operations detected" in report
    for table in TASKDB_OBJECTS.tables:
        assert f"('remove_table', Table('{table}'" in report
    for index in TASKDB_OBJECTS.indexes - {"task_hygiene_log_task_id_idx", "task_hygiene_log_actor_task_id_idx"}:
        assert f"('remove_index', Index('{index}'" in report
    assert "name='tasks_user_id_fkey'" in report
    assert "('remove_column', None, 'tasks', Column('legacy_reason'" in report
    for table in ("users", "projects", "tasks"):  # the application's own tables and columns are not reported
        assert f"('remove_table', Table('{table}'" not in report
    for column in ("user_id", "run_type", "priority"):
        assert f"('remove_column', None, 'tasks', Column('{column}'" not in report


def test_a_model_may_declare_what_taskdb_also_has(make_db: Callable[..., Db]) -> None:
    """A model with the foreign key on user_id (unnamed: Alembic matches it to taskdb's by what it references),
    legacy_reason and an index under taskdb's name: nothing to do, with the filters."""
    db = make_db()
    app_database(db.url)
    url = with_driver(db.url, "psycopg")
    ok(run("upgrade", "head", url=url))
    ok(run("taskdb", "upgrade", url=url))

    from tests.toyapp import models

    def diffs(declare: Callable[[sa.Table], object]) -> list[Any]:
        metadata = sa.MetaData()
        for table in models.Base.metadata.sorted_tables:
            table.to_metadata(metadata)
        declare(metadata.tables["tasks"])
        with db.engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"include_object": include_object, "include_name": include_name}
            )
            return compare_metadata(context, metadata)

    assert diffs(lambda tasks: None) == []
    assert diffs(lambda tasks: tasks.append_constraint(sa.ForeignKeyConstraint(["user_id"], ["users.id"]))) == []
    assert diffs(lambda tasks: tasks.append_column(sa.Column("legacy_reason", sa.Text))) == []
    assert diffs(lambda tasks: sa.Index("tasks_user_id_idx", tasks.c.user_id)) == []
    # the control: a foreign key taskdb has not got is the application's, and proposed
    added = diffs(lambda tasks: tasks.append_constraint(sa.ForeignKeyConstraint(["dependant_on"], ["tasks.id"])))
    assert [(d[0], d[1].column_keys) for d in added] == [("add_fk", ["dependant_on"])]


# (c) the application's own change to tasks still comes through, and only it.


@pytest.mark.parametrize("driver", DRIVERS)
def test_autogenerate_proposes_the_apps_new_column_and_nothing_of_taskdb(
    make_db: Callable[..., Db], driver: str, tmp_path: Path
) -> None:
    # The developer's checkout before the release revision exists: the model already has priority.
    app = tmp_path / "toyapp"
    shutil.copytree(TOYAPP, app, ignore=shutil.ignore_patterns("__pycache__"))
    (app / "versions" / f"{APP_HEAD}.py").unlink()
    db = make_db()
    url = with_driver(db.url, driver)
    app_database(db.url, app_url=url)
    ok(run("taskdb", "upgrade", url=url))

    ok(
        run(
            "revision",
            "--autogenerate",
            "-m",
            "tasks priority",
            "--rev-id",
            "toy_0003_new",
            url=url,
            ini=app / "alembic.ini",
        )
    )
    generated = ast.parse((app / "versions" / "toy_0003_new.py").read_text())
    operations = {  # each function's statements, its docstring left out
        node.name: [
            ast.unparse(s) for s in node.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
        ]
        for node in generated.body
        if isinstance(node, ast.FunctionDef)
    }
    assert operations["upgrade"] == [
        "op.add_column('tasks', sa.Column('priority', sa.Integer(), server_default='0', nullable=False))"
    ]
    assert operations["downgrade"] == ["op.drop_column('tasks', 'priority')"]


# The one list of taskdb's names cannot drift: what an upgrade creates is exactly what the filters hide.

CATALOG_OBJECTS = """
    WITH s AS (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
    SELECT CASE WHEN c.relkind IN ('v', 'm') THEN 'view' ELSE 'table' END AS kind, NULL AS on_table,
           c.relname AS name
    FROM pg_class c JOIN s ON c.relnamespace = s.oid WHERE c.relkind IN ('r', 'p', 'v', 'm')
    UNION ALL
    SELECT 'index', t.relname, i.relname
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
    JOIN s ON t.relnamespace = s.oid
    UNION ALL  -- a sequence goes with the table whose identity or serial column owns it
    SELECT 'sequence', t.relname, q.relname
    FROM pg_class q JOIN s ON q.relnamespace = s.oid
    LEFT JOIN pg_depend d ON d.objid = q.oid AND d.classid = 'pg_class'::regclass
                         AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
    LEFT JOIN pg_class t ON t.oid = d.refobjid
    WHERE q.relkind = 'S'
    UNION ALL  -- NOT NULL constraints (contype n, PostgreSQL 18) are a column's nullability to Alembic
    SELECT CASE k.contype WHEN 'f' THEN 'foreign_key_constraint' WHEN 'u' THEN 'unique_constraint'
                          WHEN 'p' THEN 'primary_key_constraint' ELSE 'check_constraint' END, t.relname, k.conname
    FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid JOIN s ON t.relnamespace = s.oid
    WHERE k.contype <> 'n'
    UNION ALL
    SELECT 'column', t.relname, a.attname
    FROM pg_attribute a JOIN pg_class t ON t.oid = a.attrelid JOIN s ON t.relnamespace = s.oid
    WHERE t.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'trigger', t.relname, g.tgname
    FROM pg_trigger g JOIN pg_class t ON t.oid = g.tgrelid JOIN s ON t.relnamespace = s.oid
    WHERE NOT g.tgisinternal
    UNION ALL
    SELECT 'function', NULL, p.proname FROM pg_proc p JOIN s ON p.pronamespace = s.oid
"""
# The kinds Alembic filters (the rest never reaches autogenerate: views, functions, triggers, CHECKs).
FILTERED = {"table", "column", "index", "unique_constraint", "foreign_key_constraint"}


def hidden(kind: str, table: str | None, name: str) -> bool:
    """Whether the filters keep this catalog object out of the application's autogenerate: as Alembic runs them,
    include_name on the reflected name, then include_object on the reflected object the model has no match for."""
    if kind in FILTERED:
        parents = {"schema_name": None} if table is None else {"table_name": table, "schema_name": None}
        reflected = SimpleNamespace(name=name, table=SimpleNamespace(name=table))
        return not (include_name(name, kind, parents) and include_object(reflected, name, kind, True, None))
    if kind == "view":
        return name in TASKDB_OBJECTS.views
    if kind == "sequence":
        return table is not None and TASKDB_OBJECTS.covers("table", table)
    if kind == "trigger":
        return name in TASKDB_OBJECTS.triggers
    if kind == "function":
        return name in TASKDB_OBJECTS.functions
    return TASKDB_OBJECTS.covers(kind, name, table)


@pytest.mark.parametrize("revision", ["toy_0001", "toy_0002"])
def test_every_object_taskdb_creates_is_hidden_and_every_hidden_name_exists(
    make_db: Callable[..., Db], revision: str
) -> None:
    db = make_db()
    app_database(db.url, revision)  # toy_0001: the old shape (no user_id, run_type); toy_0002: the incident's
    before = {tuple(r.values()) for r in db.rows(CATALOG_OBJECTS)}
    ok(run("upgrade", revision, url=with_driver(db.url, "psycopg")))  # the application at its own revision
    ok(run("taskdb", "upgrade", url=with_driver(db.url, "psycopg")))
    after = {tuple(r.values()) for r in db.rows(CATALOG_OBJECTS)}

    created = after - before
    assert created and not before - after
    not_hidden = {obj for obj in created if not hidden(*obj)}
    # On the old shape taskdb adds user_id and run_type, but they are the application's (it writes them, and its
    # model must declare them): autogenerate proposes dropping them until it does. Nothing else may show.
    assert not_hidden == (
        {("column", "tasks", "user_id"), ("column", "tasks", "run_type")} if revision == "toy_0001" else set()
    )

    def names(*kinds: str) -> set[str]:
        return {name for kind, _, name in after if kind in kinds}

    assert TASKDB_OBJECTS.tables <= names("table")
    assert TASKDB_OBJECTS.views <= names("view")
    assert TASKDB_OBJECTS.indexes <= names("index")
    assert TASKDB_OBJECTS.constraints <= names(
        "foreign_key_constraint", "unique_constraint", "primary_key_constraint", "check_constraint"
    )
    assert TASKDB_OBJECTS.triggers <= names("trigger")
    assert TASKDB_OBJECTS.functions <= names("function")
    for table, columns in TASKDB_OBJECTS.columns.items():
        assert {("column", table, c) for c in columns} <= created


# The queue in a schema of its own (TASKDB_SCHEMA), the application reflecting every schema.


@pytest.mark.parametrize("db", ["app"], indirect=True)
def test_the_filters_cope_with_the_queue_in_its_own_schema(db: Db) -> None:
    # The toy application lives in schema app (search_path in its URL), beside another application's
    # public.tasks (the db fixture's); taskdb is told the schema by TASKDB_SCHEMA (set by the fixture).
    in_app = make_url(with_driver(db.url, "psycopg")).update_query_dict({"options": "-csearch_path=app"})
    app_url = in_app.render_as_string(hide_password=False)
    app_database(db.url, app_url=app_url, engine_options={"connect_args": {"options": "-csearch_path=app"}})
    ok(run("upgrade", "head", url=app_url))
    ok(run("taskdb", "upgrade", url=with_driver(db.url, "psycopg")))
    assert db.scalar("SELECT count(*) FROM app.task_hygiene_log") > 0
    assert "No new upgrade operations detected." in ok(run("check", url=app_url)).stdout

    # An application whose model names the schema and which reflects every schema (include_schemas), keeping
    # to its own with a filter of its own, combined with taskdb's.
    from tests.toyapp import models

    metadata = sa.MetaData()
    for table in models.Base.metadata.sorted_tables:
        table.to_metadata(metadata, schema="app")

    def app_schema_only(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
        return type_ != "schema" or name == "app"

    def diffs(**filters: Any) -> list[Any]:
        with engine(db.url).connect() as conn:  # the default search_path: app is not the default schema
            context = MigrationContext.configure(
                conn, opts={"include_schemas": True, "version_table_schema": "app", **filters}
            )
            return compare_metadata(context, metadata)

    assert diffs(include_name=combine(include_name, app_schema_only), include_object=include_object) == []
    unfiltered = diffs(include_name=app_schema_only)
    assert {(d[0], d[1].schema, d[1].name) for d in unfiltered if d[0] == "remove_table"} == {
        ("remove_table", "app", table) for table in TASKDB_OBJECTS.tables
    }


# taskdb's revisions refuse to run in the application's environment.


@pytest.mark.parametrize("taskdb_deployed", [False, True], ids=["before-taskdb", "after-taskdb"])
def test_taskdb_revisions_in_the_apps_version_locations_are_refused_and_change_nothing(
    make_db: Callable[..., Db], taskdb_deployed: bool
) -> None:
    db = make_db()
    url = with_driver(db.url, "psycopg")
    app_database(db.url)
    if taskdb_deployed:
        ok(run("taskdb", "upgrade", url=url))
    before = state(db)

    wrong = TOYAPP / "alembic-with-taskdb-versions.ini"
    result = run("upgrade", "heads", url=url, ini=wrong)  # two bases: the application's chain and taskdb's
    assert result.returncode != 0
    assert REFUSAL in result.stdout.splitlines()  # Alembic's one FAILED: line
    assert "Traceback" not in result.stdout + result.stderr
    assert state(db) == before  # nothing: not taskdb's objects, not its version, not the app's toy_0003 either
    assert versions(db) == (["toy_0002"], [HEAD] if taskdb_deployed else [])

    offline = run("upgrade", "heads", "--sql", url=url, ini=wrong)
    assert offline.returncode != 0
    assert REFUSAL in offline.stdout.splitlines()
