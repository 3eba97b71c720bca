# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Change lists on the btrfs backend, on a real loop-mounted btrfs image: the
new snapshot starts as a writable snapshot of current, the receiver updates
the listed files in place, and the result is what a full run makes, with every
older snapshot as it was (tests/unit/.../test_changelist.py does the same with
hard links)."""

from __future__ import annotations

import os

import pytest
from changelist_rig import (
    OPERATIONS,
    Rig,
    age_directories,
    check_steps,
    no_racy_window,
    write,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_btrfs_library import _btrfs_drive

from ansible_collections.linkdest.backup.plugins.module_utils import subvolumes


@pytest.fixture
def btrfs_root(tmp_path):
    yield from _btrfs_drive(tmp_path, "changelist")


@no_racy_window()
def test_a_btrfs_change_list_snapshot_is_a_snapshot_of_current(btrfs_root, tmp_path):
    rig = Rig(tmp_path, backend="btrfs", root=btrfs_root)
    (rig.source / "docs").mkdir()
    write(rig, "docs/big", "x" * 100000)
    write(rig, "docs/small", "s")
    age_directories(rig.source)
    first, kind = rig.backup()
    assert kind == "full"
    os.chmod(rig.source / "docs" / "small", 0o600)
    second, kind = rig.backup()
    assert kind == "changes"
    assert subvolumes.is_subvolume(str(rig.area / second))
    # The new subvolume's top starts private (0700); unlisted, it takes
    # current's mode and times.
    assert os.stat(rig.area / second).st_mode == os.stat(rig.area / first).st_mode
    assert os.stat(rig.area / second).st_mtime_ns == os.stat(rig.source).st_mtime_ns
    assert (rig.area / first / "docs" / "small").stat().st_mode & 0o777 == 0o644


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(st.lists(OPERATIONS, min_size=0, max_size=4), min_size=1, max_size=3))
def test_a_btrfs_change_list_makes_what_a_full_run_makes(btrfs_root, tmp_path_factory, steps):
    root = btrfs_root / tmp_path_factory.mktemp("x").name
    root.mkdir()
    with no_racy_window():
        check_steps(Rig(tmp_path_factory.mktemp("btrfs"), backend="btrfs", root=root), steps)
