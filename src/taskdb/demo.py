"""`taskdb demo`: the incident, reproduced on a throwaway PostgreSQL, and repaired by `upgrade head`.

It asks the autoscaler's question, "how many tasks can be claimed right now?", the way the incident's count
answered it (every Queued row), shows `taskdb plan`, upgrades, asks it again the way the autoscaler does now
(``claimable_task_count('gpu')``), and accounts for every row the old count counted. Every figure comes
from the database (taskdb.report, SQL in sql/demo.sql); every printed figure says what it counts.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import sqlalchemy as sa

from taskdb import api, report, seeds
from taskdb.cli.plan import render as render_plan
from taskdb.db import connect, create_engine
from taskdb.plan import plan

QUESTION = "how many tasks can be claimed right now?"
OLD_COUNT_SOURCE = "the edge function /functions/v1/task-counts"
RUN_TYPE = "gpu"  # the autoscaler's word for run_type 'cloud'

# The report: the autoscaler wanted one GPU worker per counted task ("Need 51 workers!") and MAX_ACTIVE_GPUS
# capped it; it peaked at 4 workers. The report gives no other rule, so the demo assumes min(count, 4).
MAX_ACTIVE_GPUS = 4

# legacy_reason's vocabulary (README, "flagging") in plain words.
REASONS = {
    "missing_user_id": "no user_id",
    "unknown_user": "a user_id that names no user",
    "missing_run_type": "no run_type",
    "invalid_run_type": "a run_type that is neither cloud nor local",
    "missing_status": "no status",
    "invalid_status": "a status that is none of the five",
}

# Where a row that stays Queued stands now, for a worker of RUN_TYPE.
NOW = {
    "claimable": "ready for a GPU worker: claimable_task_count counts them (within each owner's concurrency limit)",
    "other_run_type": "local work (run_type local): its owner's own machine runs it, never a GPU worker",
    "not_ready": "not claimable yet: an owner without credits, or a dependency not Complete",
}

# The groups of counted_fates, in the order printed, each with its one-line explanation.
FATES = {
    "flagged": "flagged in legacy_reason and cancelled (a flagged row is never Queued); kept, never deleted",
    "backfilled": "backfilled: taskdb derived or corrected user_id / run_type; they stay Queued",
    "cancelled_stale": "cancelled by the cleanup: healthy, but Queued longer than queued_ttl ({queued_ttl})",
    "cancelled_with_parent": "cancelled because their parent task ended (trigger tasks_cancel_children)",
    "untouched": "untouched: they already had a user_id and a run_type; they stay Queued",
    "moved_on": "no longer Queued, changed by someone else than taskdb (claimed, finished) since",
}
ALWAYS_SHOWN = ("flagged", "backfilled", "cancelled_stale", "untouched")  # the others only when they happen


def workers(count: int) -> int:
    """GPU workers the autoscaler starts for ``count`` claimable tasks: one each, at most MAX_ACTIVE_GPUS."""
    return min(count, MAX_ACTIVE_GPUS)


def _figure(out: TextIO, n: int, text: str, indent: int = 0) -> None:
    """One figure and, on the same line, what it counts."""
    print(f"  {n:>5}  {'  ' * indent}{text}", file=out)


def _reason(reason: str) -> str:
    said = " and ".join(REASONS.get(r, "a reason this demo does not know") for r in reason.split(","))
    return f"{reason}: {said}, and nothing (project, params, parent task) to derive a value from"


def _legacy_note(group: dict[str, Any]) -> str:
    return f" ({group['legacy']} of them legacy rows)" if group["legacy"] else ""


def _print_old_count(out: TextIO, counted: dict[str, int], *, after: bool) -> None:
    what = (
        "rows the old count's query (the same SQL as before) answers now: the Queued rows left"
        if after
        else "tasks the old count answered: every row with status 'Queued', whoever owns it, whatever it runs on"
    )
    _figure(out, counted["queued"], what)
    _figure(out, counted["legacy"], "of them legacy rows: written before user_id and run_type existed, both NULL", 1)
    _figure(out, counted["older_than_24h"], "of them Queued for more than 24 hours", 1)
    _figure(out, counted["oldest_days"], "days the oldest of them has been Queued", 1)


def print_before(out: TextIO, counted: dict[str, int]) -> None:
    print(f'\n== the autoscaler\'s question: "{QUESTION}" ==', file=out)
    _figure(
        out,
        MAX_ACTIVE_GPUS,
        "MAX_ACTIVE_GPUS, the most GPU workers the autoscaler runs at once (assumed: the "
        "report's autoscaler peaked at that many), starting one per task it is told of",
    )
    print(f"\n== before: the incident database, asked through {OLD_COUNT_SOURCE} ==", file=out)
    _print_old_count(out, counted, after=False)
    _figure(
        out,
        workers(counted["queued"]),
        "GPU workers the autoscaler would start: one per task it was told of, at most MAX_ACTIVE_GPUS",
    )


def print_after(out: TextIO, claimable: int, counted: dict[str, int]) -> None:
    print(f"\n== after: the autoscaler calls claimable_task_count('{RUN_TYPE}') ==", file=out)
    _figure(
        out,
        claimable,
        "tasks it answers: Queued, not flagged, run_type cloud, younger than queued_ttl, "
        "dependency Complete, owner with credits, within each user's concurrency limit",
    )
    _figure(
        out,
        workers(claimable),
        "GPU workers the autoscaler would start: one per claimable task, at most "
        "MAX_ACTIVE_GPUS; each has a task it can claim",
    )
    _print_old_count(out, counted, after=True)


def print_fates(out: TextIO, fates: list[dict[str, Any]], old_total: int, queued_ttl: str) -> int:
    """What became of the rows the old count counted, group by group, and their sum (returned)."""
    print("\n== what became of every row the old count counted (read from tasks and task_hygiene_log) ==", file=out)
    subtotals = []
    for fate, label in FATES.items():
        groups = [g for g in fates if g["fate"] == fate]
        n = sum(g["n"] for g in groups)
        if not n and fate not in ALWAYS_SHOWN:
            continue
        subtotals.append(n)
        legacy = sum(g["legacy"] for g in groups)
        _figure(out, n, label.format(queued_ttl=queued_ttl) + _legacy_note({"legacy": legacy}))
        # flagged: the biggest reason first; still Queued: in NOW's order
        for g in sorted(groups, key=lambda g: list(NOW).index(g["now"]) if g["now"] in NOW else -g["n"]):
            if g["legacy_reason"]:
                _figure(out, g["n"], _reason(g["legacy_reason"]) + _legacy_note(g), 1)
            elif g["now"]:
                _figure(out, g["n"], NOW[g["now"]] + _legacy_note(g), 1)
    total = sum(subtotals)
    verdict = "every one accounted for" if total == old_total else f"but it counted {old_total}: some are missing"
    _figure(out, total, f"in all ({' + '.join(str(n) for n in subtotals)}): the rows the old count counted, {verdict}")
    return total


def print_guards(out: TextIO, guarded: dict[str, Any]) -> None:
    print("\n== what keeps it that way ==", file=out)
    _figure(out, guarded["constraints"], f"CHECK and foreign-key constraints on tasks: {guarded['names']}")
    _figure(out, guarded["validated"], "of them validated (every existing row checked, not only new ones)", 1)
    scheduled = "scheduled in pg_cron" if guarded["cleanup_scheduled"] else "NOT scheduled (no pg_cron)"
    print(
        f"  the daily cleanup (cancel_stale_queued_tasks, cron '{guarded['cleanup_schedule']}' UTC) is {scheduled}",
        file=out,
    )


def run_demo(backend: str | None = None, out: TextIO = sys.stdout) -> dict[str, Any]:
    """Start PostgreSQL, load the incident, ask the autoscaler's question, show the plan, upgrade to head,
    ask it again, account for every row the old count counted, stop. Returns the figures printed."""
    from taskdb.testing import start_postgres  # the throwaway server is only needed here

    with start_postgres(backend) as server:
        url = server.url(server.create_database("taskdb_demo"))
        print(f"PostgreSQL {server.major} ({server.backend} backend) at {sa.engine.make_url(url)!r}", file=out)
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                seeds.load_schema(conn, "half_migrated")
                seeds.load_incident(conn)
            with connect(engine) as conn:
                before = report.old_count(conn)
            print_before(out, before)
            print("\n== taskdb plan ==", file=out)
            with connect(engine).execution_options(isolation_level="AUTOCOMMIT") as conn:
                print("\n".join(render_plan(plan(conn))), file=out)
            print("\n== taskdb upgrade head ==", file=out)
            out.flush()  # the upgrade's log lines (stderr) come after this heading in a 2>&1 transcript
            api.upgrade(url)
            with connect(engine) as conn:
                claimable = report.claimable_count(conn, RUN_TYPE)
                after = report.old_count(conn)
                fates = report.counted_fates(conn, RUN_TYPE)
                newly = report.newly_queued(conn, RUN_TYPE)
                guarded = report.guards(conn)
            print_after(out, claimable, after)
            total = print_fates(out, fates, before["queued"], guarded["queued_ttl"])
            if newly:
                _figure(
                    out,
                    newly,
                    "more ready for a GPU worker that the old count never saw: written with a status "
                    "spelled otherwise ('queued'), Queued since the backfill normalised it",
                )
            print_guards(out, guarded)
        finally:
            engine.dispose()
    return {
        "question": QUESTION,
        "max_active_gpus": MAX_ACTIVE_GPUS,
        "before": {**before, "workers": workers(before["queued"])},
        "after": {"claimable": claimable, "workers": workers(claimable), "old_count": after},
        "fates": fates,
        "fates_total": total,
        "newly_queued": newly,
        "guards": guarded,
    }
