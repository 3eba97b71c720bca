# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The operator playbooks, run for real against the test fleet."""

import os
import pathlib
import subprocess
import time

import linkdest_testlib as lib

ROOT = pathlib.Path(__file__).resolve().parents[3]


def playbook(name, *extra):
    return subprocess.run(
        [
            "ansible-playbook",
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            "linkdest.backup.%s" % name,
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def test_backup_now_reports_the_new_snapshots(server, laptop_a, laptop_b):
    # laptop-b settles (a backup well after its last change, so nothing is
    # left to send again); laptop-a gets a new file.
    time.sleep(1.5)
    settled = lib.backup_ok(laptop_b)
    lib.write_file(laptop_a, "backup-now.txt", "from the playbook\n")
    before = {client: lib.snapshot_names(server, client) for client in ("laptop-a", "laptop-b")}
    # laptop-k needs its user logged in (keychain); test_keychain.py covers it.
    result = playbook("backup_now", "--limit", "laptop-a,laptop-b")
    assert result.returncode == 0, result.stdout
    new = sorted(set(lib.snapshot_names(server, "laptop-a")) - set(before["laptop-a"]))
    assert len(new) == 1
    assert "snapshot %s finished" % new[0] in result.stdout
    # Nothing new on laptop-b: no snapshot, reported as such and not as a change.
    assert lib.snapshot_names(server, "laptop-b") == before["laptop-b"]
    assert "nothing changed since %s: no new snapshot" % settled in result.stdout
    recap = {line.split()[0]: line for line in result.stdout.splitlines() if " : ok=" in line}
    assert "changed=1" in recap["laptop-a"], recap
    assert "changed=0" in recap["laptop-b"], recap


def test_status_prints_one_table_for_the_fleet():
    result = playbook("status")
    assert result.returncode == 0, result.stdout
    assert "CLIENT           NEWEST SNAPSHOT" in result.stdout
    assert "REACHED AT" in result.stdout
    rows = result.stdout.replace('        "', '"')
    for client in ("laptop-a", "laptop-b"):
        assert '"%s ' % client in rows
    # Where laptop-a's last backup went: the server's only address here, its name.
    row = [line for line in rows.splitlines() if line.startswith('"laptop-a ')][0]
    assert " backup-server " in row, row


def test_status_fails_when_a_laptop_is_stale():
    # A threshold of a few seconds makes every laptop's newest snapshot stale.
    result = playbook("status", "-e", "linkdest_stale_after_hours=0.001")
    assert result.returncode != 0
    assert "Stale: ['laptop-a', 'laptop-b', 'laptop-k']" in result.stdout + result.stderr
