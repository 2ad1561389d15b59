"""squawk lints the offline SQL of every revision (`taskdb sql <previous>:<revision>`), with the repository's
.squawk.toml: each rule it ignores says there why that is safe."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from taskdb import api
from tests.helpers import REVISIONS

ROOT = Path(__file__).resolve().parents[2]
RANGES = [f"{previous}:{revision}" for previous, revision in zip(["base", *REVISIONS], REVISIONS, strict=False)]


@pytest.mark.parametrize("revision_range", RANGES)
def test_squawk_finds_nothing_in_the_offline_sql(revision_range: str, tmp_path: Path) -> None:
    squawk = shutil.which("squawk")
    assert squawk, "squawk is not installed: pip install -e .[dev] (squawk-cli)"
    script = tmp_path / f"{revision_range.split(':')[1]}.sql"
    script.write_text(api.sql(revision_range), encoding="utf-8")
    done = subprocess.run(
        [squawk, "--config", str(ROOT / ".squawk.toml"), "--reporter", "gcc", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_squawk_config_is_read(tmp_path: Path) -> None:
    """The config really applies: without it, squawk flags the rules it excludes."""
    squawk = shutil.which("squawk")
    assert squawk, "squawk is not installed: pip install -e .[dev] (squawk-cli)"
    script = tmp_path / "chain.sql"
    script.write_text(api.sql("base:head"), encoding="utf-8")
    bare = subprocess.run(
        [squawk, "--reporter", "gcc", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bare.returncode != 0 and "prefer-bigint-over-int" in bare.stdout
