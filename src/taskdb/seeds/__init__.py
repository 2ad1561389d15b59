"""Sample databases: the incident's half-migrated schema and rows, a legacy schema, demo data.

These stand for what the *application* left behind, not for anything taskdb creates: tests and the
demo load them and then let the migrations adopt them.
"""

from __future__ import annotations

from importlib.resources import files
from string import Template

from sqlalchemy.engine import Connection

from taskdb.catalog import columns
from taskdb.db import execute_script

SCHEMAS = ("legacy", "half_migrated")


def _read(name: str) -> str:
    return files(__package__).joinpath(f"{name}.sql").read_text(encoding="utf-8")


def load_schema(conn: Connection, shape: str = "half_migrated", *, status_enum: bool = False) -> None:
    """Create users, projects and tasks as the application had them (``legacy`` or ``half_migrated``)."""
    if shape not in SCHEMAS:
        raise ValueError(f"unknown schema shape {shape!r}; expected one of {', '.join(SCHEMAS)}")
    script = Template(_read("schema")).substitute(
        status_type="task_status" if status_enum else "text",
        status_enum=_read("status_enum") if status_enum else "",
        user_columns=(
            "user_id uuid,  -- added later by the application, nullable\n    run_type text,"
            if shape == "half_migrated"
            else ""
        ),
    )
    execute_script(conn, script)


def load_incident(conn: Connection) -> None:
    """The rows of the 18:25 incident (see the seed report): needs the ``half_migrated`` schema.

    Misspelt statuses are added only where ``status`` is text (an enum cannot hold them).
    """
    execute_script(conn, _read("incident"))
    if not columns(conn, "tasks")["status"].is_enum:
        execute_script(conn, _read("incident_text_status"))


def load_legacy_rows(conn: Connection) -> None:
    """Old rows in the ``legacy`` shape (no user_id or run_type column at all)."""
    execute_script(conn, _read("legacy_rows"))


def load_demo(conn: Connection) -> None:
    """A small healthy queue (users, projects, tasks of every status and run type): needs the head schema."""
    execute_script(conn, _read("demo"))
