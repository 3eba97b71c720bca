# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Getting files back through the laptop's own restricted key."""

import os
import pathlib
import subprocess
import time

import linkdest_testlib as lib

ROOT = pathlib.Path(__file__).resolve().parents[3]
RESTORED = lib.HOME + "/linkdest-restore"


def mtime(host, path):
    return host.run("stat -c %%Y %s" % path).stdout.strip()


def test_a_deleted_file_comes_back_with_its_bytes_and_mtime(laptop_b):
    lib.write_file(
        laptop_b, "restore/deleted.txt", "precious\n", mode="0640", mtime="2021-03-04 05:06:07"
    )
    original_mtime = mtime(laptop_b, lib.SOURCE + "/restore/deleted.txt")
    snapshot = lib.backup_ok(laptop_b)
    assert lib.as_user(laptop_b, "rm %s/restore/deleted.txt" % lib.SOURCE).rc == 0
    lib.backup_ok(laptop_b)

    result = lib.as_user(laptop_b, "cd %s/restore && linkdest restore deleted.txt" % lib.SOURCE)
    assert result.rc == 0, result.stderr
    # The newest snapshot that has it is the one before the deletion.
    restored = "%s/%s/deleted.txt" % (RESTORED, snapshot)
    assert laptop_b.file(restored).content_string == "precious\n"
    assert mtime(laptop_b, restored) == original_mtime
    assert laptop_b.file(restored).mode == 0o640
    assert laptop_b.file(restored).user == "alice"


def test_a_file_overwritten_two_snapshots_ago_comes_back_at_that_time(laptop_b):
    name = "report-%d.txt" % time.time_ns()
    lib.write_file(laptop_b, "restore/" + name, "draft 1\n")
    first = lib.backup_ok(laptop_b)
    time.sleep(1)
    lib.write_file(laptop_b, "restore/" + name, "draft 2\n")
    lib.backup_ok(laptop_b)
    time.sleep(1)
    lib.write_file(laptop_b, "restore/" + name, "draft 3\n")
    lib.backup_ok(laptop_b)

    versions = lib.as_user(laptop_b, "linkdest versions %s/restore/%s" % (lib.SOURCE, name))
    assert versions.rc == 0, versions.stderr
    assert len([line for line in versions.stdout.splitlines() if line.startswith("back-")]) == 3

    target = lib.HOME + "/old-drafts-%d" % time.time_ns()
    result = lib.as_user(
        laptop_b,
        "linkdest restore %s/restore/%s --at %s --to %s" % (lib.SOURCE, name, first, target),
    )
    assert result.rc == 0, result.stderr
    assert laptop_b.file(target + "/" + name).content_string == "draft 1\n"
    # The folder itself is untouched.
    assert laptop_b.file(lib.SOURCE + "/restore/" + name).content_string == "draft 3\n"


def test_restore_refuses_to_overwrite_without_the_flag(laptop_b):
    lib.write_file(laptop_b, "restore/keep.txt", "old\n")
    lib.backup_ok(laptop_b)
    lib.write_file(laptop_b, "restore/keep.txt", "new, unsaved\n")
    refused = lib.as_user(
        laptop_b, "linkdest restore %s/restore/keep.txt --to %s/restore" % (lib.SOURCE, lib.SOURCE)
    )
    assert refused.rc == 73
    assert "not overwriting" in refused.stderr
    assert laptop_b.file(lib.SOURCE + "/restore/keep.txt").content_string == "new, unsaved\n"
    forced = lib.as_user(
        laptop_b,
        "linkdest restore %s/restore/keep.txt --to %s/restore --overwrite"
        % (lib.SOURCE, lib.SOURCE),
    )
    assert forced.rc == 0, forced.stderr
    assert laptop_b.file(lib.SOURCE + "/restore/keep.txt").content_string == "old\n"


def test_restore_of_a_path_that_never_existed_says_so(laptop_b):
    result = lib.as_user(laptop_b, "linkdest restore %s/never/was.txt" % lib.SOURCE)
    assert result.rc == 67
    assert "never/was.txt is in no snapshot" in result.stderr


def test_compare_lists_what_changed_since_the_latest_snapshot(laptop_b):
    tag = time.time_ns()
    old, new = "restore/compare-old-%d.txt" % tag, "restore/compare-new-%d.txt" % tag
    lib.write_file(laptop_b, old, "x\n")
    lib.backup_ok(laptop_b)
    lib.write_file(laptop_b, new, "y\n")
    assert lib.as_user(laptop_b, "rm %s/%s" % (lib.SOURCE, old)).rc == 0
    result = lib.as_user(laptop_b, "linkdest compare")
    assert result.rc == 0, result.stderr
    assert "new:     " + new in result.stdout
    assert "deleted: " + old in result.stdout
    # A dry run: nothing came back.
    assert not laptop_b.file(lib.SOURCE + "/" + old).exists


def test_restore_playbook_brings_a_file_back(laptop_b):
    lib.write_file(laptop_b, "restore/from-control.txt", "via ansible\n")
    snapshot = lib.backup_ok(laptop_b)
    assert lib.as_user(laptop_b, "rm %s/restore/from-control.txt" % lib.SOURCE).rc == 0
    result = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            "linkdest.backup.restore",
            "--limit",
            "laptop-b",
            "-e",
            "restore_path=restore/from-control.txt",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        laptop_b.file("%s/%s/from-control.txt" % (RESTORED, snapshot)).content_string
        == "via ansible\n"
    )
