# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The launchd_calendar filter: a crontab schedule as launchd's calendar entries."""

from __future__ import annotations

DOCUMENTATION = r"""
name: launchd_calendar
author: linkdest.backup contributors
version_added: 0.1.0
short_description: A crontab schedule as launchd StartCalendarInterval entries
description:
  - Reads five crontab fields (numbers, month and day names, C(*), ranges, lists, and steps
    after C(*) or a range, as Debian's cron documents them) and returns the list of dicts that
    launchd's C(StartCalendarInterval) needs to run a job at the same times.
  - When both the day of the month and the day of the week are restricted, cron runs on a day
    that matches either; the result keeps that with separate entries.
  - Fails with a message naming the field on a schedule cron would not run, or one that needs
    more than 1000 entries.
extends_documentation_fragment:
  - linkdest.backup.schedule
"""

EXAMPLES = r"""
- name: Every half hour
  ansible.builtin.debug:
    msg: "{{ '*/30 * * * *' | linkdest.backup.launchd_calendar }}"
  # [{"Minute": 0}, {"Minute": 30}]
"""

RETURN = r"""
_value:
  description:
    - One dict per calendar entry.
    - A missing key (Month, Day, Weekday, Hour, Minute) matches any value.
  type: list
  elements: dict
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.linkdest.backup.plugins.module_utils.launchd_schedule import (
    ScheduleError,
    calendar_intervals,
)


def launchd_calendar(schedule, setting="schedule"):
    try:
        return calendar_intervals(schedule)
    except ScheduleError as exc:
        raise AnsibleFilterError("%s %s" % (setting, exc)) from exc


class FilterModule:
    def filters(self):
        return {"launchd_calendar": launchd_calendar}
