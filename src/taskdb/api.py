"""Run the migration chain from Python (the CLI, the demo and the tests call these)."""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError

import taskdb
from taskdb import report, target

PACKAGE_DIR = Path(taskdb.__file__).resolve().parent


def _shipped(in_wheel: str, in_checkout: str) -> Path:
    """A file the wheel carries in taskdb/_alembic/ (pyproject's force-include), else its source at the root
    of the checkout."""
    for candidate in (PACKAGE_DIR / "_alembic" / in_wheel, PACKAGE_DIR.parents[1] / in_checkout):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{in_checkout} not found next to the taskdb package or in its checkout")


def alembic_ini() -> Path:
    """alembic.ini inside an installed wheel, else the one at the root of the checkout."""
    return _shipped("alembic.ini", "alembic.ini")


def squawk_config() -> str:
    """The squawk configuration CI lints the offline SQL with (the checkout's .squawk.toml, shipped in the
    wheel): each rule it excludes says why that is safe for taskdb's SQL."""
    return _shipped("squawk.toml", ".squawk.toml").read_text(encoding="utf-8")


def alembic_config(
    url: str | None, *, configure_logging: bool = False, raise_taskdb_errors: bool = False, command: str = "migration"
) -> Config:
    """An Alembic Config for ``url`` (passed as ``-x url=...``, exactly as on the command line).

    With ``raise_taskdb_errors`` a :class:`taskdb.errors.TaskdbError` reaches the caller as itself
    (password redacted) instead of as Alembic's CommandError, so the CLI can pick an exit code.
    """
    ini = alembic_ini()
    config = Config(str(ini), cmd_opts=argparse.Namespace(x=[f"url={url}"] if url else []))
    config.set_main_option("script_location", str(ini.parent / "migrations"))
    config.attributes["configure_logging"] = configure_logging
    config.attributes["raise_taskdb_errors"] = raise_taskdb_errors
    config.attributes["taskdb_command"] = command  # how the upgrade lock's holder is named in pg_stat_activity
    return config


def upgrade(url: str, revision: str = "head", *, raise_taskdb_errors: bool = False) -> dict[str, Any]:
    """Upgrade to ``revision``; returns what it did (``taskdb upgrade --json``): revisions, seconds, the
    changes it logged by action, flags by reason, and anything left NOT VALID or INVALID."""
    with target.connection(url, "taskdb upgrade") as conn:
        before, since = report.revision(conn), report.log_high_water(conn)
    started = time.monotonic()
    command.upgrade(alembic_config(url, raise_taskdb_errors=raise_taskdb_errors, command="upgrade"), revision)
    seconds = round(time.monotonic() - started, 3)
    with target.connection(url, "taskdb upgrade") as conn:
        outcome = report.upgrade_outcome(conn, since_log_id=since)
    return {"from_revision": before, "to_revision": outcome.pop("revision"), "seconds": seconds, **outcome}


def downgrade(url: str, revision: str = "base", *, raise_taskdb_errors: bool = False) -> None:
    command.downgrade(alembic_config(url, raise_taskdb_errors=raise_taskdb_errors, command="downgrade"), revision)


def current(url: str) -> None:
    command.current(alembic_config(url, raise_taskdb_errors=True, command="current"), verbose=False)


def stamp(url: str, revision: str, *, purge: bool = False, raise_taskdb_errors: bool = False) -> None:
    """Record ``revision`` in taskdb's version table (``taskdb_alembic_version`` in the queue's schema) without
    running anything else: the path of an upgrade (upgrade lock, standby and read-only refusal, schema pin), so
    an application's own ``alembic_version`` is never touched. ``purge`` first empties taskdb's version table
    (Alembic's ``stamp --purge``: for a table holding a revision this chain does not know)."""
    known_revision(revision)
    config = alembic_config(url, raise_taskdb_errors=raise_taskdb_errors, command="stamp")
    command.stamp(config, revision, purge=purge)


def heads() -> list[str]:
    """The chain's head revision(s); reads only the revision files."""
    return list(_script().get_heads())


def show(revision: str) -> dict[str, Any]:
    """One revision of the chain (no database): its id, parent, file and docstring."""
    rev = known_revision(revision)
    if rev is None:
        raise CommandError("base is where the chain starts, not a revision; `taskdb history` lists the revisions")
    return {
        "revision": rev.revision,
        "parent": rev.down_revision,
        "path": rev.path,
        "doc": rev.longdoc,
        "is_head": rev.is_head,
    }


def known_revision(revision: str) -> Script | None:
    """``revision`` (an id, a unique prefix, ``head``) as the chain's Script, None for ``base``; an unknown one
    is one line naming ``taskdb history`` (CommandError: exit 1, as for ``taskdb sql bogus``)."""
    if revision == "base":
        return None
    try:
        found = _script().get_revision(revision)
    except Exception:  # Alembic's ResolutionError and friends: not a revision of this chain
        found = None
    if found is None:
        raise CommandError(f"unknown revision {revision!r}; `taskdb history` lists the chain's revisions")
    return found


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(None))


def history(*, verbose: bool = False) -> None:
    """The chain, newest first; reads only the revision files."""
    command.history(alembic_config(None), verbose=verbose)


def sql(revision_range: str | None = None, *, downgrade: bool = False) -> str:
    """The offline SQL of ``revision_range`` (Alembic ``--sql``): a script a DBA reviews and applies with
    ``psql -v ON_ERROR_STOP=1 -f``. Needs no database (taskdb.offline). An upgrade by default (``base:head``,
    ``0003_backfill:head``); with ``downgrade`` a downgrade (``head:base`` by default; ``0004_constraints`` alone
    means ``head:0004_constraints``)."""
    config = alembic_config(None, command="downgrade" if downgrade else "upgrade")
    buffer = io.StringIO()
    config.output_buffer = buffer
    if downgrade:
        revision_range = revision_range or "head:base"
        command.downgrade(config, revision_range if ":" in revision_range else f"head:{revision_range}", sql=True)
    else:
        command.upgrade(config, revision_range or "base:head", sql=True)
    return buffer.getvalue()
