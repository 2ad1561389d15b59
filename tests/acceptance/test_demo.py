"""`taskdb demo` (what scripts/demo runs) end to end, as a newcomer would run it.

Its figures are checked against the seed's rows counted here independently: the test loads the same seed
into its own database (``db``), counts the Queued rows, upgrades, and follows each counted row by its id.
A second run adds rows to the incident, so a figure the demo did not read from its database would show.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from taskdb import report, seeds
from taskdb.db import execute_script
from taskdb.demo import MAX_ACTIVE_GPUS, QUESTION, run_demo
from tests.acceptance.test_cli import taskdb
from tests.helpers import DRIVERS, REVISIONS, Db, with_driver

# A figure line: indentation, the number, two spaces, then in words what it counts.
FIGURE = re.compile(r"^ {2,}(\d+) {2,}(\S.*)$")
HEADING = re.compile(r"^== (.*) ==$", re.MULTILINE)
# How each group of counted rows begins its line in the demo's "what became of" section.
FATE_LABELS = {
    "flagged": "flagged in legacy_reason and cancelled",
    "backfilled": "backfilled:",
    "cancelled_stale": "cancelled by the cleanup",
    "cancelled_with_parent": "cancelled because their parent task ended",
    "untouched": "untouched:",
}

# Added to the incident for the second run: more legacy rows, and the groups the incident alone leaves
# empty: a healthy task Queued longer than queued_ttl (the cleanup cancels it), a child that depends on it
# (tasks_cancel_children cancels it) and a row whose owner comes from params (backfilled, claimable).
MORE_ROWS = """
INSERT INTO tasks (id, task_type, params, status, attempts, created_at)
SELECT md5('extra-legacy-' || n)::uuid, 'travel_segment', '{}', 'Queued', 0, now() - interval '100 days'
FROM generate_series(1, 3) AS n;
INSERT INTO tasks (id, task_type, params, status, attempts, created_at, user_id, run_type, dependant_on) VALUES
    (md5('extra-stale')::uuid, 'travel_segment', '{}', 'Queued', 0, now() - interval '10 days',
     md5('user-alice')::uuid, 'cloud', NULL),
    (md5('extra-stale-child')::uuid, 'travel_stitch', '{}', 'Queued', 0, now() - interval '1 hour',
     md5('user-alice')::uuid, 'cloud', md5('extra-stale')::uuid),
    (md5('extra-from-params')::uuid, 'travel_segment', jsonb_build_object('user_id', md5('user-bob')::uuid),
     'Queued', 0, now() - interval '2 hours', NULL, 'cloud', NULL);
"""


def expected_figures(db: Db, more_rows: str | None = None) -> dict[str, Any]:
    """The demo's figures, derived here: the seed loaded into ``db``, its Queued rows taken by id, then
    upgraded, and each of those rows looked up again (by its values, not through task_hygiene_log)."""
    with db.engine.begin() as conn:
        seeds.load_schema(conn, "half_migrated")
        seeds.load_incident(conn)
        if more_rows:
            execute_script(conn, more_rows)
    before = {
        r["id"]: r for r in db.rows("SELECT id::text AS id, status::text AS status, user_id, run_type FROM tasks")
    }
    counted = {i: r for i, r in before.items() if r["status"] == "Queued"}
    db.upgrade()
    after = {
        r["id"]: r
        for r in db.rows(
            "SELECT id::text AS id, status::text AS status, user_id, run_type, legacy_reason, error_message, "
            "id IN (SELECT id FROM taskdb_ready_tasks WHERE run_type = 'cloud') AS ready_gpu FROM tasks"
        )
    }
    fates: Counter[tuple[str, str | None, str | None]] = Counter()
    legacy: Counter[tuple[str, str | None, str | None]] = Counter()
    for task_id, was in counted.items():
        now = after[task_id]
        message = now["error_message"] or ""
        if now["legacy_reason"]:
            key = ("flagged", now["legacy_reason"], None)
            assert now["status"] == "Cancelled"
        elif now["status"] == "Cancelled" and message.startswith("Cancelled by taskdb cleanup"):
            key = ("cancelled_stale", None, None)
        elif now["status"] == "Cancelled" and "its parent task" in message:
            key = ("cancelled_with_parent", None, None)
        elif now["status"] != "Queued":
            key = ("moved_on", None, None)
        else:
            changed = (now["user_id"], now["run_type"]) != (was["user_id"], was["run_type"])
            standing = (
                "claimable" if now["ready_gpu"] else "other_run_type" if now["run_type"] != "cloud" else "not_ready"
            )
            key = ("backfilled" if changed else "untouched", None, standing)
        fates[key] += 1
        legacy[key] += was["user_id"] is None and was["run_type"] is None
    return {
        "queued": len(counted),
        "legacy": sum(legacy.values()),
        "claimable": db.scalar("SELECT claimable_task_count('gpu')"),
        # ready for a GPU worker now, but written with a status the old count's exact 'Queued' missed
        "newly_queued": sum(1 for i, r in after.items() if r["ready_gpu"] and before[i]["status"] != "Queued"),
        "queued_after": sum(r["status"] == "Queued" for r in after.values()),
        "fates": {key: (n, legacy[key]) for key, n in fates.items()},
    }


def sections(text: str) -> dict[str, list[str]]:
    """The output's lines by section heading (the text between ``== `` and `` ==``)."""
    parts = HEADING.split(text)
    return {heading: body.strip("\n").splitlines() for heading, body in zip(parts[1::2], parts[2::2], strict=True)}


