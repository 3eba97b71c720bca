# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""A crontab schedule as launchd calendar entries: same times, checked bad input."""

from __future__ import annotations

import calendar
import datetime
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.linkdest.backup.plugins.module_utils.launchd_schedule import (
    MAX_ENTRIES,
    Schedule,
    ScheduleError,
    calendar_intervals,
)

LIMITS = {"minute": (0, 59), "hour": (0, 23), "day": (1, 31), "month": (1, 12), "weekday": (0, 7)}


def cron_runs(schedule: Schedule, minute, hour, day, month, weekday) -> bool:
    """cron's rule (Debian's crontab(5)), on the parsed value sets."""
    minutes, hours, days, months, weekdays = schedule.values
    if minute not in minutes or hour not in hours or month not in months:
        return False
    if schedule.day_starred or schedule.weekday_starred:
        return day in days and weekday in weekdays
    return day in days or weekday in weekdays


def launchd_runs(entries, minute, hour, day, month, weekday) -> bool:
    """launchd's rule (launchd.plist(5)): any entry whose every key matches."""
    now = {"Minute": minute, "Hour": hour, "Day": day, "Month": month, "Weekday": weekday}
    return any(
        all(now[key] == (value % 7 if key == "Weekday" else value) for key, value in e.items())
        for e in entries
    )


@pytest.mark.parametrize(
    ("text", "entries"),
    [
        ("*/30 * * * *", [{"Minute": 0}, {"Minute": 30}]),
        ("0 3 * * *", [{"Hour": 3, "Minute": 0}]),
        ("0 0 * * 7", [{"Weekday": 0, "Hour": 0, "Minute": 0}]),
        ("0 0 * * sun", [{"Weekday": 0, "Hour": 0, "Minute": 0}]),
        ("0 12 1 JAN *", [{"Month": 1, "Day": 1, "Hour": 12, "Minute": 0}]),
        # Either the 13th or a Friday: two entries, not one that needs both.
        (
            "0 0 13 * 5",
            [{"Day": 13, "Hour": 0, "Minute": 0}, {"Weekday": 5, "Hour": 0, "Minute": 0}],
        ),
        # A starred day field means both must match.
        (
            "0 0 */10 * 1",
            [{"Day": d, "Weekday": 1, "Hour": 0, "Minute": 0} for d in (1, 11, 21, 31)],
        ),
        # A field that lists every value matches any: no key.
        ("0-59 0-23 1-31 1-12 0-6", [{}]),
        ("* * * * 0-7", [{}]),
        ("0 0 1-31 * 1", [{"Hour": 0, "Minute": 0}]),
        ("15,45 8-9 * * *", [{"Hour": h, "Minute": m} for h in (8, 9) for m in (15, 45)]),
        (
            "0 9-17/4 * * mon-fri",
            [{"Weekday": w, "Hour": h, "Minute": 0} for w in range(1, 6) for h in (9, 13, 17)],
        ),
    ],
)
def test_examples(text, entries):
    assert calendar_intervals(text) == entries


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
    ],
)
def test_bad_schedules_are_refused_naming_the_field(text, message):
    with pytest.raises(ScheduleError) as raised:
        calendar_intervals(text)
    assert message in str(raised.value)
    assert repr(text) in str(raised.value)


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


def _field(name):
    low, high = LIMITS[name]
    value = st.integers(low, high)
    single = value.map(str)
    span = st.tuples(value, value).map(lambda p: "%d-%d" % (min(p), max(p)))
    step = st.integers(1, high + 1).map(str)
    stepped = st.one_of(st.tuples(span, step).map("/".join), step.map(lambda s: "*/" + s))
    part = st.one_of(single, span, stepped)
    return st.one_of(st.just("*"), st.lists(part, min_size=1, max_size=3).map(",".join))


SCHEDULES = st.tuples(*(_field(name) for name in LIMITS)).map(" ".join)
TIMES = st.tuples(
    st.integers(0, 59),
    st.integers(0, 23),
    st.integers(1, 31),
    st.integers(1, 12),
    st.integers(0, 6),
)


@settings(max_examples=300, deadline=None)
@given(text=SCHEDULES, times=st.lists(TIMES, min_size=20, max_size=20))
def test_launchd_runs_exactly_when_cron_does(text, times):
    refusal = ""
    try:
        entries = calendar_intervals(text)
    except ScheduleError as exc:
        refusal = str(exc)
        entries = None
    if entries is None:
        assert "launchd entries" in refusal  # only the size limit refuses these
        return
    schedule = Schedule(text)
    for time in times:
        assert launchd_runs(entries, *time) == cron_runs(schedule, *time), (text, time)
    # And at every time one entry names (so each entry is a time cron runs).
    for entry in entries:
        time = (
            entry.get("Minute", 0),
            entry.get("Hour", 0),
            entry.get("Day", 1),
            entry.get("Month", 1),
            entry.get("Weekday", 0),
        )
        assert cron_runs(schedule, *time), (text, entry)


def test_friday_the_13th_or_any_friday_over_a_year():
    # The whole of 2027, day by day, at midnight: cron's "either day" rule.
    text = "0 0 13 * fri"
    entries, schedule = calendar_intervals(text), Schedule(text)
    for month, day in itertools.product(range(1, 13), range(1, 32)):
        if day > calendar.monthrange(2027, month)[1]:
            continue
        weekday = (datetime.date(2027, month, day).weekday() + 1) % 7  # Sunday is 0
        assert launchd_runs(entries, 0, 0, day, month, weekday) == (day == 13 or weekday == 5)
        assert cron_runs(schedule, 0, 0, day, month, weekday) == (day == 13 or weekday == 5)
