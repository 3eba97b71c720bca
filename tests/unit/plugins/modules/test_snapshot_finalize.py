# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the snapshot_finalize module, run in-process on tmp_path."""

from __future__ import annotations

import os

import pytest

from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap
from ansible_collections.linkdest.backup.plugins.modules import snapshot_finalize

T1 = "2026-11-26T11_40_37"
T2 = "2026-11-26T12_10_02"
T3 = "2026-11-26T12_40_00"


@pytest.fixture
def area(tmp_path):
    """An area with one finished snapshot (current) and one incomplete one."""
    area = tmp_path / "root" / "laptop"
    area.mkdir(parents=True)
    (area / ("back-" + T1)).mkdir()
    (area / ("incomplete_back-" + T2)).mkdir()
    (area / ("incomplete_back-" + T2) / "file").write_text("data")
    (area / ("incomplete_back-" + T3)).mkdir()
    (area / "current").symlink_to("back-" + T1)
    return area


def args_for(area, **extra):
    return dict({"root": str(area.parent), "client": area.name, "snapshot": T2}, **extra)


def tree(path):
    """Every entry under ``path`` with its symlink target, to detect any change."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            found[os.path.relpath(full, path)] = os.readlink(full) if os.path.islink(full) else None
    return found


def test_finalize_then_idempotent(run_module, area):
    failed, result = run_module(snapshot_finalize, args_for(area))
    assert not failed, result
    assert result["changed"] is True
    assert result["snapshot"] == "back-" + T2
    assert result["current"] == "back-" + T2
    assert (area / ("back-" + T2) / "file").read_text() == "data"
    assert not (area / ("incomplete_back-" + T2)).exists()
    assert os.readlink(area / "current") == "back-" + T2
    after = tree(area)

    for check in (False, True):
        failed, again = run_module(snapshot_finalize, args_for(area), check=check)
        assert not failed, again
        assert again["changed"] is False
        assert (again["snapshot"], again["current"]) == ("back-" + T2, "back-" + T2)
        assert tree(area) == after


@pytest.mark.parametrize(
    "given", ["incomplete_back-" + T2, "back-" + T2, T2], ids=["incomplete", "finished", "bare"]
)
def test_check_mode_does_not_mutate(run_module, area, given):
    before = tree(area)
    failed, checked = run_module(snapshot_finalize, args_for(area, snapshot=given), check=True)
    assert not failed, checked
    assert tree(area) == before  # not even the lock file
    assert ".linkdest.lock" not in os.listdir(area)

    failed, applied = run_module(snapshot_finalize, args_for(area, snapshot=given))
    assert not failed, applied
    # Check mode predicted exactly what the real run did.
    assert checked == applied


def test_diff(run_module, area):
    failed, result = run_module(snapshot_finalize, args_for(area), check=True, diff=True)
    assert not failed, result
    assert result["diff"] == {
        "before": {
            "current": "back-" + T1,
            "finished": [],
            "incomplete": ["incomplete_back-" + T2, "incomplete_back-" + T3],
        },
        "after": {
            "current": "back-" + T2,
            "finished": ["back-" + T2],
            "incomplete": ["incomplete_back-" + T3],
        },
    }
    failed, real = run_module(snapshot_finalize, args_for(area), diff=True)
    assert real["diff"] == result["diff"]
    failed, again = run_module(snapshot_finalize, args_for(area), diff=True)
    assert again["diff"]["before"] == again["diff"]["after"]


def test_no_diff_without_diff_mode(run_module, area):
    failed, result = run_module(snapshot_finalize, args_for(area))
    assert not failed
    assert "diff" not in result


def test_update_current_false(run_module, area):
    failed, result = run_module(snapshot_finalize, args_for(area, update_current=False))
    assert not failed, result
    assert result == {"changed": True, "snapshot": "back-" + T2, "current": "back-" + T1}
    assert os.readlink(area / "current") == "back-" + T1


def test_older_snapshot_does_not_move_current_back(run_module, area):
    assert not run_module(snapshot_finalize, args_for(area, snapshot=T3))[0]
    failed, result = run_module(snapshot_finalize, args_for(area, snapshot=T2))
    assert not failed, result
    assert result["changed"] is True
    assert result["current"] == "back-" + T3
    assert os.readlink(area / "current") == "back-" + T3


def _both_exist(area):
    (area / ("back-" + T2)).mkdir()


def _current_is_a_directory(area):
    (area / "current").unlink()
    (area / "current").mkdir()


def _incomplete_is_a_symlink(area):
    os.rename(area / ("incomplete_back-" + T2), area.parent / "elsewhere")
    (area / ("incomplete_back-" + T2)).symlink_to(area.parent / "elsewhere")


FAILURES = [
    ("missing-snapshot", {"snapshot": "2030-01-01T00_00_00"}, None, "no snapshot"),
    ("bad-name", {"snapshot": "latest"}, None, "not a snapshot name"),
    ("both-exist", {}, _both_exist, "both"),
    ("current-is-a-directory", {}, _current_is_a_directory, "not a symlink"),
    ("symlinked-incomplete", {}, _incomplete_is_a_symlink, "symlink"),
    ("missing-area", {"client": "nobody"}, None, "does not exist"),
    ("parent-client", {"client": ".."}, None, "plain directory name"),
    ("nested-client", {"client": "laptop/back-" + T1}, None, "plain directory name"),
    ("negative-timeout", {"lock_timeout": -1}, None, "lock_timeout"),
]


@pytest.mark.parametrize(
    ("extra", "prepare", "message"),
    [case[1:] for case in FAILURES],
    ids=[case[0] for case in FAILURES],
)
@pytest.mark.parametrize("check", [False, True], ids=["run", "check"])
def test_failures_are_clear_and_change_nothing(run_module, area, extra, prepare, message, check):
    if prepare is not None:
        prepare(area)
    before = tree(area.parent)
    failed, result = run_module(snapshot_finalize, args_for(area, **extra), check=check)
    assert failed
    assert message in result["msg"]
    assert result.get("changed", False) is False
    after = tree(area.parent)
    after.pop(os.path.join(area.name, ".linkdest.lock"), None)
    assert after == before


def test_busy_area(run_module, area):
    before = tree(area)
    with snap.area_lock(str(area)):
        failed, result = run_module(snapshot_finalize, args_for(area, lock_timeout=0))
    assert failed
    assert "running" in result["msg"]
    after = tree(area)
    after.pop(".linkdest.lock")
    assert after == before


def test_required_options(run_module, area):
    failed, result = run_module(snapshot_finalize, {"client": "laptop"})
    assert failed
    assert "snapshot" in result["msg"]


def test_failure_after_the_rename_reports_what_happened(run_module, area, monkeypatch):
    def broken_swap(area, name):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snap, "swap_current", broken_swap)
    failed, result = run_module(snapshot_finalize, args_for(area))
    assert failed
    assert "No space left on device" in result["msg"]
    assert result["changed"] is True
    assert result["snapshot"] == "back-" + T2
    assert result["current"] == "back-" + T1
    assert (area / ("back-" + T2) / "file").read_text() == "data"
