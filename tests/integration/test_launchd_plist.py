# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The backup_client role's LaunchAgent, rendered by the real Ansible template
module and read back with plistlib: a valid property list whose calendar is
the schedule's, whose strings survive XML's special characters, and which
runs `linkdest backup --quiet` at low priority.

No Mac runs here: that launchd loads this file is untested (README, macOS).
"""

from __future__ import annotations

import os
import pathlib
import plistlib
import subprocess
import sys

import yaml

from ansible_collections.linkdest.backup.plugins.module_utils.launchd_schedule import (
    calendar_intervals,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "roles/backup_client/templates/Library/LaunchAgents/linkdest.plist.j2"
ROLE_VARS = yaml.safe_load((ROOT / "roles/backup_client/vars/main.yml").read_text())
SCHEDULES = [
    "*/30 * * * *",
    "* * * * *",
    "0 0 13 * fri",
    "15,45 8-18 * * mon-fri",
    "0 3 1 jan,jul *",
    "*/10 * * * 0",
    "0 3 1,15 * *",
]
LOG = "/Users/o'brien & <co>/Library/Logs/linkdest/launchd.log"


def test_the_role_renders_a_plist_launchd_can_read(tmp_path):
    play = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {
                "__backup_client_launchd_label": ROLE_VARS["__backup_client_launchd_label"],
                "__backup_client_command": ROLE_VARS["__backup_client_command"],
                "__backup_client_launchd_log": LOG,
            },
            "tasks": [
                {
                    "name": "Render the LaunchAgent for each schedule",
                    "ansible.builtin.template": {
                        "src": str(TEMPLATE),
                        "dest": str(tmp_path) + "/{{ index }}.plist",
                        "mode": "0644",
                    },
                    "vars": {
                        "backup_client_schedule": "{{ item }}",
                        "__backup_client_calendar": "{{ item | linkdest.backup.launchd_calendar }}",
                    },
                    "loop": SCHEDULES,
                    "loop_control": {"index_var": "index"},
                }
            ],
        }
    ]
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump(play))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"), ANSIBLE_NOCOLOR="1")
    result = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "ansible-playbook"), str(playbook)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for index, schedule in enumerate(SCHEDULES):
        with open(tmp_path / ("%d.plist" % index), "rb") as handle:
            agent = plistlib.load(handle)
        assert agent["Label"] == ROLE_VARS["__backup_client_launchd_label"]
        assert agent["ProgramArguments"] == [
            ROLE_VARS["__backup_client_command"],
            "backup",
            "--quiet",
        ]
        assert agent["StartCalendarInterval"] == calendar_intervals(schedule), schedule
        assert agent["StandardOutPath"] == agent["StandardErrorPath"] == LOG
        assert agent["LowPriorityIO"] is True
        assert agent["ProcessType"] == "Background"
        assert agent["Nice"] > 0
        # launchd must not start a backup the moment the agent loads (a login).
        assert "RunAtLoad" not in agent
        assert "StartInterval" not in agent
