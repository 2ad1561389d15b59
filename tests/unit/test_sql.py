"""The SQL files: named-query parsing, statement splitting, and the backfill templates as strings."""

from __future__ import annotations

import pytest

from taskdb.backfill import render
from taskdb.sql import parse_queries, queries, split_statements


def test_parse_queries_splits_on_named_headers() -> None:
    text = "-- preamble, dropped\n-- one --\n-- first\nSELECT 1\n\n-- two --\nSELECT 2;\n"
    assert parse_queries(text) == {"one": "-- first\nSELECT 1", "two": "SELECT 2;"}


def test_backfill_query_names() -> None:
    assert set(queries("backfill")) == {
        "needs_work",
        "count_needs_work",
        "count_waiting_before",
        "resolve_batch",
        "begin_job",
        "next_size",
        "end_sweep",
        "next_sweep",
        "finish_job",
        "logged_values",
        "restore_history",
        "restores",
        "restored_values",
        "restore_batch",
        "restore_preview",
    }


def test_split_statements_respects_quotes_dollar_quotes_and_comments() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN 1; END $body$;
    INSERT INTO t VALUES ('a;b', "odd;name");
    SELECT $$x;y$$;
    -- trailing comment only
    """
    statements = split_statements(script)
    assert len(statements) == 3
    assert statements[0].endswith("$body$ BEGIN RETURN 1; END $body$")
    assert "'a;b'" in statements[1]


def test_resolve_batch_is_one_keyset_statement_that_skips_locked_rows() -> None:
    sql = render("resolve_batch", status_type="task_status")
    assert "$" not in sql.replace("$$", "")  # every placeholder filled
    # a window of the next batch_size ids, then the rows in it that need work, skipping locked ones
    assert "ORDER BY t.id\n    LIMIT :batch_size\n)" in sql
    assert "FROM window_ids w\n    JOIN tasks t ON t.id = w.id" in sql
    assert "ORDER BY t.id\n    FOR NO KEY UPDATE OF t SKIP LOCKED" in sql
    assert "t.id > CAST(:after AS uuid)" in sql
    assert "CAST(c.status AS task_status)" in sql
    # the same predicate decides what the batch takes and what the progress counts
    predicate = queries("backfill")["needs_work"].replace("${t}", "t")
    assert predicate in sql and predicate in render("count_needs_work")


def test_waiting_sweep_waits_for_row_locks() -> None:
    assert "SKIP LOCKED" not in render("resolve_batch", lock_clause="")


def test_render_refuses_an_unknown_query() -> None:
    with pytest.raises(KeyError):
        render("no_such_query")
