"""The revision chain itself: one head, linear, every revision documented and reversible."""

from __future__ import annotations

import ast
from pathlib import Path

from alembic.script import ScriptDirectory

from taskdb import api

VERSIONS = Path(api.alembic_ini()).parent / "migrations" / "versions"


def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(api.alembic_config("postgresql://unused@localhost/unused"))


def test_single_head_and_linear_history() -> None:
    directory = script()
    assert directory.get_heads() == ["0007_log_index"]
    revisions = list(directory.walk_revisions())
    assert [r.revision for r in reversed(revisions)] == [
        "0001_baseline",
        "0002_columns",
        "0003_backfill",
        "0004_constraints",
        "0005_hygiene",
        "0006_cron",
        "0007_log_index",
    ]
    assert all(len(r._all_down_revisions) <= 1 for r in revisions)


def test_every_revision_says_what_it_does_and_can_be_undone() -> None:
    for path in sorted(VERSIONS.glob("*.py")):
        module = ast.parse(path.read_text())
        doc = ast.get_docstring(module) or ""
        assert doc.splitlines()[0].strip(), f"{path.name}: first docstring line says what it does"
        assert "Why:" in doc and "Locks:" in doc, f"{path.name}: says why and which locks it takes"
        functions = {f.name: f for f in module.body if isinstance(f, ast.FunctionDef)}
        for name in ("upgrade", "downgrade"):
            assert ast.get_docstring(functions[name]), f"{path.name}: {name}() has a docstring"
            body = functions[name].body[1:]
            assert body and not (len(body) == 1 and isinstance(body[0], ast.Pass)), f"{path.name}: {name} is real"


def test_revision_ids_match_file_names() -> None:
    for path in VERSIONS.glob("*.py"):
        assert f'revision: str = "{path.stem}"' in path.read_text()
