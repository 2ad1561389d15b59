"""The toy application's Alembic environment: an application with its own history that deploys taskdb beside it.

As the default template, plus the lines README "Beside your application's own Alembic" asks for: autogenerate
(``revision --autogenerate``, ``check``) is told to leave taskdb's objects alone (taskdb.autogenerate).
``-x taskdb_filter=off`` leaves the filter out: the tests' negative control, which must see taskdb's objects.
The URL is ``-x url=...``, else ``DATABASE_URL``.
"""

from __future__ import annotations

import os
import sys
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from alembic.util import CommandError
from sqlalchemy import create_engine, pool

from taskdb import autogenerate as taskdb_autogenerate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import Base  # the application's model, beside this file

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)
x_arguments = context.get_x_argument(as_dictionary=True)
target_metadata = Base.metadata
use_taskdb_filter = x_arguments.get("taskdb_filter", "on") != "off"


def database_url() -> str:
    url = x_arguments.get("url") or os.environ.get("DATABASE_URL")
    if not url:
        raise CommandError("no database URL: set DATABASE_URL or pass -x url=...")
    return url


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                # taskdb's tables, tasks.legacy_reason, taskdb's indexes and constraints are taskdb's to manage
                include_object=taskdb_autogenerate.include_object if use_taskdb_filter else None,
                include_name=taskdb_autogenerate.include_name if use_taskdb_filter else None,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
