# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The cron_schedule filter: a crontab schedule, checked as cron reads it."""

from __future__ import annotations

DOCUMENTATION = r"""
name: cron_schedule
author: linkdest.backup contributors
version_added: 0.1.0
short_description: A crontab schedule, checked as cron reads it
description:
  - Reads five crontab fields (numbers, month and day names, C(*), ranges, lists, and steps
    after C(*) or a range, as Debian's cron documents them) and returns them separated by
    single spaces.
  - Fails with a message naming the field on a schedule cron would not run, including one no
    date can match (February 30). Cron itself skips such a line with a log message only.
extends_documentation_fragment:
  - linkdest.backup.schedule
"""

EXAMPLES = r"""
- name: Check a schedule before writing it to /etc/cron.d
  ansible.builtin.set_fact:
    checked_schedule: "{{ my_schedule | linkdest.backup.cron_schedule('my_schedule') }}"
"""

RETURN = r"""
_value:
  description: The five fields, separated by single spaces.
  type: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.linkdest.backup.plugins.module_utils.launchd_schedule import (
    Schedule,
    ScheduleError,
)


def cron_schedule(schedule, setting="schedule"):
    try:
        return " ".join(Schedule(schedule).text.split())
    except ScheduleError as exc:
        raise AnsibleFilterError("%s %s" % (setting, exc)) from exc


class FilterModule:
    def filters(self):
        return {"cron_schedule": cron_schedule}
