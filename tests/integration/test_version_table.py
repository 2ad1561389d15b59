"""taskdb's revision lives in taskdb_alembic_version; the application's own alembic_version is never read, changed
or deleted (beyond taskdb's own row, which an earlier taskdb wrote there and the next upgrade moves out)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from taskdb import api
from tests.helpers import HEAD, REVISIONS, Db

URL_VARS = ("TASKDB_DATABASE_URL", "DATABASE_URL")
APP_REVISION = "a1b2c3d4e5f6"  # the application's own Alembic head


def taskdb(db: Db, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in URL_VARS and not k.startswith("TASKDB_")}
    return subprocess.run(
        [sys.executable, "-m", "taskdb.cli", "--url", db.url, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def ok(result: subprocess.CompletedProcess[str], *codes: int) -> subprocess.CompletedProcess[str]:
    assert result.returncode in (codes or (0,)), result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def stamp_app(db: Db, *revisions: str) -> None:
    """The application's Alembic table, as its `alembic stamp` would leave it (plus any extra rows)."""
    db.execute(
        "CREATE TABLE alembic_version (version_num varchar(32) NOT NULL, "
        "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
    )
    for revision in (APP_REVISION, *revisions):
        db.execute("INSERT INTO alembic_version VALUES (:r)", r=revision)


def app_rows(db: Db) -> list[str]:
    return [r["version_num"] for r in db.rows("SELECT version_num FROM alembic_version ORDER BY 1")]


def ours(db: Db) -> str | None:
    if not db.scalar("SELECT to_regclass('taskdb_alembic_version') IS NOT NULL"):
        return None
    return db.scalar("SELECT string_agg(version_num, ',') FROM taskdb_alembic_version")


def test_every_command_leaves_the_applications_alembic_version_alone(db: Db) -> None:
    db.load("half_migrated")
    stamp_app(db)
    plan = json.loads(ok(taskdb(db, "plan", "--json")).stdout)
    assert plan["current_revision"] is None and len(plan["pending"]) == len(REVISIONS)
    ok(taskdb(db, "upgrade"))
    assert (ours(db), app_rows(db)) == (HEAD, [APP_REVISION])
    assert f"{HEAD} (head)" in ok(taskdb(db, "current")).stdout
    assert json.loads(ok(taskdb(db, "plan", "--json")).stdout)["pending"] == []
    doctor = json.loads(ok(taskdb(db, "doctor", "--json"), 0, 1).stdout)
    assert not [f for f in doctor["findings"] if f["check"] in ("schema", "revision")], doctor["findings"]
    assert app_rows(db) == [APP_REVISION]
    ok(taskdb(db, "downgrade", "base"))
    assert (ours(db), app_rows(db)) == (None, [APP_REVISION])
    ok(taskdb(db, "upgrade"))
    assert (ours(db), app_rows(db)) == (HEAD, [APP_REVISION])


def legacy(db: Db, revision: str) -> None:
    """As an earlier taskdb left it: its revision in alembic_version, beside the application's."""
    db.execute("DROP TABLE taskdb_alembic_version")
    stamp_app(db, revision)


def test_an_earlier_taskdbs_row_in_alembic_version_is_adopted_by_the_next_upgrade(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade("0004_constraints")
    legacy(db, "0004_constraints")
    plan = json.loads(ok(taskdb(db, "plan", "--json")).stdout)
    assert plan["current_revision"] == "0004_constraints"
    assert [p["revision"] for p in plan["pending"]] == REVISIONS[REVISIONS.index("0005_hygiene") :]
    current = ok(taskdb(db, "current"))
    assert "still recorded in the application's alembic_version" in current.stderr
    ok(taskdb(db, "upgrade"))
    assert (ours(db), app_rows(db)) == (HEAD, [APP_REVISION])


def test_the_offline_script_adopts_it_too(db: Db, tmp_path: Path) -> None:
    from tests.acceptance.test_offline_sql import apply

    db.load("half_migrated")
    db.upgrade()
    legacy(db, HEAD)
    script = tmp_path / "upgrade.sql"
    script.write_text(api.sql("base:head"), encoding="utf-8")
    output = apply(db, script)
    assert f"taskdb's revision {HEAD} moved from alembic_version to taskdb_alembic_version" in output
    assert (ours(db), app_rows(db)) == (HEAD, [APP_REVISION])
