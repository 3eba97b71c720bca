# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""A crontab schedule as launchd calendar entries: same times, checked bad input."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.linkdest.backup.plugins.module_utils.launchd_schedule import (
    MAX_ENTRIES,
    ScheduleError,
    calendar_intervals,
)

LIMITS = {"minute": (0, 59), "hour": (0, 23), "day": (1, 31), "month": (1, 12), "weekday": (0, 7)}
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
NAMES = {
    "month": {name: number + 1 for number, name in enumerate(MONTHS)},
    "weekday": {name: number for number, name in enumerate(DAYS)},
}
YEAR = 2028  # a leap year: February 29 is a date


# --- oracles, written apart from the module ------------------------------------


def cron_values(name: str, text: str) -> set:
    """What one crontab field matches, read the way crontab(5) says."""
    low, high = LIMITS[name]
    found = set()
    for part in text.split(","):
        span, _slash, step = part.partition("/")
        if span == "*":
            first, last = low, high
        else:
            ends = [NAMES.get(name, {}).get(end.lower()) for end in span.split("-")]
            ends = [int(end) if value is None else value for value, end in _pairs(ends, span)]
            first, last = ends[0], ends[-1]
        found |= set(range(first, last + 1, int(step or 1)))
    return {0 if name == "weekday" and value == 7 else value for value in found}


def _pairs(values, span):
    return [(value, span.split("-")[index]) for index, value in enumerate(values)]


def cron_days(text: str) -> set:
    """The dates of YEAR cron runs the schedule on (crontab(5): when both day
    fields are restricted, that is don't start with *, either may match)."""
    _minute, _hour, day, month, weekday = text.split()
    days, months, weekdays = (
        cron_values("day", day),
        cron_values("month", month),
        cron_values("weekday", weekday),
    )
    either = not day.startswith("*") and not weekday.startswith("*")
    found = set()
    for date in _dates():
        sunday_first = (date.weekday() + 1) % 7
        if date.month not in months:
            continue
        if (
            (date.day in days or sunday_first in weekdays)
            if either
            else (date.day in days and sunday_first in weekdays)
        ):
            found.add(date)
    return found


def cron_times(text: str) -> set:
    minute, hour, *_days = text.split()
    return {(h, m) for h in cron_values("hour", hour) for m in cron_values("minute", minute)}


def launchd_fires(entry: dict, date: datetime.date) -> bool:
    """Whether one StartCalendarInterval entry fires on a date (at its hours
    and minutes), as launchd's calendar code decides: Month and Day by the
    calendar, a Weekday on its own (any month), and with both a Day and a
    Weekday, on either."""
    sunday_first = (date.weekday() + 1) % 7
    by_date = (
        entry.get("Month", date.month) == date.month and entry.get("Day", date.day) == date.day
    )
    if "Weekday" not in entry:
        return by_date
    by_week = entry["Weekday"] % 7 == sunday_first
    return by_week if "Day" not in entry else by_date or by_week


def launchd_times(entry: dict) -> set:
    hours = [entry["Hour"]] if "Hour" in entry else range(24)
    minutes = [entry["Minute"]] if "Minute" in entry else range(60)
    return {(h, m) for h in hours for m in minutes}


def _dates():
    date = datetime.date(YEAR, 1, 1)
    while date.year == YEAR:
        yield date
        date += datetime.timedelta(days=1)


def same_times_all_year(text: str, entries: list) -> None:
    """Every minute of YEAR: launchd fires exactly when cron runs."""
    days, times = cron_days(text), cron_times(text)
    for date in _dates():
        fired = set()
        for entry in entries:
            if launchd_fires(entry, date):
                fired |= launchd_times(entry)
        assert fired == (times if date in days else set()), (text, date)


