# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Bad input stops site.yml in its first play, with a message naming the variable.

The real site.yml runs against this machine through a local connection, with
--check as a safety net: even if a check were missing, nothing could change.
The assertion that the run stopped in the first play proves nothing else ran.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHECK_PLAY = "Check every setting before changing anything"
# Never to be seen in any output (the ddns secret is no_log).
SECRET = "ddns-token-that-must-not-show"
GOOD_DDNS = {
    "enabled": True,
    "protocol": "dyndns2",
    "server": "update.provider.example",
    "login": "myhome",
    "secret": SECRET,
    "host": "home.example.net",
}
DROP = object()  # a laptop variable to leave out of the inventory


def _run_site(tmp_path, server_vars: dict, laptop_vars: dict, with_server: bool = True):
    source = tmp_path / "source"
    source.mkdir(exist_ok=True)
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    laptop = dict(local, backup_client_user="root", backup_client_source=str(source))
    laptop.update(laptop_vars)
    laptop = {key: value for key, value in laptop.items() if value is not DROP}
    server = dict(
        local, backup_server_root=str(tmp_path / "drive"), backup_server_root_must_be_mount=False
    )
    server.update(server_vars)
    inventory = {"laptops": {"hosts": {"lap": laptop}}}
    if with_server:
        inventory["backup_servers"] = {"hosts": {"srv": server}}
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"), ANSIBLE_NOCOLOR="1")
    playbook = str(pathlib.Path(sys.executable).parent / "ansible-playbook")
    return subprocess.run(
        [playbook, "-i", str(path), "--check", "site.yml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


CASES = [
    pytest.param(
        {"backup_server_root": "backups"},
        {},
        True,
        "backup_server_root must be an absolute path",
        id="relative-root",
    ),
    pytest.param(
        {"backup_server_root": "/"},
        {},
        True,
        "backup_server_root must be an absolute path",
        id="root-is-slash",
    ),
    pytest.param(
        {"backup_server_root_must_be_mount": True},
        {},
        True,
        "is not a mount point",
        id="root-not-mounted",
    ),
    pytest.param(
        {"backup_server_backend": "btrfs"},
        {},
        True,
        "The btrfs backend is chosen (backup_server_backend or backup_server_laptop_backends)",
        id="btrfs-backend-not-on-btrfs",
    ),
    pytest.param(
        {"backup_server_backend": "zfs"},
        {},
        True,
        "backup_server_backend",
        id="unknown-backend",
    ),
    pytest.param(
        {"backup_server_space_guard": {"protect_days": -1}},
        {},
        True,
        "backup_server_space_guard",
        id="negative-protect-days",
    ),
    pytest.param(
        {"backup_server_verify_sample_percent": 0},
        {},
        True,
        "backup_server_verify_sample_percent",
        id="verify-sample-zero",
    ),
    pytest.param(
        {"backup_server_verify_max_hours": -1},
        {},
        True,
        "backup_server_verify_max_hours",
        id="verify-negative-hours",
    ),
    pytest.param(
        {"backup_server_verify_schedule": "weekly"},
        {},
        True,
        "backup_server_verify_schedule",
        id="verify-bad-schedule",
    ),
    pytest.param(
        {"backup_server_laptop_backends": {"nosuchlaptop": "hardlink"}},
        {},
        True,
        'backup_server_laptop_backends "nosuchlaptop"',
        id="laptop-backend-unknown-laptop",
    ),
    pytest.param(
        {"backup_server_laptop_backends": {"lap": "zfs"}},
        {},
        True,
        'backup_server_laptop_backends "lap": "zfs"',
        id="laptop-backend-unknown-backend",
    ),
    pytest.param(
        {},
        {"backup_client_source": "/etc/hostname"},
        True,
        "backup_client_source",
        id="source-not-a-directory",
    ),
    pytest.param(
        {},
        {"backup_client_schedule": "every 30 minutes"},
        True,
        "backup_client_schedule",
        id="bad-schedule",
    ),
    pytest.param(
        {},
        {"backup_client_schedule": "*/30 * * *"},
        True,
        "backup_client_schedule",
        id="four-field-schedule",
    ),
    pytest.param(
        {},
        {"backup_client_schedule": "61 * * * *"},
        True,
        "backup_client_schedule '61 * * * *': minute 61 is outside 0-59",
        id="schedule-minute-out-of-range",
    ),
    pytest.param(
        {},
        {"backup_client_schedule": "0 0 30 2 *"},
        True,
        "backup_client_schedule '0 0 30 2 *' never runs: no month in it has day 30",
        id="schedule-no-such-date",
    ),
    pytest.param({}, {}, False, "backup_client_server", id="laptop-without-server"),
    pytest.param({}, {"backup_client_user": DROP}, True, "backup_client_user", id="no-user"),
    pytest.param(
        {}, {"backup_client_name": "Laptop.Home"}, True, "backup_client_name", id="bad-name"
    ),
    pytest.param(
        {},
        {"backup_client_source": "../../etc"},
        True,
        "must be a folder in the user's home",
        id="source-climbs-out-of-home",
    ),
    pytest.param(
        {},
        {"backup_client_inherit": "old-laptop"},
        True,
        'backup_client_inherit "old-laptop" names no snapshot area',
        id="inherit-an-area-that-does-not-exist",
    ),
    pytest.param(
        {},
        {"backup_client_inherit": "Old Laptop"},
        True,
        "backup_client_inherit",
        id="inherit-a-bad-name",
    ),
    pytest.param(
        {"backup_server_rsync_timeout": "soon"},
        {},
        True,
        "backup_server_rsync_timeout",
        id="timeout-not-int",
    ),
    pytest.param(
        {"backup_mirror_dest": "relative/drive2", "backup_mirror_dest_must_be_mount": False},
        {},
        True,
        "backup_mirror_dest must be an absolute path",
        id="mirror-relative-dest",
    ),
    pytest.param(
        {
            "backup_mirror_dest": "/tmp/x/drive/inside",
            "backup_mirror_source": "/tmp/x/drive",
            "backup_mirror_dest_must_be_mount": False,
            "backup_mirror_source_must_be_mount": False,
        },
        {},
        True,
        "must be separate trees",
        id="mirror-inside-source",
    ),
    pytest.param(
        {
            "backup_mirror_dest": "/tmp/drive2",
            "backup_mirror_dest_must_be_mount": False,
            "backup_mirror_schedule": "twice a day",
        },
        {},
        True,
        "backup_mirror_schedule",
        id="mirror-bad-schedule",
    ),
    pytest.param(
        {
            "backup_mirror_dest": "/tmp/drive2",
            "backup_mirror_dest_must_be_mount": False,
            "backup_mirror_max_removed_percent": 150,
        },
        {},
        True,
        "backup_mirror_max_removed_percent",
        id="mirror-percent-over-100",
    ),
    pytest.param(
        {"backup_server_partial_policy": "ignore"},
        {},
        True,
        "backup_server_partial_policy",
        id="bad-partial-policy",
    ),
    pytest.param(
        {"backup_server_sshd_exposed_port": 22},
        {},
        True,
        "backup_server_sshd_exposed_port 22 must be 0 (none)",
        id="exposed-port-is-the-lan-port",
    ),
    pytest.param(
        {"backup_server_sshd_exposed_port": 70000},
        {},
        True,
        "backup_server_sshd_exposed_port 70000",
        id="exposed-port-out-of-range",
    ),
    pytest.param(
        {"backup_server_ddns": {"enabled": True, "host": "home.example.net", "secret": SECRET}},
        {},
        True,
        "backup_server_ddns is enabled but incomplete or wrong",
        id="ddns-without-server",
    ),
    pytest.param(
        {"backup_server_ddns": {**GOOD_DDNS, "public_address_from": "the router"}},
        {},
        True,
        "backup_server_ddns is enabled but incomplete or wrong",
        id="ddns-bad-address-source",
    ),
    pytest.param(
        {"backup_server_ddns": {**GOOD_DDNS, "public_address_from": "web:http://ip.example/"}},
        {},
        True,
        "a plain http:// page is only for nsupdate",
        id="ddns-plain-http-with-a-password",
    ),
    pytest.param(
        {"backup_server_ddns": {**GOOD_DDNS, "login": "me other.example"}},
        {},
        True,
        "backup_server_ddns is enabled but incomplete or wrong",
        id="ddns-login-adds-a-host",
    ),
    pytest.param(
        {"backup_server_ddns": {**GOOD_DDNS, "host": "home.example.net\nserver=evil.example"}},
        {},
        True,
        "backup_server_ddns is enabled but incomplete or wrong",
        id="ddns-newline-in-a-value",
    ),
    pytest.param(
        {},
        {"backup_client_server_address": ["192.0.2.10", "home.example.net:99999"]},
        True,
        "the port must be a number from 1 to 65535",
        id="address-bad-port",
    ),
    pytest.param(
        {},
        {"backup_client_server_address": ["192.0.2.10", "home example"]},
        True,
        "backup_client_server_address 'home example' is not a host name or IP address",
        id="address-with-a-space",
    ),
    pytest.param(
        {},
        {"backup_client_server_address": ["192.0.2.10", "192.0.2.10"]},
        True,
        "backup_client_server_address lists an address twice",
        id="address-twice",
    ),
]


@pytest.mark.parametrize(("server_vars", "laptop_vars", "with_server", "message"), CASES)
def test_bad_input_stops_the_run_before_any_change(
    tmp_path, server_vars, laptop_vars, with_server, message
):
    result = _run_site(tmp_path, server_vars, laptop_vars, with_server)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in output, output
    assert SECRET not in output
    # Stopped in the check play: no later play started.
    assert CHECK_PLAY in output
    assert "PLAY [Create each laptop's backup key]" not in output, output


def test_good_input_passes_the_check_play(tmp_path):
    """The same inventory without the bad value gets past the check play (the test can fail).
    Its schedule keeps a weekday to some months: cron runs that, launchd could not, and
    this laptop is Linux, so it passes. An exposed port, dynamic DNS and two addresses
    pass too, the secret never shown."""
    result = _run_site(
        tmp_path,
        {"backup_server_sshd_exposed_port": 2222, "backup_server_ddns": GOOD_DDNS},
        {
            "backup_client_schedule": "0 9 * 1 mon",
            "backup_client_server_address": ["192.0.2.10", "home.example.net:2222"],
        },
        True,
    )
    output = result.stdout + result.stderr
    assert SECRET not in output
    assert "PLAY [Create each laptop's backup key]" in output, output
    assert "launchd cannot" not in output
