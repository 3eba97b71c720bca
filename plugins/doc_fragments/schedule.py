# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """Options shared by the schedule filters: the crontab text and its setting's name."""

    DOCUMENTATION = r"""
options:
  _input:
    description: Five crontab fields, such as C(*/30 * * * *).
    type: str
    required: true
  setting:
    description: The name of the setting the schedule came from, for the error message.
    type: str
    default: schedule
"""
