"""The habits a command-line user brings, through the installed command (a subprocess): --version, --url after
the command, exit 2 for an unreachable server on every command, a clear word for an unknown revision, a quiet
broken pipe, and text output without Python's True/False/None."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from taskdb import __version__
from tests.acceptance.test_cli import URL_VARS, taskdb
from tests.helpers import Db

UNREACHABLE = "postgresql://someone:s3cret-pw@127.0.0.1:1/nowhere"


def one_line(result: subprocess.CompletedProcess[str], code: int, *needed: str) -> str:
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("taskdb:")]
    assert len(lines) == 1, result.stderr[-3000:]
    for text in needed:
        assert text in lines[0], lines[0]
    return lines[0]


def test_version() -> None:
    result = taskdb("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"taskdb {__version__}")


def test_url_after_the_command_as_well_as_before(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade()
    assert "0006_cron (head)" in taskdb("current", "--url", db.url).stdout
    assert taskdb("cron", "status", "--json", "--url", db.url).returncode == 0
    # given twice, the one after the command wins
    assert "0006_cron (head)" in taskdb("--url", UNREACHABLE, "current", "--url", db.url).stdout


@pytest.mark.parametrize("command", [("current",), ("plan",), ("upgrade",), ("cleanup",), ("cron", "status")])
def test_an_unreachable_server_is_exit_2_and_one_line_on_every_command(command: tuple[str, ...]) -> None:
    line = one_line(taskdb(*command, "--url", UNREACHABLE), 2, "cannot connect to", "127.0.0.1:1")
    assert "s3cret-pw" not in line


@pytest.mark.parametrize("revision_range", ["bogus", "0003_backfill:nope"])
def test_an_unknown_revision_is_named(revision_range: str) -> None:
    bad = revision_range.rsplit(":", 1)[-1]
    one_line(taskdb("sql", revision_range), 1, f"unknown revision {bad!r}", "taskdb history")


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    env = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    proc = subprocess.Popen([sys.executable, "-m", "taskdb.cli", "sql"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head -1` that is done before taskdb writes its first line (the script takes a moment)
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(60) == 141  # as a program that SIGPIPE ended
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_text_output_has_no_python_words(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade()
    result = taskdb("--url", db.url, "cleanup", "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()
    assert not re.search(r"\b(True|False|None)\b", result.stdout), result.stdout
