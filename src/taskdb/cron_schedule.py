"""pg_cron schedules, read once: whether pg_cron takes one (:func:`schedule_problem`, before taskdb schedules a
job) and the longest wait between two of its runs (:func:`interval`, how doctor decides a job is late).

A schedule is five cron fields (minute, hour, day of month, month, day of week; UTC), a macro (``@daily``), or
on pg_cron >= 1.5 ``N seconds`` (1-59). Fields take what pg_cron's parser takes: ``*``, values, ranges, comma
lists, ``/step``, month and weekday names, ``$`` (the last day of the month, pg_cron >= 1.5) in the day of month.
"""

from __future__ import annotations

import re
from itertools import pairwise

# pg_cron >= 1.5 takes 'N seconds' and '$'
SECONDS_SINCE = (1, 5)

# the macros pg_cron takes, and the longest wait between runs of each (None: @reboot has no period)
MACRO_SECONDS: dict[str, int | None] = {
    "@hourly": 3600,
    "@daily": 86400,
    "@midnight": 86400,
    "@weekly": 7 * 86400,
    "@monthly": 31 * 86400,
    "@yearly": 366 * 86400,
    "@annually": 366 * 86400,
    "@reboot": None,
}
_SECONDS = re.compile(r"^([1-9]|[1-5][0-9]) seconds?$")
_FIELD = re.compile(r"^[0-9A-Za-z*,/$-]+$")
# minute, hour, day of month, month, day of week (0 and 7: Sunday), as pg_cron's parser takes them
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_NAMES: tuple[dict[str, int], ...] = (
    {},
    {},
    {},
    {
        m: i + 1
        for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))
    },
    {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))},
)
_LAST_DAY = 31  # '$' in the day of month: at most 31 (only an upper bound is needed of it)
_DAY = 1440  # minutes


def _normalised(schedule: str) -> str:
    return " ".join(schedule.split())


def field_values(text: str, index: int) -> set[int] | None:
    """The values one cron field (``index``: 0 minute .. 4 day of week) stands for; None when pg_cron would not
    take it. Comma-separated items of ``*``, a value or a range, each with an optional ``/step`` (a value with a
    step runs to the field's end); names for months and weekdays; ``$`` in the day of month."""
    if not _FIELD.match(text):
        return None
    low, high = _RANGES[index]
    values: set[int] = set()
    for item in text.split(","):
        span, slash, step_text = item.partition("/")
        if slash and not (step_text.isdigit() and 1 <= int(step_text) <= high):
            return None
        step = int(step_text) if slash else 1
        if span == "*":
            first, last = low, high
        else:
            bounds = span.split("-")
            if len(bounds) > 2:
                return None
            numbers = [n for n in (_value(bound, index) for bound in bounds) if n is not None and low <= n <= high]
            if len(numbers) != len(bounds):
                return None
            first = numbers[0]
            last = numbers[-1] if len(numbers) == 2 else (high if slash else first)
        values.update(range(first, last + 1, step))
    return values


def _value(bound: str, index: int) -> int | None:
    if index == 2 and bound == "$":
        return _LAST_DAY
    return int(bound) if bound.isdigit() else _NAMES[index].get(bound.lower())


def schedule_problem(schedule: str, version: tuple[int, int] | None = None) -> str | None:
    """Why pg_cron (``version``, or any recent one when None) would not take ``schedule``; None when it would."""
    text = _normalised(schedule)
    # 'N seconds' and '$' (last day of the month) arrived in pg_cron 1.5; 1.4 rejects them.
    if (_SECONDS.match(text) or "$" in text) and version is not None and version < SECONDS_SINCE:
        return (
            f"schedule {schedule!r} needs pg_cron >= 1.5 (this server has {version[0]}.{version[1]}): use a plain "
            "cron schedule such as '* * * * *', or upgrade pg_cron"
        )
    if _SECONDS.match(text) or text.lower() in MACRO_SECONDS:
        return None
    fields = text.split(" ")
    if len(fields) == 5 and all(field_values(f, i) is not None for i, f in enumerate(fields)):
        return None
    return (
        f"invalid schedule {schedule!r}: use five cron fields (minute 0-59, hour 0-23, day of month 1-31, "
        "month 1-12, day of week 0-7; UTC; e.g. '15 3 * * *'), a macro such as '@daily', or on pg_cron >= 1.5 "
        "'N seconds' (1-59)"
    )


def interval(schedule: str) -> float | None:
    """The longest gap, in seconds, between two runs of ``schedule``; None for one pg_cron would not take, for
    '@reboot', and for fields that select nothing (a reversed range).

    '* * * * *' -> 60; '15 3 * * *' -> 86400; '0,30 * * * *' -> 1800; '0 9 * * mon-fri' -> 3 days (Friday to
    Monday). Schedules that restrict the day of the month or the month are answered by an upper bound
    (31 days, 366 days): late then means clearly late.
    """
    if schedule_problem(schedule) is not None:
        return None
    text = _normalised(schedule).lower()
    if text in MACRO_SECONDS:
        seconds = MACRO_SECONDS[text]
        return None if seconds is None else float(seconds)
    if match := _SECONDS.match(text):
        return float(match.group(1))
    fields = text.split(" ")
    minutes, hours, days_of_month, months, weekdays = (field_values(f, i) or set() for i, f in enumerate(fields))
    if not (minutes and hours and days_of_month and months and weekdays):
        return None
    if fields[3] != "*":
        return 366 * 86400.0
    if fields[2] != "*":
        return 31 * 86400.0
    times = sorted({h * 60 + m for h in hours for m in minutes})
    if fields[4] == "*":
        return 60.0 * _longest_gap(times, _DAY)
    week = sorted({(d % 7) * _DAY + t for d in weekdays for t in times})  # 7 is Sunday, like 0
    return 60.0 * _longest_gap(week, 7 * _DAY)


def _longest_gap(points: list[int], period: int) -> int:
    """The longest wait between consecutive points of a schedule repeating every ``period``."""
    gaps = [b - a for a, b in pairwise(points)]
    return max([*gaps, points[0] + period - points[-1]])