def figures(lines: list[str]) -> list[tuple[int, str]]:
    return [(int(m[1]), m[2]) for m in map(FIGURE.match, lines) if m]


def figure(lines: list[str], explanation_start: str) -> int:
    """The one figure whose explanation starts with ``explanation_start``."""
    found = [n for n, said in figures(lines) if said.startswith(explanation_start)]
    assert len(found) == 1, (explanation_start, lines)
    return found[0]


def check_text(text: str, expected: dict[str, Any]) -> None:
    """The printed report: the incident's question, every figure explained, the figures the expected ones."""
    assert f'"{QUESTION}"' in text and "/functions/v1/task-counts" in text
    parts = sections(text)
    order = [h.split(":")[0] for h in parts]
    assert order == [
        "the autoscaler's question",
        "before",
        "taskdb plan",
        "taskdb upgrade head",
        "after",
        "what became of every row the old count counted (read from tasks and task_hygiene_log)",
        "what keeps it that way",
    ], order
    for heading, lines in parts.items():
        if heading == "taskdb plan":  # taskdb plan's own report, labelled its own way (test_plan)
            continue
        for line in lines:
            if line.startswith(("INFO", "WARN")):  # the upgrade's log (stderr, when run as a subprocess)
                continue
            # no bare "name  value" dump: a number is first on its line, and followed by what it counts
            assert not re.search(r"\S\s+\d+$", line), f"a figure without explanation: {line!r}"
            if re.match(r"\s*\d", line):
                match = FIGURE.match(line)
                assert match and len(match[2].split()) >= 4, f"a figure without explanation: {line!r}"
    question = next(lines for h, lines in parts.items() if h.startswith("the autoscaler's question"))
    before = next(lines for h, lines in parts.items() if h.startswith("before"))
    after = next(lines for h, lines in parts.items() if h.startswith("after"))
    became = next(lines for h, lines in parts.items() if h.startswith("what became"))
    assert figure(question, "MAX_ACTIVE_GPUS") == MAX_ACTIVE_GPUS
    assert figure(before, "tasks the old count answered") == expected["queued"]
    assert figure(before, "of them legacy rows") == expected["legacy"]
    assert figure(before, "GPU workers the autoscaler would start") == min(expected["queued"], MAX_ACTIVE_GPUS)
    assert figure(after, "tasks it answers") == expected["claimable"]
    assert figure(after, "GPU workers the autoscaler would start") == min(expected["claimable"], MAX_ACTIVE_GPUS)
    assert figure(after, "rows the old count's query (the same SQL as before)") == expected["queued_after"]
    total_line = [(n, said) for n, said in figures(became) if said.startswith("in all")]
    assert len(total_line) == 1
    total, said = total_line[0]
    parts_of_total = [int(n) for n in re.match(r"in all \(([\d + ]+)\)", said)[1].split(" + ")]
    assert total == sum(parts_of_total) == expected["queued"], said
    for fate, label in FATE_LABELS.items():
        n = sum(n for (group, _, _), (n, _) in expected["fates"].items() if group == fate)
        if n or fate != "cancelled_with_parent":  # shown only when it happened
            assert figure(became, label) == n, fate
    for (_, reason, _), (n, _) in expected["fates"].items():
        if reason:
            assert figure(became, f"{reason}:") == n
    if expected["newly_queued"]:  # the incident has one ('queued'): claimable now, never in the old count
        assert figure(became, "more ready for a GPU worker that the old count never saw") == expected["newly_queued"]


