"""A comparable picture of a database's schema, read from the catalog (works on any server version,
unlike a pg_dump of one version against a server of another).

It covers what schema.sql can declare: relations with their options, comments and privileges; columns;
constraints; indexes; views' definitions; functions and procedures (signature, result, language,
volatility, SECURITY DEFINER, pinned settings, privileges, comment and the whole definition with its
body); triggers; enums. Privileges name roles, so two databases compare equal only on one server
(the group roles are cluster-wide) with one owner."""

from __future__ import annotations

import re
from typing import Any

from tests.helpers import Db

Picture = dict[str, list[dict[str, Any]]]

# taskdb's own version table is the migrations' bookkeeping, not part of the declared schema.
NOT_VERSION_TABLE = "c.relname <> 'taskdb_alembic_version'"

CATALOG_QUERIES = {
    "tables": f"""
        SELECT c.relname, c.relkind::text, c.reloptions, c.relrowsecurity, c.relreplident::text,
               obj_description(c.oid, 'pg_class') AS comment, c.relacl::text[] AS acl
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'S', 'p')
          AND {NOT_VERSION_TABLE}
        ORDER BY 1""",
    "columns": f"""
        SELECT c.relname, a.attname, row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) AS position,
               format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid) AS default, a.attidentity::text, a.attgenerated::text,
               col_description(c.oid, a.attnum) AS comment, a.attacl::text[] AS acl
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'p') AND a.attnum > 0
          AND NOT a.attisdropped AND {NOT_VERSION_TABLE}
        ORDER BY 1, 2""",
    "constraints": f"""
        SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) AS definition, k.convalidated,
               obj_description(k.oid, 'pg_constraint') AS comment
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND {NOT_VERSION_TABLE}
        ORDER BY 1, 2""",
    "indexes": """
        SELECT i.indexname, i.indexdef, obj_description(to_regclass(quote_ident(i.schemaname) || '.'
               || quote_ident(i.indexname)), 'pg_class') AS comment
        FROM pg_indexes i
        WHERE i.schemaname = current_schema() AND i.tablename <> 'taskdb_alembic_version' ORDER BY 1""",
    "views": """
        SELECT c.relname, c.relkind::text, pg_get_viewdef(c.oid, true) AS definition
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind IN ('v', 'm')
        ORDER BY 1""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args, p.prokind::text,
               pg_get_function_arguments(p.oid) AS arguments_with_defaults,
               pg_get_function_result(p.oid) AS result, l.lanname AS language, p.provolatile::text AS volatility,
               p.proparallel::text AS parallel, p.proisstrict, p.prosecdef, p.proleakproof, p.proconfig,
               p.proacl::text[] AS acl, obj_description(p.oid, 'pg_proc') AS comment, p.prosrc AS body,
               pg_get_functiondef(p.oid) AS definition
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
        WHERE n.nspname = current_schema() ORDER BY 1, 2""",
    "triggers": """
        SELECT c.relname, t.tgname, t.tgenabled::text, pg_get_triggerdef(t.oid, true) AS definition,
               obj_description(t.oid, 'pg_trigger') AS comment
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND NOT t.tgisinternal
        ORDER BY 1, 2""",
    "enums": """
        SELECT t.typname, array_agg(e.enumlabel::text ORDER BY e.enumsortorder) AS labels
        FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY 1 ORDER BY 1""",
}

# Text the server prints as it was written (a function's body) or lays out itself (a view's definition):
# compared with runs of whitespace as one space, so a reindented line is no difference but a changed
# token is.
NORMALISED = {"views": ("definition",), "functions": ("body", "definition")}


def normalise(text: str | None) -> str | None:
    return None if text is None else re.sub(r"\s+", " ", text).strip()


def catalog(db: Db, *, column_order: bool = False) -> Picture:
    """The picture of ``db``'s current schema. ``column_order`` adds each column's position among its table's
    (a row type's shape: claim_next_task returns SETOF tasks); left out otherwise, since a table whose columns
    an application and taskdb each added keeps them in the order the two were deployed."""
    picture = {name: db.rows(sql) for name, sql in CATALOG_QUERIES.items()}
    if not column_order:
        for row in picture["columns"]:
            del row["position"]
    for kind, fields in NORMALISED.items():
        for row in picture[kind]:
            for field in fields:
                row[field] = normalise(row[field])
    return picture


# What names one row of each kind: a difference is reported per object, not as a diff of the whole picture.
KEYS = {
    "tables": ("relname",),
    "columns": ("relname", "attname"),
    "constraints": ("relname", "conname"),
    "indexes": ("indexname",),
    "views": ("relname",),
    "functions": ("proname", "args"),
    "triggers": ("relname", "tgname"),
    "enums": ("typname",),
}


def object_name(kind: str, row: dict[str, Any]) -> str:
    """``functions claim_next_task(p_worker_id text, p_run_type text)``, ``columns tasks.user_id``..."""
    if kind == "functions":
        return f"functions {row['proname']}({row['args']})"
    return f"{kind} " + ".".join(str(row[key]) for key in KEYS[kind])


def by_object(picture: Picture) -> dict[str, dict[str, Any]]:
    return {object_name(kind, row): row for kind, rows in picture.items() for row in rows}


def differences(a: Picture, b: Picture) -> dict[str, list[str]]:
    """The objects that differ between two pictures, each with the fields that differ (or "missing" on one
    side)."""
    left, right = by_object(a), by_object(b)
    found: dict[str, list[str]] = {}
    for name in sorted(left.keys() | right.keys()):
        if name not in right:
            found[name] = ["only in the first"]
        elif name not in left:
            found[name] = ["only in the second"]
        elif left[name] != right[name]:
            found[name] = sorted(
                f for f in left[name].keys() | right[name].keys() if left[name].get(f) != right[name].get(f)
            )
    return found


def counts(picture: Picture) -> dict[str, int]:
    """How many rows of each kind a picture holds (so a test can say it compared something)."""
    return {kind: len(rows) for kind, rows in picture.items()}
