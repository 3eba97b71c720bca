# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The backup drive comes loose (runs after test_lifecycle.py, on its world).

The drive's mount is moved away inside the server container (``mount
--move``), as an unplug leaves it: an empty directory on the system disk where
the drive was. Every server verb and a laptop's run name the missing drive,
nothing is written under the mount point, and once the drive is back every
finished snapshot is as it was and backups go on.
"""

import os
import pathlib
import subprocess

import linkdest_testlib as lib

CLIENT = "lifecycle-laptop"
SERVER_CMD = "/usr/local/sbin/linkdest-server"
AWAY = "/mnt/unplugged-drive"
MISSING = "backup drive %s is not mounted" % lib.ROOT
REPO = pathlib.Path(__file__).resolve().parents[3]


def status_playbook() -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "linkdest.backup.status"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def test_every_verb_and_a_laptop_name_the_unplugged_drive(server, laptop):
    before = lib.fingerprint(server)
    lib.write_file(laptop, "while-unplugged.txt", "waiting for the drive\n")
    lib.run_ok(server, "mkdir -p %s && mount --move %s %s" % (AWAY, lib.ROOT, AWAY))
    try:
        assert server.run("mountpoint -q %s" % lib.ROOT).rc != 0
        results = {
            verb: server.run("%s %s" % (SERVER_CMD, verb))
            for verb in (
                "list " + CLIENT,
                "prune --all --quiet",
                "manifest --all --quiet",
                "verify --quiet",
                "adopt " + CLIENT,
                "check",
            )
        }
        modules = {
            module: lib.run_module("lifecycle-server", "linkdest.backup." + module, args)
            for module, args in (
                ("snapshot_info", {"client": CLIENT}),
                ("snapshot_prune", {"client": CLIENT, "max_age_days": 1, "min_keep": 1}),
                ("snapshot_verify", {"restart": True}),
            )
        }
        backup = lib.backup(laptop)
        status_run = status_playbook()
        log = laptop.file(lib.HOME + "/.local/state/linkdest/linkdest.log").content_string
        status = lib.read_status(laptop)
        left_behind = server.run("find %s -mindepth 1" % lib.ROOT).stdout
    finally:
        lib.run_ok(server, "mount --move %s %s" % (AWAY, lib.ROOT))
    for verb, result in results.items():
        assert result.rc == 72, (verb, result.stdout, result.stderr)
        assert MISSING in result.stdout + result.stderr, verb
    assert "(since " in results["check"].stdout
    for module, result in modules.items():
        assert result.get("failed"), (module, result)
        assert result["msg"] == MISSING, module
        assert result["drive_mounted"] is False, module
    # The fleet table names the drive on every row and fails at its end.
    table = status_run.stdout + status_run.stderr
    assert status_run.returncode != 0, table[-3000:]
    assert "%s DRIVE NOT MOUNTED" % CLIENT in " ".join(table.split()), table[-3000:]
    assert "is NOT MOUNTED (unplugged?)" in table
    assert "The backup drive is not mounted." in table
    assert "does not exist" not in table
    assert "no finished snapshot" not in results["check"].stdout
    assert backup.rc == 72, backup.stdout + backup.stderr
    assert "the server refused the backup" in status["last_error"]
    assert MISSING in status["last_error"]
    assert "sending everything" not in log.split("backup of")[-1]
    assert left_behind == ""
    # The drive is back: history as it was, and backups go on.
    assert lib.fingerprint(server) == before
    assert MISSING not in server.run("%s check" % SERVER_CMD).stdout
    lib.backup_ok(laptop)
