# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Every snapshot_* module refuses a drive that is not mounted, and touches nothing.

An unplugged drive leaves an empty directory on the system disk; here that is a
directory under tmp_path, which is not a mount point. The tests' other drives
are plain directories too, so the other test files switch the check off.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.linkdest.backup.plugins.modules import (
    snapshot_finalize,
    snapshot_info,
    snapshot_prune,
    snapshot_verify,
)

T1 = "2026-11-26T11_40_37"


def tree(path):
    return sorted(
        os.path.relpath(os.path.join(dirpath, name), path)
        for dirpath, dirnames, filenames in os.walk(path)
        for name in dirnames + filenames
    )


@pytest.fixture
def unplugged(tmp_path):
    """What an unplugged drive looks like, and worse: an area left behind on
    the system disk, so only the mount check can stop the module."""
    root = tmp_path / "media" / "backup_drive"
    (root / "laptop" / ("back-" + T1)).mkdir(parents=True)
    (root / "laptop" / ("incomplete_back-" + T1)).mkdir()
    return root


CASES = {
    "info": (snapshot_info, {"client": "laptop", "disk_usage": True, "verification": True}),
    "prune": (snapshot_prune, {"client": "laptop", "min_keep": 1, "max_age_days": 1}),
    "finalize": (snapshot_finalize, {"client": "laptop", "snapshot": T1}),
    "verify": (snapshot_verify, {"restart": True}),
}


@pytest.mark.parametrize("check", [False, True], ids=["run", "check"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_module_refuses_an_unmounted_drive_and_writes_nothing(
    run_module, unplugged, tmp_path, name, check
):
    module, args = CASES[name]
    state = tmp_path / "state"
    args = dict(args, root=str(unplugged), root_must_be_mount=True)
    if name in ("info", "verify"):
        args["state_dir"] = str(state)
    before = tree(tmp_path)

    failed, result = run_module(module, args, check=check)

    assert failed
    assert result["msg"] == "backup drive %s is not mounted" % unplugged
    assert result["drive_mounted"] is False
    assert tree(tmp_path) == before


def test_verify_refuses_an_unmounted_mirror_drive_before_reading_either(run_module, tmp_path):
    mirror_drive = tmp_path / "media" / "backup_drive2"
    mirror_drive.mkdir(parents=True)
    args = {
        "root": "/",  # a mount point: only the mirror drive is missing
        "other_root": str(mirror_drive),
        "root_must_be_mount": True,
        "state_dir": str(tmp_path / "state"),
    }

    failed, result = run_module(snapshot_verify, args)

    assert failed
    assert result["msg"] == "backup drive %s is not mounted" % mirror_drive
    assert result["drive_mounted"] is False
    assert tree(tmp_path) == ["media", "media/backup_drive2"]


def test_a_mounted_drive_passes_the_check(run_module, tmp_path):
    # "/" is a mount point, and has no area called like this: the module gets
    # past the drive check to the area check.
    client = "no-such-laptop-%d" % os.getpid()
    failed, result = run_module(
        snapshot_info, {"root": "/", "client": client, "root_must_be_mount": True}
    )
    assert failed
    assert result["msg"] == "backup area /%s does not exist or is not a directory" % client
    assert "drive_mounted" not in result
