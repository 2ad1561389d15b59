"""The package's SQL, kept as readable ``.sql`` files and loaded by name.

A file holds either one piece of SQL (``load("name")``) or several named queries, each introduced by
a ``-- name --`` line and a one-line ``-- description`` (``queries("backfill")["resolve_batch"]``).
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from pathlib import Path

# Where frozen SQL names taskdb's schema (a pinned search_path, a qualified call): filled in when it runs.
SCHEMA_TOKEN = "@schema@"

_QUERY_HEADER = re.compile(r"^-- ([a-z_][a-z0-9_]*) --$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")


@cache
def load(name: str) -> str:
    return files(__package__).joinpath(f"{name}.sql").read_text(encoding="utf-8")


def parse_queries(text: str) -> dict[str, str]:
    """Split a query file on ``-- name --`` headers; the text before the first header is dropped."""
    parts = _QUERY_HEADER.split(text)
    named = dict(zip(parts[1::2], (body.strip() for body in parts[2::2]), strict=True))
    if len(named) != len(parts[1::2]):
        raise ValueError("duplicate query name in query file")
    return named


@cache
def queries(name: str) -> dict[str, str]:
    return parse_queries(load(name))


def split_statements(script: str) -> list[str]:
    """Split a SQL script on top-level semicolons (not inside quotes, dollar quotes or comments).

    pg8000 runs one statement per call, so scripts are sent statement by statement.
    """
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(script)
    quote: str | None = None  # "'", '"', or a dollar tag such as "$$" / "$body$"
    while i < n:
        ch = script[i]
        if quote:
            if script.startswith(quote, i):
                current.append(quote)
                i += len(quote)
                quote = None
                continue
            current.append(ch)
            i += 1
            continue
        if script.startswith("--", i):
            end = script.find("\n", i)
            end = n if end == -1 else end
            current.append(script[i:end])
            i = end
            continue
        if ch in ("'", '"'):
            quote = ch
        elif ch == "$":
            match = re.match(r"\$[A-Za-z_]*\$", script[i:])
            if match:
                quote = match.group(0)
                current.append(quote)
                i += len(quote)
                continue
        elif ch == ";":
            statement = "".join(current).strip()
            if _has_code(statement):
                statements.append(statement)
            current = []
            i += 1
            continue
        current.append(ch)
        i += 1
    statement = "".join(current).strip()
    if _has_code(statement):
        statements.append(statement)
    return statements


def _has_code(statement: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in statement.splitlines())


# What a schema script (schema.sql) declares, statement by statement: the kind and the name it creates.
_DECLARES = {
    "table": re.compile(r"CREATE TABLE (\w+)"),
    "view": re.compile(r"CREATE (?:OR REPLACE )?VIEW (\w+)"),
    "index": re.compile(r"CREATE (?:UNIQUE )?INDEX (\w+) ON \w+"),
    "constraint": re.compile(r"ALTER TABLE \w+ ADD CONSTRAINT (\w+)"),
    "trigger": re.compile(r"CREATE TRIGGER (\w+)"),
    "function": re.compile(r"CREATE (?:OR REPLACE )?(?:FUNCTION|PROCEDURE) (\w+)"),
}
_INLINE_CONSTRAINT = re.compile(r"\bCONSTRAINT (\w+)")


def _code_statements(script: str) -> list[str]:
    return [
        "\n".join(line for line in s.splitlines() if not line.lstrip().startswith("--")).strip()
        for s in split_statements(script)
    ]


def declared_names(script: str) -> dict[str, set[str]]:
    """The names ``script`` creates, by kind: table, view, index, constraint (ALTER TABLE ... ADD), trigger,
    function (taskdb.autogenerate's filter and the version table's forbidden names read schema.sql with it)."""
    found: dict[str, set[str]] = {kind: set() for kind in _DECLARES}
    for code in _code_statements(script):
        for kind, pattern in _DECLARES.items():
            match = pattern.match(code)
            if match is not None:
                found[kind].add(match.group(1))
    return found


def declared_inline_constraints(script: str) -> dict[str, set[str]]:
    """Per table ``script`` creates, the constraints named in its CREATE TABLE."""
    found: dict[str, set[str]] = {}
    for code in _code_statements(script):
        match = _DECLARES["table"].match(code)
        if match is not None:
            found[match.group(1)] = set(_INLINE_CONSTRAINT.findall(code))
    return found


def beside(module_file: str) -> dict[str, str]:
    """The named queries of the ``.sql`` file beside a module (same name): a revision's frozen SQL, a step
    kind's offline SQL."""
    return parse_queries(Path(module_file).with_suffix(".sql").read_text(encoding="utf-8"))


def fill(text: str, where: str, **values: str) -> str:
    """``text`` with its ``{{placeholders}}`` filled: every one, and only known ones (``where`` names the
    section in the error)."""
    found = set(_PLACEHOLDER.findall(text))
    missing, unused = found - set(values), set(values) - found
    if missing or unused:
        raise KeyError(f"{where}: missing {sorted(missing)}, unknown {sorted(unused)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
