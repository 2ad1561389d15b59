"""taskdb's version table under another name: TASKDB_VERSION_TABLE, ``-x version_table=`` or alembic.ini's
``taskdb_version_table`` (in that order after -x). Every command reads and writes the configured table, in the
queue's schema; taskdb_alembic_version is never created and the application's alembic_version keeps its row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskdb import api
from taskdb.errors import ConfigError
from taskdb.version_table import create_sql, resolve
from tests.acceptance.test_alembic_cli import alembic
from tests.acceptance.test_offline_sql import apply
from tests.conftest import QUEUE_SCHEMAS
from tests.helpers import DRIVERS, REVISIONS, Db, with_driver
from tests.integration.test_version_table import APP_REVISION, HEAD, URL_VARS, app_rows, ok, stamp_app

NAME = "ops_taskdb_version"


def taskdb(db: Db, *args: str, version_table: str | None = NAME) -> subprocess.CompletedProcess[str]:
    """The CLI with TASKDB_VERSION_TABLE (and TASKDB_SCHEMA, when the test's queue has one) and nothing else of
    taskdb's environment."""
    env = {k: v for k, v in os.environ.items() if k not in URL_VARS and not k.startswith("TASKDB_")}
    if os.environ.get("TASKDB_SCHEMA"):
        env["TASKDB_SCHEMA"] = os.environ["TASKDB_SCHEMA"]
    if version_table is not None:
        env["TASKDB_VERSION_TABLE"] = version_table
    return subprocess.run(
        [sys.executable, "-m", "taskdb.cli", "--url", db.url, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def recorded(db: Db, table: str = NAME) -> str | None:
    """The revision(s) in ``table`` of the queue's schema (None: no such table)."""
    if not db.scalar("SELECT to_regclass(:t) IS NOT NULL", t=table):
        return None
    return db.scalar(f"SELECT string_agg(version_num, ',') FROM {table}")


def has_default_table(db: Db) -> bool:
    return bool(db.scalar("SELECT EXISTS (SELECT FROM pg_class WHERE relname = 'taskdb_alembic_version')"))


@QUEUE_SCHEMAS
def test_every_command_uses_the_configured_table(db: Db) -> None:
    db.load("half_migrated")
    stamp_app(db)
    plan = json.loads(ok(taskdb(db, "plan", "--json")).stdout)
    assert plan["current_revision"] is None and len(plan["pending"]) == len(REVISIONS)
    ok(taskdb(db, "upgrade"))
    assert (recorded(db), app_rows(db)) == (HEAD, [APP_REVISION])
    assert db.scalar("SELECT relnamespace::regnamespace::text FROM pg_class WHERE relname = :t", t=NAME) == (
        db.scalar("SELECT current_schema()")
    )  # in the queue's schema
    assert f"{HEAD} (head)" in ok(taskdb(db, "current")).stdout
    assert json.loads(ok(taskdb(db, "plan", "--json")).stdout)["pending"] == []
    doctor = json.loads(ok(taskdb(db, "doctor", "--json"), 0, 1).stdout)
    assert doctor["revision"] == HEAD
    assert not [f for f in doctor["findings"] if f["check"] in ("schema", "revision")], doctor["findings"]
    # without the setting taskdb looks in taskdb_alembic_version, finds nothing there, and says so
    unset = json.loads(ok(taskdb(db, "plan", "--json", version_table=None)).stdout)
    assert unset["current_revision"] is None
    ok(taskdb(db, "downgrade", "base"))
    assert (recorded(db), app_rows(db)) == (None, [APP_REVISION])
    ok(taskdb(db, "upgrade"))
    assert (recorded(db), app_rows(db)) == (HEAD, [APP_REVISION])
    assert not has_default_table(db)


def test_an_earlier_taskdbs_row_in_alembic_version_moves_into_the_configured_table(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade("0004_constraints")  # records in taskdb_alembic_version, then stands in for an earlier taskdb
    db.execute("DROP TABLE taskdb_alembic_version")
    stamp_app(db, "0004_constraints")
    assert json.loads(ok(taskdb(db, "plan", "--json")).stdout)["current_revision"] == "0004_constraints"
    assert f"moves it to {NAME}" in ok(taskdb(db, "current")).stderr
    ok(taskdb(db, "upgrade"))
    assert (recorded(db), app_rows(db)) == (HEAD, [APP_REVISION])
    assert not has_default_table(db)


@pytest.mark.parametrize("driver", DRIVERS)
def test_alembic_x_version_table_comes_before_the_environment_and_the_ini(db: Db, driver: str, tmp_path: Path) -> None:
    db.load("half_migrated")
    stamp_app(db)
    url = with_driver(db.url, driver)
    ini = tmp_path / "alembic.ini"  # taskdb's alembic.ini with the option set, pointing at the checkout's chain
    ini.write_text(
        Path(api.alembic_ini())
        .read_text(encoding="utf-8")
        .replace("# taskdb_version_table = taskdb_alembic_version", "taskdb_version_table = from_ini")
        .replace("%(here)s/migrations", str(Path(api.alembic_ini()).parent / "migrations")),
        encoding="utf-8",
    )
    env = {"TASKDB_VERSION_TABLE": "from_environment"}
    done = alembic("-c", str(ini), "-x", f"url={url}", "-x", f"version_table={NAME}", "upgrade", "head", env=env)
    assert done.returncode == 0, done.stderr
    assert (recorded(db), app_rows(db)) == (HEAD, [APP_REVISION])
    assert recorded(db, "from_environment") is None and recorded(db, "from_ini") is None
    current = alembic("-c", str(ini), "-x", f"url={url}", "-x", f"version_table={NAME}", "current", env=env)
    assert f"{HEAD} (head)" in current.stdout, current.stderr
    # without -x: the environment's table, else the ini's (each stamped by hand with a revision of its own)
    for table, revision in (("from_environment", "0002_columns"), ("from_ini", "0001_baseline")):
        db.execute(create_sql(table))
        db.execute(f"INSERT INTO {table} VALUES (:r)", r=revision)
    assert "0002_columns" in alembic("-c", str(ini), "-x", f"url={url}", "current", env=env).stdout
    assert "0001_baseline" in alembic("-c", str(ini), "-x", f"url={url}", "current").stdout
    assert not has_default_table(db) and app_rows(db) == [APP_REVISION]


def test_the_offline_script_records_in_the_configured_table(db: Db, tmp_path: Path) -> None:
    db.load("half_migrated")
    stamp_app(db)
    script = tmp_path / "upgrade.sql"
    ok(taskdb(db, "sql", "--output", str(script)))
    assert "taskdb_alembic_version" not in script.read_text(encoding="utf-8")
    apply(db, script)
    assert (recorded(db), app_rows(db)) == (HEAD, [APP_REVISION])
    apply(db, script)  # a rerun changes nothing
    assert (recorded(db), app_rows(db)) == (HEAD, [APP_REVISION])
    assert not has_default_table(db)
    assert f"{HEAD} (head)" in ok(taskdb(db, "current")).stdout


def test_the_offline_script_adopts_an_earlier_taskdbs_row_into_the_configured_table(db: Db, tmp_path: Path) -> None:
    db.load("half_migrated")
    db.upgrade()
    db.execute("DROP TABLE taskdb_alembic_version")
    stamp_app(db, HEAD)
    script = tmp_path / "upgrade.sql"
    ok(taskdb(db, "sql", "--output", str(script)))
    output = apply(db, script)
    assert f"taskdb's revision {HEAD} moved from alembic_version to {NAME}" in output
    assert (recorded(db), app_rows(db)) == (HEAD, [APP_REVISION])
    assert not has_default_table(db)


@pytest.mark.parametrize("name", ["alembic_version", "tasks", "queue_health", "Ops-Version", "order", "x" * 60])
def test_a_bad_name_is_refused_in_one_line(db: Db, name: str) -> None:
    db.load("half_migrated")
    columns = db.columns()
    for command in (("upgrade",), ("current",), ("plan",), ("sql",), ("downgrade", "base")):
        result = taskdb(db, *command, version_table=name)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (command, result.stderr)
        assert lines[0].startswith(f"taskdb: TASKDB_VERSION_TABLE = {name!r} is "), lines
        if name == "alembic_version":
            assert "the application's own Alembic table" in lines[0]
    doctor = taskdb(db, "doctor", version_table=name)
    assert doctor.returncode == 2 and f"TASKDB_VERSION_TABLE = {name!r} is " in doctor.stdout, doctor.stdout
    via_alembic = alembic("-x", f"url={db.url}", "-x", f"version_table={name}", "upgrade", "head")
    lines = via_alembic.stderr.strip().splitlines()
    assert via_alembic.returncode != 0 and len(lines) == 1, via_alembic.stderr
    assert f"-x version_table = {name!r} is" in lines[0]
    assert db.columns() == columns and not has_default_table(db)  # nothing was changed


@pytest.mark.parametrize(
    ("x_argument", "environ", "ini", "expected"),
    [
        (None, {}, None, "taskdb_alembic_version"),
        (None, {}, "from_ini", "from_ini"),
        (None, {"TASKDB_VERSION_TABLE": "from_env"}, "from_ini", "from_env"),
        ("from_x", {"TASKDB_VERSION_TABLE": "from_env"}, "from_ini", "from_x"),
        ("", {"TASKDB_VERSION_TABLE": ""}, "", "taskdb_alembic_version"),  # empty is unset
        (None, {}, "x" * 59, "x" * 59),
    ],
)
def test_precedence(x_argument: str | None, environ: dict[str, str], ini: str | None, expected: str) -> None:
    assert resolve(x_argument, environ, ini) == expected


@pytest.mark.parametrize(
    "name",
    [
        "alembic_version",
        "Ops",
        "ops-version",
        "1ops",
        "order",
        "user",
        "ops version",
        "x" * 60,
        "ops\u00e9",
        "ops;drop",
    ],
)
def test_names_refused(name: str) -> None:
    with pytest.raises(ConfigError) as refused:
        resolve(None, {"TASKDB_VERSION_TABLE": name})
    assert refused.value.exit_code == 2 and "\n" not in str(refused.value)
    assert str(refused.value).startswith(f"TASKDB_VERSION_TABLE = {name!r} is ")
