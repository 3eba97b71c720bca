# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the snapshot_prune module, run in-process on tmp_path."""

from __future__ import annotations

import os
from datetime import datetime, time, timedelta, timezone
from types import SimpleNamespace

import pytest

from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap
from ansible_collections.linkdest.backup.plugins.modules import snapshot_prune

UTC = timezone.utc
TODAY = datetime.now(UTC).date()
# Snapshot times relative to today, so the module's real clock decides as the
# test expects: two on one day three days ago, two in one week two months ago.
DAY = TODAY - timedelta(days=3)
MONDAY = TODAY - timedelta(days=TODAY.weekday() + 56)


def at(day, hour):
    return snap.snapshot_name(datetime.combine(day, time(hour), tzinfo=UTC))


WEEK_FIRST = at(MONDAY, 8)
WEEK_LATER = at(MONDAY + timedelta(days=2), 8)
DAY_FIRST = at(DAY, 2)
DAY_LATER = at(DAY, 3)
RECENT = snap.snapshot_name(datetime.now(UTC) - timedelta(hours=1))
ALL = [WEEK_FIRST, WEEK_LATER, DAY_FIRST, DAY_LATER, RECENT]


def tree(path):
    found = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            found[os.path.relpath(full, path)] = os.readlink(full) if os.path.islink(full) else None
    return found


@pytest.fixture
def area(tmp_path):
    area = tmp_path / "root" / "laptop"
    area.mkdir(parents=True)
    shared = None
    for name in ALL:
        (area / name).mkdir()
        (area / name / "own").write_bytes(os.urandom(8192))
        if shared is None:
            shared = area / name / "shared"
            shared.write_text("in every snapshot")
        else:
            os.link(shared, area / name / "shared")
    (area / ("incomplete_" + WEEK_LATER)).mkdir()  # never counted, never pruned
    (area / "current").symlink_to(RECENT)
    return area


def args_for(area, **extra):
    return dict({"root": str(area.parent), "client": area.name}, **extra)


def snapshots_in(area):
    return sorted(n for n in os.listdir(area) if n.startswith("back-"))


WEEK = "weekly %d-W%02d" % MONDAY.isocalendar()[:2]
EXPECTED_DECISIONS = [
    (WEEK_FIRST, "keep", WEEK),
    (WEEK_LATER, "remove", "thinned (%s kept by %s)" % (WEEK, WEEK_FIRST)),
    (DAY_FIRST, "keep", "daily %s" % DAY.isoformat()),
    (DAY_LATER, "remove", "thinned (daily %s kept by %s)" % (DAY.isoformat(), DAY_FIRST)),
    (RECENT, "keep", "newest"),
]


def test_prune_thins_then_is_idempotent(run_module, area):
    failed, result = run_module(snapshot_prune, args_for(area))

    assert not failed, result
    assert result["changed"] is True
    assert result["removed"] == [WEEK_LATER, DAY_LATER]
    assert result["kept"] == [WEEK_FIRST, DAY_FIRST, RECENT]
    assert [(d["name"], d["action"], d["rule"]) for d in result["decisions"]] == EXPECTED_DECISIONS
    assert result["finished_deletions"] == []
    assert "free" not in result
    assert snapshots_in(area) == [WEEK_FIRST, DAY_FIRST, RECENT]
    assert (area / ("incomplete_" + WEEK_LATER)).is_dir()
    assert (area / RECENT / "shared").read_text() == "in every snapshot"
    # The lock file the module made can still be locked by the area's owner.
    assert (area / snap.LOCK_FILE).stat().st_uid == area.stat().st_uid

    for check in (False, True):
        failed, again = run_module(snapshot_prune, args_for(area), check=check)
        assert not failed, again
        assert again["changed"] is False
        assert again["removed"] == []
        assert again["kept"] == [WEEK_FIRST, DAY_FIRST, RECENT]


@pytest.mark.parametrize("diff", [False, True], ids=["check", "check-diff"])
def test_check_mode_reports_the_same_and_changes_nothing(run_module, area, diff):
    before = tree(area)
    failed, checked = run_module(snapshot_prune, args_for(area), check=True, diff=diff)
    assert not failed, checked
    assert tree(area) == before  # not even a lock file
    assert checked["changed"] is True
    assert checked["removed"] == [WEEK_LATER, DAY_LATER]
    assert ("diff" in checked) is diff

    failed, real = run_module(snapshot_prune, args_for(area), diff=diff)
    assert not failed, real
    for key in ("changed", "removed", "kept", "decisions", "finished_deletions"):
        assert checked[key] == real[key], key
    assert set(checked) == set(real)


def test_diff_shows_the_snapshots_before_and_after(run_module, area):
    failed, result = run_module(snapshot_prune, args_for(area), diff=True)
    assert not failed, result
    assert result["diff"] == {
        "before": {"snapshots": ALL},
        "after": {"snapshots": [WEEK_FIRST, DAY_FIRST, RECENT]},
    }


def test_policy_options_and_min_keep(run_module, area):
    failed, result = run_module(
        snapshot_prune, args_for(area, keep_all_hours=24, max_age_days=2, min_keep=2)
    )
    assert not failed, result
    # Everything but the newest is too old; min_keep brings back the newest removed one.
    assert result["kept"] == [DAY_LATER, RECENT]
    rules = {d["name"]: d["rule"] for d in result["decisions"]}
    assert rules[DAY_LATER] == "min_keep"
    assert rules[WEEK_FIRST] == "older than max_age_days (2)"


def test_current_is_never_removed(run_module, area):
    (area / "current").unlink()
    (area / "current").symlink_to(WEEK_LATER)
    failed, result = run_module(snapshot_prune, args_for(area, max_age_days=1, min_keep=1))
    assert not failed, result
    assert result["kept"] == [WEEK_LATER, RECENT]
    assert {d["name"]: d["rule"] for d in result["decisions"]}[WEEK_LATER] == "current"


