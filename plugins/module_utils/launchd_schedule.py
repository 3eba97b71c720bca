# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""A crontab schedule (five fields) read once, for cron and for launchd.

The backup_client role takes one setting, ``backup_client_schedule``, in
crontab's words. Cron on Linux runs it as written; a Mac has launchd, whose
``StartCalendarInterval`` is a list of dicts (Minute, Hour, Day, Weekday,
Month; a missing key matches any value) that fires when any dict does.

launchd's rule for one dict is not quite "every key matches" (its calendar
code, cronemu and cronemu_wday): with a Weekday and a Day it fires on either
day, as cron does when both day fields are restricted, and a Weekday ignores
the Month. So each combination of values becomes one dict, and what launchd
cannot say is refused with a message rather than run at other times: a day
of the week limited to some months, and cron's "both day fields" rule (one
of them starred, the other restricted).

Parsing here also checks the schedule on every platform: cron ignores a bad
line in /etc/cron.d with a log message nobody reads, and the backups stop; a
schedule no date can match (February 30) is refused too. Only what Debian's
cron documents is accepted: numbers, names of months and days, ``*``, ranges,
lists, and steps after ``*`` or a range.

Python 3.9 and the standard library only.
"""

from __future__ import annotations

# A schedule whose launchd form would be longer than this is refused: a plist
# of thousands of entries is a mistake (every minute of office hours), not a
# backup schedule.
MAX_ENTRIES = 1000

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# The most days each month can have (February: in a leap year).
MONTH_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


class ScheduleError(ValueError):
    """The schedule is not five valid crontab fields (the message says which)."""


class Field:
    """One crontab field: its name, launchd's key, its range and names."""

    def __init__(self, name, key, low, high, names=(), names_start=0):
        self.name = name
        self.key = key
        self.low = low
        self.high = high
        self.names = names
        self.names_start = names_start

    def number(self, text, schedule):
        if text.isdigit():
            value = int(text)
        elif text.lower() in self.names:
            value = self.names.index(text.lower()) + self.names_start
        else:
            raise ScheduleError(
                "%r: %s %r is not a number%s"
                % (schedule, self.name, text, " or a name" if self.names else "")
            )
        if not self.low <= value <= self.high:
            raise ScheduleError(
                "%r: %s %d is outside %d-%d" % (schedule, self.name, value, self.low, self.high)
            )
        return value


FIELDS = (
    Field("minute", "Minute", 0, 59),
    Field("hour", "Hour", 0, 23),
    Field("day of month", "Day", 1, 31),
    Field("month", "Month", 1, 12, MONTHS, 1),
    # 0 and 7 are both Sunday, in cron and in launchd.
    Field("day of week", "Weekday", 0, 7, DAYS, 0),
)


def parse_field(field, text, schedule):
    """The set of values one field matches."""
    values = set()
    for part in text.split(","):
        span, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(
                    "%r: %s step %r is not a positive number" % (schedule, field.name, step_text)
                )
            step = int(step_text)
        if span == "*":
            low, high = field.low, field.high
        elif "-" in span:
            first, _dash, last = span.partition("-")
            low, high = field.number(first, schedule), field.number(last, schedule)
            if low > high:
                raise ScheduleError("%r: %s range %r runs backwards" % (schedule, field.name, span))
        elif slash:
            # Debian's cron documents steps after * or a range only; "5/10"
            # means different things to different crons.
            raise ScheduleError(
                "%r: %s %r: a step follows * or a range (write %s-%d/%s)"
                % (schedule, field.name, part, span, field.high, step_text)
            )
        else:
            low = high = field.number(span, schedule)
        values.update(range(low, high + 1, step))
    if field.key == "Weekday" and 7 in values:
        values.discard(7)
        values.add(0)
    return values


class Schedule:
    """Five crontab fields, parsed: the value sets and whether each was ``*``."""

    def __init__(self, text):
        if not isinstance(text, str):
            raise ScheduleError("%r: a schedule is text, five crontab fields" % (text,))
        parts = text.split()
        if len(parts) != 5:
            raise ScheduleError(
                "%r: a schedule is five crontab fields (minute hour day month weekday), "
                'such as "*/30 * * * *"' % text
            )
        self.text = text
        self.values = [parse_field(field, parts[index], text) for index, field in enumerate(FIELDS)]
        # cron decides "either day field" by how the field is written, not by
        # its values: "*/2" is starred, "1-31" is not.
        self.day_starred = parts[2].startswith("*")
        self.weekday_starred = parts[4].startswith("*")
        self.either_day = not (self.day_starred or self.weekday_starred)
        days, months = self.values[2], self.values[3]
        # "Either day" always has a day: a day of the week comes round in
        # every month (and a weekday field that is every day is every day).
        if not self.either_day and not any(
            day <= MONTH_DAYS[month] for day in days for month in months
        ):
            raise ScheduleError(
                "%r never runs: no month in it has day %s"
                % (text, ",".join(str(day) for day in sorted(days)))
            )

    def restricted(self, index):
        """The field's sorted values, or None when it matches every value."""
        field, values = FIELDS[index], self.values[index]
        # Weekday 7 was read as 0, so Sunday to Saturday is every day.
        high = 6 if field.key == "Weekday" else field.high
        return None if values >= set(range(field.low, high + 1)) else sorted(values)


def _product(entries, key, values):
    if values is None:
        return entries
    return [dict(entry, **{key: value}) for entry in entries for value in values]


def calendar_intervals(text):
    """launchd's StartCalendarInterval entries for a crontab schedule.

    A list of dicts with int values; a key that is missing matches any value.
    Raises ScheduleError, with a message that names the field, on a schedule
    cron would not run, one launchd cannot run at the same times, and one it
    could only hold as more than MAX_ENTRIES.
    """
    schedule = Schedule(text)
    day, month, weekday = (schedule.restricted(index) for index in (2, 3, 4))
    if weekday is None:
        # "Either day" with a weekday field that is every day: every day.
        every_day = schedule.either_day or day is None
        days = [{}] if every_day else [{"Day": value} for value in day]
    elif schedule.either_day and day is None:
        days = [{}]  # "either day" with a day field that is every day
    elif schedule.either_day:
        # launchd's own rule for a Day and a Weekday is "either", as cron's.
        days = [{"Day": value} for value in day] + [{"Weekday": value} for value in weekday]
    elif day is None:
        days = [{"Weekday": value} for value in weekday]
    else:
        raise ScheduleError(
            "%r: launchd runs a job on a day of the month or on a day of the week, never only"
            " when both match: write the day of the month or the day of the week as *" % text
        )
    if month is not None and any("Weekday" in entry for entry in days):
        raise ScheduleError(
            "%r: launchd cannot keep a day of the week to some months (it would run in every"
            " month): use * for the month, or days of the month" % text
        )
    entries = []
    for entry in days:
        for value in month or [None]:
            if value is None:
                entries.append(dict(entry))
            elif entry.get("Day", 1) <= MONTH_DAYS[value]:
                entries.append(dict(entry, Month=value))  # never February 30
    others = [(key, schedule.restricted(index)) for key, index in (("Hour", 1), ("Minute", 0))]
    count = len(entries)
    for _key, values in others:
        count *= len(values or [None])
    if count > MAX_ENTRIES:
        raise ScheduleError(
            "%r needs %d launchd entries (one for each combination of values), more than %d: "
            "choose a simpler schedule" % (text, count, MAX_ENTRIES)
        )
    for key, values in others:
        entries = _product(entries, key, values)
    order = ("Month", "Day", "Weekday", "Hour", "Minute")
    return [{key: entry[key] for key in order if key in entry} for entry in entries]
