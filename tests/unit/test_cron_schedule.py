"""pg_cron schedules, read once (taskdb.cron_schedule): what pg_cron takes, and how long it waits between runs."""

from __future__ import annotations

import pytest

from taskdb.cron_schedule import interval, schedule_problem

INTERVALS = [
    ("* * * * *", 60),
    ("15 3 * * *", 86400),
    ("30 seconds", 30),
    ("1 second", 1),
    ("*/15 * * * *", 900),
    ("0,30 * * * *", 1800),
    ("5 * * * *", 3600),
    ("0 */6 * * *", 6 * 3600),
    ("0 9,17 * * *", 16 * 3600),
    ("0 9 * * 1-5", 3 * 86400),
    ("0 9 * * mon-fri", 3 * 86400),
    ("0 0 * * 0", 7 * 86400),
    ("0 0 * * 7", 7 * 86400),
    ("0 0 * * MON", 7 * 86400),
    ("@hourly", 3600),
    ("@daily", 86400),
    ("0 3 1 * *", 31 * 86400),
    ("0 3 $ * *", 31 * 86400),
    ("0 3 1 1 *", 366 * 86400),
    ("0 3 * jan *", 366 * 86400),
    ("10/20 * * * *", 1200),
]
NOT_SCHEDULES = [
    "61 * * * *",
    "* * *",
    "0 seconds",
    "60 seconds",
    "every day",
    "* * * * * *",
    "*/0 * * * *",
    "0 0 * * funday",
    "1 2 * * *; DROP TABLE tasks",
    "1-2-3 * * * *",
]


@pytest.mark.parametrize(("schedule", "seconds"), INTERVALS)
def test_interval_is_the_longest_gap_between_runs(schedule: str, seconds: int) -> None:
    assert interval(schedule) == seconds


@pytest.mark.parametrize("schedule", NOT_SCHEDULES)
def test_what_pg_cron_would_not_take_has_no_interval(schedule: str) -> None:
    assert schedule_problem(schedule) is not None
    assert interval(schedule) is None


def test_one_reading_every_accepted_schedule_has_an_interval_but_reboot() -> None:
    """The check before scheduling and doctor's lateness read a schedule the same way (they once had two parsers
    with different rules: doctor did not understand weekday names that pg_cron takes)."""
    for schedule, _ in INTERVALS:
        assert schedule_problem(schedule) is None, schedule
    assert schedule_problem("@reboot") is None and interval("@reboot") is None
    assert interval("0 0 * * 5-1") is None  # a reversed range: pg_cron takes it, it selects no day


def test_seconds_and_last_day_need_pg_cron_1_5() -> None:
    assert "needs pg_cron >= 1.5" in (schedule_problem("30 seconds", (1, 4)) or "")
    assert "needs pg_cron >= 1.5" in (schedule_problem("0 3 $ * *", (1, 4)) or "")
    assert schedule_problem("30 seconds", (1, 6)) is None
