"""Run the migration chain from Python (the CLI, the demo and the tests call these)."""

from __future__ import annotations

import argparse
from pathlib import Path

from alembic import command
from alembic.config import Config

import taskdb

PACKAGE_DIR = Path(taskdb.__file__).resolve().parent


def alembic_ini() -> Path:
    """alembic.ini inside an installed wheel, else the one at the root of the checkout."""
    for candidate in (PACKAGE_DIR / "_alembic" / "alembic.ini", PACKAGE_DIR.parents[1] / "alembic.ini"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("alembic.ini not found next to the taskdb package or in its checkout")


def alembic_config(url: str, *, configure_logging: bool = False) -> Config:
    """An Alembic Config for ``url`` (passed as ``-x url=...``, exactly as on the command line)."""
    ini = alembic_ini()
    config = Config(str(ini), cmd_opts=argparse.Namespace(x=[f"url={url}"]))
    config.set_main_option("script_location", str(ini.parent / "migrations"))
    config.attributes["configure_logging"] = configure_logging
    return config


def upgrade(url: str, revision: str = "head", *, sql: bool = False) -> None:
    command.upgrade(alembic_config(url), revision, sql=sql)


def downgrade(url: str, revision: str = "base", *, sql: bool = False) -> None:
    command.downgrade(alembic_config(url), revision, sql=sql)
