"""The wheel, installed in a fresh virtualenv outside the checkout, upgrades a real database to head.

The venv sees the system's site-packages (the dependencies are not downloaded again), but taskdb itself must
come from the wheel: the test proves it by where ``taskdb`` is imported from, and runs everything from a
directory outside the checkout, so nothing can fall back to the checkout's migrations or alembic.ini.
"""

from __future__ import annotations

import email
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from packaging.requirements import Requirement

import taskdb
from taskdb import api
from taskdb.testing.base import PostgresServer
from tests.helpers import CONSTRAINTS, load_incident

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT_SRC = ROOT / "src"
SCRIPT = ScriptDirectory.from_config(api.alembic_config(None))
HEAD = SCRIPT.get_current_head()
REVISIONS = [rev.revision for rev in SCRIPT.walk_revisions()]
# The variables that could point the venv's Python at the checkout, or the CLI at another database.
SCRUBBED = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "TASKDB_DATABASE_URL", "DATABASE_URL")

pytestmark = pytest.mark.slow


def run(args: list[str | Path], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED} | {"PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from the checkout, install it (and only it) into a new venv; the venv's directory."""
    work = tmp_path_factory.mktemp("wheel")
    dist = work / "dist"
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", dist, ROOT], cwd=work)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = dist.glob("taskdb_pg-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        (work / "METADATA").write_bytes(archive.read(metadata))
    for needed in (
        "taskdb/_alembic/alembic.ini",
        f"taskdb/_alembic/migrations/versions/{HEAD}.py",
        "taskdb/_alembic/migrations/env.py",
        "taskdb/_alembic/squawk.toml",
        "taskdb/sql/schema.sql",
        "taskdb/seeds/incident.sql",
        "taskdb/seeds/demo.sql",
        "taskdb/py.typed",
    ):
        assert needed in names, f"{needed} missing from {wheel.name}"
    assert not any(name.startswith("tests/") for name in names)

    venv = work / "venv"
    made = run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=work)
    assert made.returncode == 0, made.stderr
    # The system's pip, run by the venv's Python, installs into the venv; --ignore-installed because the
    # system site-packages may hold an editable taskdb of the same version.
    installed = run(
        [venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel],
        cwd=work,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def test_the_venv_imports_taskdb_from_the_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    probe = run(
        [
            wheel_venv / "bin" / "python",
            "-c",
            "import taskdb, taskdb.api; print(taskdb.__file__); print(taskdb.api.alembic_ini())",
        ],
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    module, ini = (Path(line) for line in probe.stdout.splitlines())
    assert module.is_relative_to(wheel_venv) and not module.is_relative_to(CHECKOUT_SRC), module
    assert ini.is_relative_to(wheel_venv) and ini.parent.name == "_alembic", ini
    assert Path(taskdb.__file__).resolve() != module.resolve()


def test_history_works_from_the_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    history = run([wheel_venv / "bin" / "taskdb", "history"], cwd=tmp_path)
    assert history.returncode == 0, history.stderr
    for revision in REVISIONS:
        assert revision in history.stdout
    assert "(head)" in history.stdout.splitlines()[0] and HEAD in history.stdout.splitlines()[0]


def test_version_and_the_squawk_config_from_the_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    version = run([wheel_venv / "bin" / "taskdb", "--version"], cwd=tmp_path)
    assert (version.returncode, version.stdout.strip()) == (0, f"taskdb {taskdb.__version__}"), version.stderr
    # `taskdb sql > up.sql && taskdb sql --squawk-config > .squawk.toml && squawk up.sql` outside the checkout
    squawk = subprocess.run(
        [str(wheel_venv / "bin" / "taskdb"), "sql", "--squawk-config"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k not in SCRUBBED},
        capture_output=True,
    )
    assert squawk.returncode == 0, squawk.stderr
    assert squawk.stdout == (ROOT / ".squawk.toml").read_bytes()


def test_upgrade_from_the_wheel_repairs_the_incident(
    wheel_venv: Path, tmp_path: Path, taskdb_pg_server: PostgresServer, taskdb_pg_database_factory: Callable[..., str]
) -> None:
    name = taskdb_pg_database_factory()
    load_incident(taskdb_pg_server.url(name))
    assert tmp_path.resolve() != ROOT and not tmp_path.resolve().is_relative_to(ROOT)

    upgrade = run([wheel_venv / "bin" / "taskdb", "--url", taskdb_pg_server.url(name), "upgrade"], cwd=tmp_path)
    assert upgrade.returncode == 0, upgrade.stderr
    assert f"<none> -> {HEAD}" in upgrade.stdout
    assert taskdb_pg_server.password not in upgrade.stdout + upgrade.stderr

    assert taskdb_pg_server.fetch_value("SELECT version_num FROM taskdb_alembic_version", name) == HEAD
    validated = taskdb_pg_server.fetch_value(
        "SELECT array_agg(conname::text) FROM pg_constraint WHERE conrelid = 'tasks'::regclass AND convalidated", name
    )
    assert set(validated) >= CONSTRAINTS
    assert (
        taskdb_pg_server.fetch_value(
            "SELECT count(*) FROM tasks WHERE legacy_reason IS NOT NULL AND status = 'Queued'", name
        )
        == 0
    )
    assert taskdb_pg_server.fetch_value("SELECT count(*) FROM tasks WHERE legacy_reason IS NOT NULL", name) > 0

    url = taskdb_pg_server.url(name, "pg8000")
    current = run([wheel_venv / "bin" / "taskdb", "--url", url, "current"], cwd=tmp_path)
    assert current.returncode == 0, current.stderr
    assert HEAD in current.stdout + current.stderr


def test_installing_taskdb_does_not_pull_test_tools(wheel_venv: Path) -> None:
    """An app installing taskdb-pg gets no pytest or testcontainers: those come only with the [testing] extra."""
    metadata = email.message_from_string((wheel_venv.parent / "METADATA").read_text())  # core metadata: RFC 822
    assert metadata["Name"] == "taskdb-pg"
    requires = [Requirement(value) for value in metadata.get_all("Requires-Dist", [])]

    def needed_with(extra: str) -> set[str]:
        return {r.name.lower() for r in requires if r.marker is None or r.marker.evaluate({"extra": extra})}

    assert needed_with("") == {"alembic", "sqlalchemy", "psycopg", "pg8000", "rich", "prometheus-client"}, requires
    assert {"pytest", "testcontainers"} <= needed_with("testing"), requires
