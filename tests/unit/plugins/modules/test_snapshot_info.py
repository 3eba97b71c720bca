# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the snapshot_info module: it reports and never changes anything."""

from __future__ import annotations

import os

import pytest

from ansible_collections.linkdest.backup.plugins.modules import snapshot_info

T1 = "2026-11-26T11_40_37"
T2 = "2026-11-26T12_10_02"
T3 = "2026-11-26T12_40_00"


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
    for name in ("back-" + T2, "back-" + T1, "incomplete_back-" + T3, "notes"):
        (area / name).mkdir()
    (area / "back-2026-11-27T00_00_00").symlink_to(tmp_path)  # never listed
    return area


def args_for(area):
    return {"root": str(area.parent), "client": area.name}


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        ("back-" + T1, "back-" + T1),
        ("ARTICLE", "back-" + T2),
        ("back-2030-01-01T00_00_00", None),
        ("incomplete_back-" + T3, None),
        (None, None),
    ],
    ids=["relative", "article-absolute", "dangling", "incomplete", "missing"],
)
@pytest.mark.parametrize(
    ("check", "diff"),
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["run", "check", "diff", "check-diff"],
)
def test_info_reports_and_never_changes(run_module, area, current, expected, check, diff):
    if current == "ARTICLE":
        (area / "current").symlink_to(area / ("back-" + T2))
    elif current is not None:
        (area / "current").symlink_to(current)
    before = tree(area.parent)

    failed, result = run_module(snapshot_info, args_for(area), check=check, diff=diff)

    assert not failed, result
    assert result == {
        "changed": False,
        "snapshots": [
            {
                "name": "back-" + T1,
                "time": "2026-11-26T11:40:37+00:00",
                "current": expected == "back-" + T1,
            },
            {
                "name": "back-" + T2,
                "time": "2026-11-26T12:10:02+00:00",
                "current": expected == "back-" + T2,
            },
        ],
        "incomplete": ["incomplete_back-" + T3],
        "current": expected,
        "last_check": None,
    }
    assert tree(area.parent) == before


def test_info_reports_the_check_that_vouches_for_the_newest_snapshot(run_module, area):
    from datetime import datetime, timezone

    from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap

    when = datetime(2026, 11, 26, 14, 0, tzinfo=timezone.utc)
    snap.record_check(str(area), "back-" + T2, when)
    failed, result = run_module(snapshot_info, args_for(area))
    assert not failed, result
    assert result["last_check"] == {"snapshot": "back-" + T2, "time": when.isoformat()}
    # A check of an older snapshot vouches for nothing.
    snap.record_check(str(area), "back-" + T1, when)
    assert run_module(snapshot_info, args_for(area))[1]["last_check"] is None


def test_info_on_an_empty_area(run_module, tmp_path):
    (tmp_path / "laptop").mkdir()
    failed, result = run_module(snapshot_info, {"root": str(tmp_path), "client": "laptop"})
    assert not failed
    assert result == {
        "changed": False,
        "snapshots": [],
        "incomplete": [],
        "current": None,
        "last_check": None,
    }
    assert os.listdir(tmp_path / "laptop") == []


@pytest.mark.parametrize(
    ("client", "message"),
    [("nobody", "does not exist"), ("..", "plain directory name"), ("a/b", "plain directory name")],
    ids=["missing-area", "parent", "nested"],
)
def test_info_failures_are_clear(run_module, area, client, message):
    before = tree(area.parent)
    failed, result = run_module(snapshot_info, {"root": str(area.parent), "client": client})
    assert failed
    assert message in result["msg"]
    assert tree(area.parent) == before


def test_info_refuses_a_symlinked_area(run_module, area):
    (area.parent / "alias").symlink_to(area)
    failed, result = run_module(snapshot_info, {"root": str(area.parent), "client": "alias"})
    assert failed
    assert "not a directory" in result["msg"]


def blocks(path):
    return os.lstat(path).st_blocks * 512


def test_disk_usage_counts_only_what_each_snapshot_alone_holds(run_module, tmp_path):
    area = tmp_path / "laptop"
    first, second = area / ("back-" + T1), area / ("back-" + T2)
    first.mkdir(parents=True)
    second.mkdir()
    (first / "unchanged").write_bytes(os.urandom(16384))
    os.link(first / "unchanged", second / "unchanged")
    (second / "new").write_bytes(os.urandom(32768))
    (second / "link").symlink_to("/etc/passwd")
    (area / "current").symlink_to(second.name)
    before = tree(area)

    for check in (False, True):
        failed, result = run_module(
            snapshot_info, {"root": str(tmp_path), "client": "laptop", "disk_usage": True}, check
        )
        assert not failed, result
        assert result["changed"] is False
        by_name = {s["name"]: s for s in result["snapshots"]}
        assert by_name[first.name]["added_bytes"] == blocks(first)
        assert by_name[first.name]["added_inodes"] == 1
        assert by_name[second.name]["added_bytes"] == (
            blocks(second) + blocks(second / "new") + blocks(second / "link")
        )
        assert by_name[second.name]["added_inodes"] == 3
        assert by_name[second.name]["current"] is True
    assert tree(area) == before


def test_verification_state_per_snapshot(run_module, tmp_path):
    """Trusted, missing and untrusted manifests, and what verify recorded."""
    from ansible_collections.linkdest.backup.plugins.module_utils import manifest as mf
    from ansible_collections.linkdest.backup.plugins.module_utils import scrub

    area = tmp_path / "laptop"
    names = ["back-" + t for t in (T1, T2, T3)]
    for name in names:
        (area / name).mkdir(parents=True)
        (area / name / "file").write_text(name)
    for name in names[:2]:
        scrub.make_manifest(str(tmp_path), "laptop", name)
    os.chown(mf.manifest_path(str(tmp_path), "laptop", names[1]), 1000, 1000)
    (area / names[0] / "file").write_text("X" * len(names[0]))
    os.utime(area / names[0] / "file", ns=(0, 0))
    report = scrub.verify_drive(str(tmp_path), ["laptop"])
    state_dir = tmp_path / "state"
    state = {}
    scrub.record(state, report, scrub.datetime(2026, 11, 29, 4, 30, tzinfo=scrub.timezone.utc))
    scrub.write_state(str(state_dir), state)
    before = tree(tmp_path)

    failed, result = run_module(
        snapshot_info,
        {
            "root": str(tmp_path),
            "client": "laptop",
            "verification": True,
            "state_dir": str(state_dir),
        },
        True,
    )

    assert not failed, result
    by_name = {s["name"]: s for s in result["snapshots"]}
    assert by_name[names[0]]["manifest"] == "trusted"
    assert by_name[names[0]]["damaged"] == ["file"]
    assert by_name[names[0]]["verified"] == "2026-11-29T04:30:00+00:00"
    assert by_name[names[1]]["verified"] is None  # no trusted manifest: never checked
    assert by_name[names[1]]["manifest"].startswith("not trusted: ")
    assert by_name[names[2]]["manifest"] == "missing"
    assert tree(tmp_path) == before
