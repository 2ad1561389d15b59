"""The code habits CI holds the tree to: ruff's lint rules, ruff's formatting, and mypy on the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREES = ["src", "tests", "migrations", "benchmarks", "scripts"]


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["ruff", "check", *TREES], id="ruff-check"),
        pytest.param(["ruff", "format", "--check", *TREES], id="ruff-format"),
        pytest.param(["mypy"], id="mypy"),  # [tool.mypy] in pyproject.toml: the package under src/
    ],
)
def test_tree_is_clean(command: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}"
