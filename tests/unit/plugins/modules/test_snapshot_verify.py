# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the snapshot_verify module on real files: check mode changes
nothing, a run repairs from the other drive, damage on both fails the task."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import linkdest_testlib as lib
import pytest

from ansible_collections.linkdest.backup.plugins.module_utils import scrub
from ansible_collections.linkdest.backup.plugins.modules import snapshot_verify

RSYNC = shutil.which("rsync")
NAMES = ["back-2026-11-0%dT10_00_00" % n for n in (1, 2)]


def tree(top: Path) -> dict:
    out = {}
    for base, dirs, files in os.walk(top):
        for name in dirs + files:
            path = Path(base, name)
            st = path.lstat()
            data = path.read_bytes() if path.is_file() else None
            out[str(path.relative_to(top))] = (st.st_ino, st.st_mode, st.st_mtime_ns, data)
    return out


@pytest.fixture
def drives(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    area = one / "laptop"
    for index, name in enumerate(NAMES):
        (area / name / "docs").mkdir(parents=True)
        if index:
            os.link(area / NAMES[0] / "docs" / "a.txt", area / name / "docs" / "a.txt")
        else:
            (area / name / "docs" / "a.txt").write_text("alpha\n" * 100)
        (area / name / "docs" / ("only-%d" % index)).write_text("only %d\n" % index)
        scrub.make_manifest(str(one), "laptop", name)
    subprocess.run([RSYNC, "-aH", "%s/" % one, "%s/" % two], check=True)
    return one, two, tmp_path / "state"


def args(one, two, state, **more):
    return dict(root=str(one), other_root=str(two), state_dir=str(state), restart=True, **more)


def test_check_mode_reports_damage_and_changes_nothing(run_module, drives):
    one, two, state = drives
    lib.flip_byte(one / "laptop" / NAMES[1] / "docs" / "a.txt")
    before = (tree(one), tree(two))

    failed, result = run_module(snapshot_verify, args(one, two, state), check=True, diff=True)

    assert failed
    assert result["changed"] is False
    assert len(result["damaged"]) == 2  # the inode both snapshots share
    assert result["diff"]["before"] == result["diff"]["after"]
    assert (tree(one), tree(two)) == before
    assert not state.exists()


def test_a_run_repairs_from_the_other_drive_then_reports_nothing(run_module, drives):
    one, two, state = drives
    lib.flip_byte(one / "laptop" / NAMES[0] / "docs" / "a.txt")

    failed, result = run_module(snapshot_verify, args(one, two, state), diff=True)

    assert not failed, result
    assert result["changed"] is True
    assert len(result["repaired"]) == 2
    assert result["damaged"] == []
    assert result["diff"]["after"] == ""
    assert [d["complete"] for d in result["drives"]] == [True, True]
    assert (one / "laptop" / NAMES[1] / "docs" / "a.txt").read_text() == "alpha\n" * 100

    failed, result = run_module(snapshot_verify, args(one, two, state))
    assert not failed
    assert result["changed"] is False


def test_damage_on_both_drives_fails_the_task_unless_told_not_to(run_module, drives):
    one, two, state = drives
    for drive in (one, two):
        lib.flip_byte(drive / "laptop" / NAMES[1] / "docs" / "only-1")
    failed, result = run_module(snapshot_verify, args(one, two, state))
    assert failed
    assert "2 damaged file(s) not repaired" in result["msg"]
    failed, result = run_module(snapshot_verify, args(one, two, state, fail_on_damage=False))
    assert not failed
    assert {d["drive"] for d in result["damaged"]} == {str(one), str(two)}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"sample_percent": 0}, "sample_percent"),
        ({"max_time": 0}, "max_time"),
        ({"clients": ["../etc"]}, "plain directory names"),
    ],
)
def test_bad_input_fails_before_anything_is_read(run_module, drives, bad, message):
    one, two, state = drives
    failed, result = run_module(snapshot_verify, args(one, two, state, **bad))
    assert failed
    assert message in result["msg"]
    assert not state.exists()
