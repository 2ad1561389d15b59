"""The revision chain itself: one head, linear, every revision documented and reversible."""

from __future__ import annotations

import ast
from pathlib import Path

from alembic.script import ScriptDirectory

from taskdb import api
from tests.helpers import HEAD, REVISIONS

VERSIONS = Path(api.alembic_ini()).parent / "migrations" / "versions"


def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(api.alembic_config("postgresql://unused@localhost/unused"))


def test_single_head_and_linear_history() -> None:
    directory = script()
    assert directory.get_heads() == [HEAD]
    revisions = list(directory.walk_revisions())
    assert [r.revision for r in reversed(revisions)] == REVISIONS
    # the files, numbered 0001.. without a gap, are the chain: a new revision revises the one before it
    files = sorted(path.stem for path in VERSIONS.glob("*.py"))
    assert files == REVISIONS and [int(r[:4]) for r in REVISIONS] == list(range(1, len(REVISIONS) + 1))
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