def test_an_interrupted_deletion_is_finished(run_module, area):
    trash = area / (snap.TRASH_PREFIX + "back-2026-01-01T00_00_00")
    (trash / "sub").mkdir(parents=True)
    failed, checked = run_module(snapshot_prune, args_for(area), check=True)
    assert checked["finished_deletions"] == ["back-2026-01-01T00_00_00"]
    assert trash.exists()
    failed, result = run_module(snapshot_prune, args_for(area))
    assert not failed, result
    assert result["finished_deletions"] == ["back-2026-01-01T00_00_00"]
    assert not trash.exists()


class Drive:
    """statvfs of a drive of ``total`` bytes whose use is what the root's files hold."""

    def __init__(self, root, total):
        self.root = root
        self.total = total

    def __call__(self, _path):
        seen, used = set(), 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            for entry in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, entry))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    used += st.st_blocks * 512
        return SimpleNamespace(
            f_frsize=1, f_blocks=self.total, f_bavail=self.total - used, f_files=0, f_favail=0
        )


def test_space_guard_removes_the_oldest_kept_and_reports_the_drive(run_module, area, monkeypatch):
    for name in ALL:
        (area / name / "big").write_bytes(os.urandom(100 * 1024))
    # About 570 KiB used of 1000: 65% free after thinning, 76% once the oldest is gone.
    monkeypatch.setattr(os, "statvfs", Drive(area.parent, 1000 * 1024))
    args = args_for(area, space_guard={"min_free_percent": 70, "protect_days": 0}, min_keep=1)

    failed, checked = run_module(snapshot_prune, args, check=True)
    failed, result = run_module(snapshot_prune, args)

    assert not failed, result
    # Thinning comes first, then the oldest kept snapshot goes.
    assert result["removed"] == [WEEK_LATER, DAY_LATER, WEEK_FIRST]
    rules = {d["name"]: d["rule"] for d in result["decisions"]}
    assert rules[WEEK_FIRST].startswith("space guard (")
    assert "is below 70%" in rules[WEEK_FIRST]
    assert result["free"]["free_bytes"] >= 0.70 * 1000 * 1024
    assert result["free"]["still_short"] is None
    # Check mode estimated the same from the snapshots' inodes.
    assert checked["removed"] == result["removed"]


def test_space_guard_stops_at_min_keep(run_module, area, monkeypatch):
    monkeypatch.setattr(os, "statvfs", Drive(area.parent, 100 * 1024))
    failed, result = run_module(
        snapshot_prune,
        args_for(area, space_guard={"min_free_mib": 1, "protect_days": 0}, min_keep=2),
    )
    assert not failed, result
    assert result["kept"] == [DAY_FIRST, RECENT]
    assert "is below 10% and 1 MiB" in result["free"]["still_short"]


def test_space_guard_keeps_the_protected_days_and_the_snapshot_before(
    run_module, area, monkeypatch
):
    monkeypatch.setattr(os, "statvfs", Drive(area.parent, 100 * 1024))
    failed, result = run_module(
        snapshot_prune, args_for(area, space_guard={"min_free_mib": 1}, min_keep=1)
    )
    assert not failed, result
    # Only thinning removed anything: DAY_FIRST and RECENT are of the last 30
    # days, WEEK_FIRST is the newest before them.
    assert result["removed"] == [WEEK_LATER, DAY_LATER]
    assert result["kept"] == [WEEK_FIRST, DAY_FIRST, RECENT]
    assert "is below 10% and 1 MiB" in result["free"]["still_short"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"min_keep": 0}, "min_keep must be 1 or more"),
        ({"daily_days": -1}, "daily_days must be 0 or more"),
        ({"max_age_days": 1, "keep_all_hours": 48}, "shorter than keep_all_hours"),
        ({"space_guard": {"min_free_percent": 150}}, "percentage from 0 to 100"),
        ({"space_guard": {"protect_days": -1}}, "protect_days must be 0 or more"),
        ({"lock_timeout": -1}, "lock_timeout must be 0 or more"),
        ({"client": ".."}, "plain directory name"),
        ({"client": "nobody"}, "does not exist"),
    ],
    ids=[
        "min-keep",
        "negative",
        "max-age",
        "percent",
        "protect-days",
        "lock-timeout",
        "parent",
        "missing",
    ],
)
def test_bad_input_fails_before_any_change(run_module, area, extra, message):
    before = tree(area.parent)
    failed, result = run_module(snapshot_prune, args_for(area, **extra))
    assert failed
    assert message in result["msg"]
    assert tree(area.parent) == before


def test_a_busy_area_fails_without_change(run_module, area):
    (area / snap.LOCK_FILE).touch()
    before = tree(area)
    with snap.area_lock(str(area)):
        failed, result = run_module(snapshot_prune, args_for(area, lock_timeout=0))
    assert failed
    assert "another backup, finalize or prune" in result["msg"]
    assert tree(area) == before


def test_a_partial_failure_reports_what_was_removed(run_module, area, monkeypatch):
    real_delete = snap.delete_snapshot

    def fail_second(where, name):
        if name == DAY_LATER:
            raise OSError(13, "Permission denied", name)
        return real_delete(where, name)

    monkeypatch.setattr(snap, "delete_snapshot", fail_second)
    failed, result = run_module(snapshot_prune, args_for(area), diff=True)
    assert failed
    assert "Permission denied" in result["msg"]
    assert result["changed"] is True
    assert result["removed"] == [WEEK_LATER]
    assert snapshots_in(area) == [WEEK_FIRST, DAY_FIRST, DAY_LATER, RECENT]