def demo_fates(fates: list[dict[str, Any]]) -> dict[tuple[str, str | None, str | None], tuple[int, int]]:
    return {(g["fate"], g["legacy_reason"], g["now"]): (g["n"], g["legacy"]) for g in fates}


def test_demo_cli_shows_the_question_before_and_after(db: Db) -> None:
    """`taskdb demo` as scripts/demo runs it: exit 0, the figures those of the seed, every one explained."""
    expected = expected_figures(db)
    result = taskdb("demo")
    assert result.returncode == 0, result.stderr
    check_text(result.stdout, expected)
    assert f"Pending revisions ({len(REVISIONS)}):" in sections(result.stdout)["taskdb plan"]
    # the incident's legacy rows are all flagged, none left Queued
    assert (
        expected["legacy"] > 0
        and expected["fates"][("flagged", "missing_user_id,missing_run_type", None)][1] == expected["legacy"]
    )
    # the throwaway server's password never shows
    assert re.findall(r"://postgres:([^@]*)@", result.stdout) == ["***"]


def test_demo_figures_come_from_the_database(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    """With rows added to the incident, every figure moves with them: none is written into the demo."""
    expected = expected_figures(db, MORE_ROWS)
    for fate in ("cancelled_stale", "cancelled_with_parent", "backfilled"):  # what the extra rows are for
        assert any(key[0] == fate for key in expected["fates"]), fate
    load_incident = seeds.load_incident

    def incident_and_more(conn: sa.Connection) -> None:
        load_incident(conn)
        execute_script(conn, MORE_ROWS)

    monkeypatch.setattr(seeds, "load_incident", incident_and_more)
    out = io.StringIO()
    shown = run_demo(out=out)
    text = out.getvalue()
    check_text(text, expected)
    assert shown["question"] == QUESTION
    assert shown["before"]["queued"] == expected["queued"] and shown["before"]["legacy"] == expected["legacy"]
    assert shown["before"]["workers"] == min(expected["queued"], MAX_ACTIVE_GPUS)
    assert shown["after"]["claimable"] == expected["claimable"]
    assert shown["after"]["workers"] == min(expected["claimable"], MAX_ACTIVE_GPUS)
    assert shown["after"]["old_count"]["queued"] == expected["queued_after"]
    assert shown["after"]["old_count"]["legacy"] == 0
    assert demo_fates(shown["fates"]) == expected["fates"]
    assert shown["fates_total"] == expected["queued"]
    assert shown["newly_queued"] == expected["newly_queued"]
    assert shown["guards"]["constraints"] == shown["guards"]["validated"] > 0
    # the demo's own numbers in its text: the groups it returned, with their sum
    for group in shown["fates"]:
        if group["legacy_reason"]:
            assert re.search(rf"^ +{group['n']}  +{re.escape(group['legacy_reason'])}:", text, re.MULTILINE)
    # the same report, read by the library through either driver from the test's own upgraded database
    for driver in DRIVERS:
        engine = sa.create_engine(with_driver(db.url, driver), poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                assert demo_fates(report.counted_fates(conn)) == expected["fates"]
                assert report.claimable_count(conn) == expected["claimable"]
                assert report.old_count(conn)["queued"] == expected["queued_after"]
        finally:
            engine.dispose()