@pytest.mark.parametrize(
    ("text", "entries"),
    [
        ("*/30 * * * *", [{"Minute": 0}, {"Minute": 30}]),
        ("0 3 * * *", [{"Hour": 3, "Minute": 0}]),
        ("0 0 * * 7", [{"Weekday": 0, "Hour": 0, "Minute": 0}]),
        ("0 0 * * sun", [{"Weekday": 0, "Hour": 0, "Minute": 0}]),
        ("0 12 1 JAN *", [{"Month": 1, "Day": 1, "Hour": 12, "Minute": 0}]),
        # Either the 13th or a Friday: launchd's rule for Day and Weekday too.
        (
            "0 0 13 * 5",
            [{"Day": 13, "Hour": 0, "Minute": 0}, {"Weekday": 5, "Hour": 0, "Minute": 0}],
        ),
        # A field that lists every value matches any: no key.
        ("0-59 0-23 1-31 1-12 0-6", [{}]),
        ("* * * * 0-7", [{}]),
        # Either the first or any day of the week: every day.
        ("0 0 1 * 0-6", [{"Hour": 0, "Minute": 0}]),
        ("0 0 1-31 * 1", [{"Hour": 0, "Minute": 0}]),
        ("15,45 8-9 * * *", [{"Hour": h, "Minute": m} for h in (8, 9) for m in (15, 45)]),
        (
            "0 9-17/4 * * mon-fri",
            [{"Weekday": w, "Hour": h, "Minute": 0} for w in range(1, 6) for h in (9, 13, 17)],
        ),
        # The 30th of January and of February: February has none.
        ("0 0 30 1,2 *", [{"Month": 1, "Day": 30, "Hour": 0, "Minute": 0}]),
        ("0 0 29 2 *", [{"Month": 2, "Day": 29, "Hour": 0, "Minute": 0}]),
    ],
)
def test_examples(text, entries):
    assert calendar_intervals(text) == entries
    same_times_all_year(text, entries)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("61 * * * *", "minute 61 is outside 0-59"),
        ("* 24 * * *", "hour 24 is outside 0-23"),
        ("* * 0 * *", "day of month 0 is outside 1-31"),
        ("* * * 13 *", "month 13 is outside 1-12"),
        ("* * * * 8", "day of week 8 is outside 0-7"),
        ("* * * foo *", "month 'foo' is not a number or a name"),
        ("x * * * *", "minute 'x' is not a number"),
        ("*/0 * * * *", "minute step '0' is not a positive number"),
        ("*/ * * * *", "minute step '' is not a positive number"),
        ("10-5 * * * *", "minute range '10-5' runs backwards"),
        ("5/10 * * * *", "a step follows * or a range (write 5-59/10)"),
        ("*/30 * * *", "a schedule is five crontab fields"),
        ("*/30 * * * * *", "a schedule is five crontab fields"),
        ("", "a schedule is five crontab fields"),
        ("1,,2 * * * *", "minute '' is not a number"),
        ("0-58 0-16 * * *", "needs 1003 launchd entries"),
        # Cron would never run these: no such date.
        ("0 0 30 2 *", "never runs: no month in it has day 30"),
        ("0 0 31 4,6,9,11 *", "never runs: no month in it has day 31"),
        ("0 0 30,31 feb */2", "never runs: no month in it has day 30,31"),
        # Cron runs these; launchd cannot at the same times.
        ("0 9 * 1 mon", "launchd cannot keep a day of the week to some months"),
        ("0 0 13 12 fri", "launchd cannot keep a day of the week to some months"),
        ("0 0 */10 * 1", "never only when both match"),
        ("0 0 1 * */2", "never only when both match"),
    ],
)
def test_bad_schedules_are_refused_naming_the_field(text, message):
    with pytest.raises(ScheduleError) as raised:
        calendar_intervals(text)
    assert message in str(raised.value)
    assert repr(text) in str(raised.value)


def test_either_day_on_a_date_no_month_has_still_runs_on_the_weekday():
    # Cron: the 30th of February or any Monday of February: every Monday.
    assert calendar_intervals("0 0 30 * 1") == [
        {"Day": 30, "Hour": 0, "Minute": 0},
        {"Weekday": 1, "Hour": 0, "Minute": 0},
    ]
    with pytest.raises(ScheduleError, match="some months"):
        calendar_intervals("0 0 30 2 1")  # cron runs it on Mondays in February


def test_not_text_is_refused():
    with pytest.raises(ScheduleError, match="a schedule is text"):
        calendar_intervals(30)


def test_the_limit_is_the_number_of_entries():
    # 59 minutes of 16 hours: 944 entries; of 17 hours: 1003. Every minute
    # of every hour is one entry with no key at all.
    assert len(calendar_intervals("0-58 0-15 * * *")) == 944 <= MAX_ENTRIES
    with pytest.raises(ScheduleError, match="needs 1003 launchd entries"):
        calendar_intervals("0-58 0-16 * * *")
    assert calendar_intervals("* * * * *") == [{}]
    assert len(calendar_intervals("* 9-17 * * 1-5")) == 45


def _field(name, most=None):
    low, high = LIMITS[name]
    high = most or high
    value = st.integers(low, high)
    named = list(NAMES.get(name, {}))
    single = st.one_of(value.map(str), st.sampled_from(named)) if named else value.map(str)
    span = st.tuples(value, value).map(lambda p: "%d-%d" % (min(p), max(p)))
    step = st.integers(1, high + 1).map(str)
    stepped = st.one_of(st.tuples(span, step).map("/".join), step.map(lambda s: "*/" + s))
    part = st.one_of(single, span, stepped)
    return st.one_of(st.just("*"), st.lists(part, min_size=1, max_size=3).map(",".join))


SCHEDULES = st.tuples(
    _field("minute"), _field("hour"), _field("day"), _field("month"), _field("weekday")
).map(" ".join)


@settings(max_examples=250, deadline=None)
@given(text=SCHEDULES)
def test_launchd_runs_exactly_when_cron_does_every_minute_of_a_year(text):
    try:
        entries = calendar_intervals(text)
    except ScheduleError as exc:
        refused = str(exc)
    else:
        same_times_all_year(text, entries)
        return
    _minute, _hour, day, month, weekday = text.split()
    days_restricted = cron_values("day", day) != set(range(1, 32))
    weekdays_restricted = cron_values("weekday", weekday) != set(range(7))
    months_restricted = cron_values("month", month) != set(range(1, 13))
    either = not day.startswith("*") and not weekday.startswith("*")
    if "never runs" in refused:
        assert not cron_days(text)  # and over a leap year too
    elif "some months" in refused:
        assert weekdays_restricted
        assert months_restricted
    elif "never only when both match" in refused:
        assert days_restricted
        assert weekdays_restricted
        assert not either
    else:
        assert "launchd entries" in refused, refused
