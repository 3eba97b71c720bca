# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of snapshots.py on real file systems (pytest's tmp_path)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap

UTC = timezone.utc
T1 = "2026-11-26T11_40_37"
T2 = "2026-11-26T12_10_02"
T3 = "2026-11-26T12_40_00"

# Where `ansible_collections` lives for this run, so a child Python imports
# the same copy of the library as the tests do.
# (.../ansible_collections/linkdest/backup/plugins/module_utils/snapshots.py)
COLLECTIONS_PATH = str(Path(snap.__file__).parents[5])


def make_area(tmp_path: Path, finished=(), incomplete=(), current=None) -> Path:
    """A client's area with the named snapshot directories and `current`."""
    area = tmp_path / "root" / "laptop"
    area.mkdir(parents=True)
    for stamp in finished:
        (area / ("back-" + stamp)).mkdir()
    for stamp in incomplete:
        (area / ("incomplete_back-" + stamp)).mkdir()
    if current is not None:
        (area / "current").symlink_to(current)
    return area


def listing(area: Path) -> list[str]:
    return sorted(os.listdir(area))


# --- naming -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "stamp"),
    [
        (datetime(2026, 11, 26, 11, 40, 37, tzinfo=UTC), "2026-11-26T11_40_37"),
        (
            datetime(2026, 11, 26, 12, 40, 37, tzinfo=timezone(timedelta(hours=1))),
            "2026-11-26T11_40_37",
        ),
        (
            datetime(2026, 11, 25, 22, 0, 0, tzinfo=timezone(timedelta(hours=-5))),
            "2026-11-26T03_00_00",
        ),
        (
            datetime(2027, 1, 1, 0, 30, 0, tzinfo=timezone(timedelta(hours=2))),
            "2026-12-31T22_30_00",
        ),
    ],
    ids=["utc", "cet-to-utc", "est-crosses-midnight", "cest-crosses-new-year"],
)
def test_name_round_trip_in_utc(when, stamp):
    assert snap.format_stamp(when) == stamp
    for complete, prefix in ((True, "back-"), (False, "incomplete_back-")):
        name = snap.snapshot_name(when, complete=complete)
        assert name == prefix + stamp
        parsed = snap.parse_snapshot_name(name)
        assert parsed == snap.Snapshot(name=name, time=when.astimezone(UTC), complete=complete)
        assert parsed.time == when  # the same instant
        assert parsed.stamp == stamp


def test_naive_datetime_is_rejected():
    with pytest.raises(ValueError, match="timezone-aware"):
        snap.format_stamp(datetime(2026, 11, 26, 11, 40, 37))
    with pytest.raises(ValueError, match="timezone-aware"):
        snap.snapshot_name(datetime(2026, 11, 26, 11, 40, 37))


@pytest.mark.parametrize(
    "name",
    [
        "current",
        ".linkdest.lock",
        "back-",
        "back-2026-11-26",
        "back-2026-11-26T11:40:37",
        "back-2026-11-26 11_40_37",
        "back-2026-13-01T00_00_00",
        "back-2026-02-30T00_00_00",
        "back-2026-11-26T25_00_00",
        "back-2026-11-26T11_40_37.tmp",
        "back-2026-11-26T11_40_37\n",
        "xback-2026-11-26T11_40_37",
        "incomplete_back-",
        "incomplete_2026-11-26T11_40_37",
        "back-back-2026-11-26T11_40_37",
        "2026-11-26T11_40_37",
    ],
    ids=[
        "current",
        "lock-file",
        "bare-prefix",
        "date-only",
        "colons",
        "space",
        "month-13",
        "february-30",
        "hour-25",
        "suffix",
        "trailing-newline",
        "leading-junk",
        "bare-incomplete-prefix",
        "wrong-incomplete-prefix",
        "double-prefix",
        "bare-stamp",
    ],
)
def test_junk_names_are_not_snapshots(name):
    assert snap.parse_snapshot_name(name) is None


@pytest.mark.parametrize(
    ("given", "stamp"),
    [
        ("back-" + T1, T1),
        ("incomplete_back-" + T1, T1),
        (T1, T1),
    ],
    ids=["finished", "incomplete", "bare"],
)
def test_stamp_of_accepts_the_three_forms(given, stamp):
    assert snap.stamp_of(given) == stamp


@pytest.mark.parametrize(
    "given",
    ["", "current", "back-", "back-" + T1 + "\n", "../back-" + T1, "back-" + T1 + "/x"],
    ids=["empty", "current", "bare-prefix", "trailing-newline", "parent-path", "sub-path"],
)
def test_stamp_of_refuses_junk(given):
    with pytest.raises(snap.SnapshotNotFoundError):
        snap.stamp_of(given)


def test_article_local_time_names_are_adopted_in_their_order(tmp_path):
    # The article's script named snapshots with `date` in local time, across a
    # DST change here; they are read as UTC and keep the order they sort in.
    names = [
        "back-2026-03-29T01_30_00",
        "back-2026-03-29T03_10_00",
        "back-2026-10-25T02_40_00",
        "back-2026-10-25T02_50_00",
    ]
    area = make_area(tmp_path, finished=[n[len("back-") :] for n in names])
    (area / "current").symlink_to(area / names[-1])  # article: absolute `ln -s`
    listed = snap.list_snapshots(str(area))
    assert [s.name for s in listed] == names
    assert all(s.time.tzinfo is UTC and s.complete for s in listed)
    assert snap.read_current(str(area)) == names[-1]


# --- listing ------------------------------------------------------------------


def test_listing_ignores_symlinks_and_other_entries(tmp_path):
    area = make_area(tmp_path, finished=[T2, T1], incomplete=[T3], current="back-" + T2)
    outside = tmp_path / "outside"
    outside.mkdir()
    (area / "back-2026-11-27T00_00_00").symlink_to("back-" + T1)
    (area / "back-2026-11-28T00_00_00").symlink_to(outside)
    (area / "incomplete_back-2026-11-29T00_00_00").symlink_to(outside)
    (area / "back-2026-11-30T00_00_00").write_text("a file, not a snapshot")
    (area / "notes").mkdir()
    (area / "back-junk").mkdir()
    (area / ".linkdest.lock").touch()

    assert [s.name for s in snap.list_snapshots(str(area))] == ["back-" + T1, "back-" + T2]
    assert [s.name for s in snap.list_incomplete(str(area))] == ["incomplete_back-" + T3]


def test_listing_a_missing_area_is_a_layout_error(tmp_path):
    with pytest.raises(snap.LayoutError, match="does not exist"):
        snap.list_snapshots(str(tmp_path / "nope"))


# --- current ------------------------------------------------------------------

READ_CURRENT_CASES = [
    # (id, how to make `current`, expected)
    ("relative", lambda area: "back-" + T2, "back-" + T2),
    ("relative-dot", lambda area: "./back-" + T1, "back-" + T1),
    ("relative-via-parent", lambda area: "../laptop/back-" + T1, "back-" + T1),
    ("article-absolute", lambda area: str(area / ("back-" + T2)), "back-" + T2),
    ("dangling", lambda area: "back-2030-01-01T00_00_00", None),
    ("outside-absolute", lambda area: str(area.parent / "other" / ("back-" + T1)), None),
    ("outside-relative", lambda area: "../other/back-" + T1, None),
    ("nested-relative", lambda area: "laptop/back-" + T1, None),
    ("incomplete", lambda area: "incomplete_back-" + T3, None),
    ("symlink-snapshot", lambda area: "back-2026-11-27T00_00_00", None),
    ("not-a-snapshot", lambda area: "notes", None),
    ("a-file", lambda area: "back-2026-11-30T00_00_00", None),
    ("missing", None, None),
]


@pytest.mark.parametrize(
    ("make_target", "expected"),
    [case[1:] for case in READ_CURRENT_CASES],
    ids=[case[0] for case in READ_CURRENT_CASES],
)
def test_read_current(tmp_path, monkeypatch, make_target, expected):
    area = make_area(tmp_path, finished=[T1, T2], incomplete=[T3])
    other = area.parent / "other"
    other.mkdir()
    (other / ("back-" + T1)).mkdir()
    (area / "back-2026-11-27T00_00_00").symlink_to(other / ("back-" + T1))
    (area / "back-2026-11-30T00_00_00").write_text("")
    (area / "notes").mkdir()
    (area / "laptop").mkdir()  # so "laptop/back-T1" would resolve from the root
    (area / "laptop" / ("back-" + T1)).mkdir()
    if make_target is not None:
        (area / "current").symlink_to(make_target(area))
    # The answer must not depend on the working directory: from the root,
    # "laptop/back-T1" names the area's own snapshot, from the area it does not.
    for cwd in (tmp_path, area.parent, area):
        monkeypatch.chdir(cwd)
        assert snap.read_current(str(area)) == expected


def test_read_current_of_a_real_directory_is_none(tmp_path):
    area = make_area(tmp_path, finished=[T1])
    (area / "current").mkdir()
    assert snap.read_current(str(area)) is None


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        ("back-" + T1, "back-" + T1),
        (None, "back-" + T2),
        ("back-2030-01-01T00_00_00", "back-" + T2),
        ("incomplete_back-" + T3, "back-" + T2),
    ],
    ids=["valid-older-is-kept", "missing-newest", "dangling-newest", "incomplete-newest"],
)
def test_current_snapshot_falls_back_to_newest(tmp_path, current, expected):
    area = make_area(tmp_path, finished=[T1, T2], incomplete=[T3], current=current)
    assert snap.current_snapshot(str(area)).name == expected


def test_current_snapshot_of_an_empty_area_is_none(tmp_path):
    area = make_area(tmp_path, incomplete=[T3])
    assert snap.current_snapshot(str(area)) is None


# --- starting a snapshot ------------------------------------------------------

NOW = datetime(2026, 11, 26, 11, 40, 37, tzinfo=UTC)


@pytest.mark.parametrize(
    ("taken", "expected"),
    [
        ([], "incomplete_back-2026-11-26T11_40_37"),
        (["back-2026-11-26T11_40_37"], "incomplete_back-2026-11-26T11_40_38"),
        (["incomplete_back-2026-11-26T11_40_37"], "incomplete_back-2026-11-26T11_40_38"),
        (
            ["back-2026-11-26T11_40_37", "incomplete_back-2026-11-26T11_40_38"],
            "incomplete_back-2026-11-26T11_40_39",
        ),
        (
            ["incomplete_back-2026-11-26T11_40_37", "back-2026-11-26T11_40_38"],
            "incomplete_back-2026-11-26T11_40_39",
        ),
    ],
    ids=["free", "finished-taken", "incomplete-taken", "both-then-incomplete", "both-then-back"],
)
def test_start_incomplete_takes_the_next_free_second(tmp_path, taken, expected):
    area = make_area(tmp_path)
    for name in taken:
        (area / name).mkdir()
        (area / name / "keep").write_text("untouched")
    before = {name: sorted(os.listdir(area / name)) for name in taken}

    started = snap.start_incomplete(str(area), NOW)

    assert started.name == expected
    assert started.complete is False
    assert started.time == snap.parse_snapshot_name(expected).time
    assert os.listdir(area / expected) == []
    assert (area / expected).stat().st_mode & 0o777 == 0o700
    assert {name: sorted(os.listdir(area / name)) for name in taken} == before


def test_start_incomplete_names_in_utc(tmp_path):
    area = make_area(tmp_path)
    local = NOW.astimezone(timezone(timedelta(hours=9)))
    assert snap.start_incomplete(str(area), local).name == "incomplete_back-" + T1


def test_start_incomplete_gives_up_when_every_second_is_taken(tmp_path, monkeypatch):
    area = make_area(tmp_path)
    monkeypatch.setattr(snap, "_NAME_ATTEMPTS", 3)
    for offset in range(3):
        (area / snap.snapshot_name(NOW + timedelta(seconds=offset))).mkdir()
    with pytest.raises(snap.NameCollisionError):
        snap.start_incomplete(str(area), NOW)


@pytest.mark.parametrize("kind", ["missing", "symlink"], ids=["missing", "symlink"])
def test_start_incomplete_refuses_a_bad_area(tmp_path, kind):
    area = tmp_path / "laptop"
    if kind == "symlink":
        (tmp_path / "real").mkdir()
        area.symlink_to(tmp_path / "real")
    with pytest.raises(snap.LayoutError):
        snap.start_incomplete(str(area), NOW)
    if kind == "symlink":
        assert os.listdir(tmp_path / "real") == []


# --- rename without replacing -------------------------------------------------


def _src_with_data(tmp_path: Path) -> Path:
    src = tmp_path / "incomplete"
    src.mkdir()
    (src / "data").write_text("payload")
    return src


@pytest.mark.parametrize("fallback", [False, True], ids=["renameat2", "no-renameat2"])
def test_rename_noreplace_refuses_an_existing_empty_directory(tmp_path, monkeypatch, fallback):
    # The trap: plain rename(2) happily replaces an empty directory.
    trap_src, trap_dst = tmp_path / "trap_src", tmp_path / "trap_dst"
    trap_src.mkdir()
    trap_dst.mkdir()
    os.rename(trap_src, trap_dst)
    assert not trap_src.exists()

    if fallback:
        monkeypatch.setattr(snap, "_libc", lambda: None)
    src = _src_with_data(tmp_path)
    dst = tmp_path / "final"
    dst.mkdir()
    with pytest.raises(snap.NameCollisionError):
        snap.rename_noreplace(str(src), str(dst))
    assert (src / "data").read_text() == "payload"
    assert os.listdir(dst) == []


@pytest.mark.parametrize("occupant", ["file", "dangling-symlink", "full-directory"], ids=str)
@pytest.mark.parametrize("fallback", [False, True], ids=["renameat2", "no-renameat2"])
def test_rename_noreplace_refuses_any_occupant(tmp_path, monkeypatch, fallback, occupant):
    if fallback:
        monkeypatch.setattr(snap, "_libc", lambda: None)
    src = _src_with_data(tmp_path)
    dst = tmp_path / "final"
    if occupant == "file":
        dst.write_text("x")
    elif occupant == "dangling-symlink":
        dst.symlink_to(tmp_path / "nowhere")
    else:
        dst.mkdir()
        (dst / "old").write_text("old")
    with pytest.raises(snap.NameCollisionError):
        snap.rename_noreplace(str(src), str(dst))
    assert (src / "data").read_text() == "payload"


@pytest.mark.parametrize("fallback", [False, True], ids=["renameat2", "no-renameat2"])
def test_rename_noreplace_renames_to_a_free_name(tmp_path, monkeypatch, fallback):
    if fallback:
        monkeypatch.setattr(snap, "_libc", lambda: None)
    src = _src_with_data(tmp_path)
    snap.rename_noreplace(str(src), str(tmp_path / "final"))
    assert not src.exists()
    assert (tmp_path / "final" / "data").read_text() == "payload"


def test_rename_noreplace_reports_other_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        snap.rename_noreplace(str(tmp_path / "missing"), str(tmp_path / "final"))


# --- finalize -----------------------------------------------------------------


@pytest.mark.parametrize(
    "given", ["incomplete_back-" + T2, "back-" + T2, T2], ids=["incomplete", "finished", "bare"]
)
def test_finalize_is_idempotent(tmp_path, given):
    area = make_area(tmp_path, finished=[T1], incomplete=[T2], current="back-" + T1)
    (area / ("incomplete_back-" + T2) / "file").write_text("data")

    plan = snap.plan_finalize(str(area), given)
    assert plan == snap.FinalizePlan(
        incomplete="incomplete_back-" + T2,
        final="back-" + T2,
        current_before="back-" + T1,
        current_after="back-" + T2,
    )
    assert plan.changed is True
    assert listing(area) == ["back-" + T1, "current", "incomplete_back-" + T2]  # planning only

    snap.apply_finalize(str(area), plan)
    assert listing(area) == ["back-" + T1, "back-" + T2, "current"]
    assert os.readlink(area / "current") == "back-" + T2
    assert (area / "current" / "file").read_text() == "data"

    again = snap.finalize(str(area), given)
    assert again.changed is False
    assert again.incomplete is None
    assert again.current_before == again.current_after == "back-" + T2


def test_finalize_refuses_when_both_incomplete_and_finished_exist(tmp_path):
    area = make_area(tmp_path, finished=[T1, T2], incomplete=[T2], current="back-" + T1)
    (area / ("back-" + T2) / "old").write_text("finished data")
    before = listing(area)
    with pytest.raises(snap.NameCollisionError, match="both"):
        snap.finalize(str(area), T2)
    assert listing(area) == before
    assert (area / ("back-" + T2) / "old").read_text() == "finished data"
    assert os.readlink(area / "current") == "back-" + T1


def test_current_never_moves_backwards(tmp_path):
    area = make_area(tmp_path, finished=[T2], incomplete=[T1], current="back-" + T2)
    plan = snap.finalize(str(area), T1)
    assert plan.changed is True
    assert plan.current_before == plan.current_after == "back-" + T2
    assert os.readlink(area / "current") == "back-" + T2
    assert (area / ("back-" + T1)).is_dir()


@pytest.mark.parametrize(
    ("update_current", "expected_link"),
    [(True, "back-" + T2), (False, "back-" + T1)],
    ids=["update", "leave"],
)
def test_update_current_flag(tmp_path, update_current, expected_link):
    area = make_area(tmp_path, finished=[T1], incomplete=[T2], current="back-" + T1)
    snap.finalize(str(area), T2, update_current=update_current)
    assert os.readlink(area / "current") == expected_link


@pytest.mark.parametrize(
    "current",
    [None, "back-2030-01-01T00_00_00"],
    ids=["missing", "dangling"],
)
def test_finalize_repairs_a_missing_or_dangling_current(tmp_path, current):
    area = make_area(tmp_path, finished=[T1], incomplete=[T2], current=current)
    plan = snap.finalize(str(area), T2)
    assert plan.current_before is None
    assert os.readlink(area / "current") == "back-" + T2


def test_finalize_adopts_an_article_absolute_current(tmp_path):
    area = make_area(tmp_path, finished=[T1, T2])
    absolute = str(area / ("back-" + T2))
    (area / "current").symlink_to(absolute)
    plan = snap.finalize(str(area), T2)
    assert plan.changed is False
    assert os.readlink(area / "current") == absolute


def test_finalize_refuses_a_real_current_directory_before_renaming(tmp_path):
    area = make_area(tmp_path, finished=[T1], incomplete=[T2])
    (area / "current").mkdir()
    (area / "current" / "precious").write_text("x")
    before = listing(area)
    with pytest.raises(snap.LayoutError, match="not a symlink"):
        snap.finalize(str(area), T2)
    assert listing(area) == before
    assert (area / "current" / "precious").read_text() == "x"


@pytest.mark.parametrize(
    ("layout", "snapshot", "error"),
    [
        ("missing", T2, snap.SnapshotNotFoundError),
        ("missing", "not-a-name", snap.SnapshotNotFoundError),
        ("symlink-incomplete", T2, snap.LayoutError),
        ("symlink-finished", T2, snap.LayoutError),
        ("file-incomplete", T2, snap.SnapshotNotFoundError),
    ],
    ids=["no-such-snapshot", "bad-name", "symlink-incomplete", "symlink-finished", "file"],
)
def test_plan_finalize_refusals(tmp_path, layout, snapshot, error):
    area = make_area(tmp_path, finished=[T1], current="back-" + T1)
    target = tmp_path / "elsewhere"
    target.mkdir()
    if layout == "symlink-incomplete":
        (area / ("incomplete_back-" + T2)).symlink_to(target)
    elif layout == "symlink-finished":
        (area / ("back-" + T2)).symlink_to(target)
    elif layout == "file-incomplete":
        (area / ("incomplete_back-" + T2)).write_text("")
    before = listing(area)
    with pytest.raises(error):
        snap.plan_finalize(str(area), snapshot)
    assert listing(area) == before
    assert os.listdir(target) == []


def test_finalize_keeps_hard_links_intact(tmp_path):
    area = make_area(tmp_path, finished=[T1], incomplete=[T2], current="back-" + T1)
    old, new = area / ("back-" + T1), area / ("incomplete_back-" + T2)
    (old / "sub").mkdir()
    (old / "sub" / "unchanged").write_text("same bytes")
    (new / "sub").mkdir()
    os.link(old / "sub" / "unchanged", new / "sub" / "unchanged")  # what --link-dest does
    (new / "changed").write_text("new bytes")
    inode = (old / "sub" / "unchanged").stat().st_ino

    snap.finalize(str(area), T2)

    final = area / ("back-" + T2)
    assert (final / "sub" / "unchanged").stat().st_ino == inode
    assert (final / "sub" / "unchanged").stat().st_nlink == 2
    assert (old / "sub" / "unchanged").read_text() == "same bytes"
    assert (final / "changed").read_text() == "new bytes"


# --- current swap -------------------------------------------------------------


@pytest.mark.parametrize(
    "before",
    [None, "back-" + T1, "back-2030-01-01T00_00_00", "stale-tmp"],
    ids=["missing", "valid", "dangling", "stale-temporary-link"],
)
def test_swap_current_leaves_a_valid_relative_link(tmp_path, before):
    area = make_area(tmp_path, finished=[T1, T2])
    if before == "stale-tmp":
        (area / (".current.%d.tmp" % os.getpid())).symlink_to("junk")
    elif before is not None:
        (area / "current").symlink_to(before)
    snap.swap_current(str(area), "back-" + T2)
    assert os.readlink(area / "current") == "back-" + T2
    assert snap.read_current(str(area)) == "back-" + T2
    assert listing(area) == ["back-" + T1, "back-" + T2, "current"]


def test_swap_current_refuses_a_real_directory(tmp_path):
    area = make_area(tmp_path, finished=[T1, T2])
    (area / "current").mkdir()
    (area / "current" / "precious").write_text("x")
    with pytest.raises(snap.LayoutError):
        snap.swap_current(str(area), "back-" + T2)
    assert (area / "current" / "precious").read_text() == "x"
    assert listing(area) == ["back-" + T1, "back-" + T2, "current"]


# --- the area lock ------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from ansible_collections.linkdest.backup.plugins.module_utils import snapshots
    with snapshots.area_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def hold_lock(area: Path, seconds: float) -> subprocess.Popen:
    """Start another process that holds the area's lock for ``seconds``."""
    env = dict(os.environ, PYTHONPATH=COLLECTIONS_PATH)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(area), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_area_lock_is_exclusive_and_released_on_close(tmp_path):
    area = make_area(tmp_path)
    holder = snap.area_lock(str(area))
    holder.__enter__()
    try:
        with pytest.raises(snap.LockBusyError), snap.area_lock(str(area), wait=0):
            pass
    finally:
        holder.__exit__(None, None, None)
    with snap.area_lock(str(area), wait=0):
        pass


def test_area_lock_held_by_another_process(tmp_path):
    area = make_area(tmp_path)
    holder = hold_lock(area, 60)
    try:
        with pytest.raises(snap.LockBusyError), snap.area_lock(str(area), wait=0):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel released the killed holder's lock: nobody has to clean up.
    with snap.area_lock(str(area), wait=0):
        pass


def test_area_lock_waits_for_a_holder_that_finishes(tmp_path):
    area = make_area(tmp_path)
    holder = hold_lock(area, 0.5)
    try:
        with snap.area_lock(str(area), wait=30):
            assert holder.wait(timeout=30) == 0
    finally:
        holder.kill()
        holder.wait()


def test_area_lock_does_not_follow_a_symlinked_lock_file(tmp_path):
    area = make_area(tmp_path)
    victim = tmp_path / "victim"
    (area / ".linkdest.lock").symlink_to(victim)
    with pytest.raises(OSError, match=os.strerror(errno.ELOOP)), snap.area_lock(str(area)):
        pass
    assert not victim.exists()


# --- rsync exit codes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "policy", "outcome", "finalize"),
    [
        (0, "finalize", "success", True),
        (0, "keep-incomplete", "success", True),
        (24, "finalize", "warning", True),
        (24, "keep-incomplete", "warning", True),
        (23, "finalize", "partial", True),
        (23, "keep-incomplete", "partial", False),
        (11, "finalize", "failed", False),
        (12, "finalize", "failed", False),
        (20, "finalize", "failed", False),
        (30, "finalize", "failed", False),
        (255, "finalize", "failed", False),
        (99, "finalize", "failed", False),
        (-9, "finalize", "failed", False),
    ],
    ids=[
        "ok",
        "ok-keep-policy",
        "vanished",
        "vanished-keep-policy",
        "partial-finalized",
        "partial-kept",
        "disk-full",
        "protocol",
        "signal",
        "timeout",
        "ssh",
        "unknown",
        "negative",
    ],
)
def test_classify_rsync_exit(code, policy, outcome, finalize):
    result = snap.classify_rsync_exit(code, policy)
    assert (result.code, result.outcome, result.finalize) == (code, outcome, finalize)
    assert result.message
    if code in (99, -9):
        assert result.message == "rsync failed"


def test_classify_rsync_exit_never_calls_partial_a_plain_success():
    for policy in snap.PARTIAL_POLICIES:
        assert snap.classify_rsync_exit(23, policy).outcome != "success"


@pytest.mark.parametrize("policy", ["", "ignore", "Finalize"], ids=["empty", "ignore", "case"])
def test_classify_rsync_exit_refuses_a_bad_policy(policy):
    with pytest.raises(ValueError, match="partial_policy"):
        snap.classify_rsync_exit(0, policy)


# --- deleting ---------------------------------------------------------------


def test_delete_snapshot_removes_it_without_touching_shared_inodes(tmp_path):
    area = tmp_path / "area"
    (area / "back-2026-01-01T00_00_00" / "d").mkdir(parents=True)
    (area / "back-2026-01-01T00_00_00" / "d" / "f").write_text("kept\n")
    (area / "back-2026-01-02T00_00_00" / "d").mkdir(parents=True)
    os.link(
        area / "back-2026-01-01T00_00_00" / "d" / "f", area / "back-2026-01-02T00_00_00" / "d" / "f"
    )
    # A laptop-made read-only directory still goes.
    os.chmod(area / "back-2026-01-01T00_00_00" / "d", 0o500)
    assert snap.delete_snapshot(str(area), "back-2026-01-01T00_00_00") == "back-2026-01-01T00_00_00"
    assert sorted(os.listdir(area)) == ["back-2026-01-02T00_00_00"]
    assert (area / "back-2026-01-02T00_00_00" / "d" / "f").read_text() == "kept\n"


def test_delete_snapshot_never_follows_a_planted_symlink(tmp_path):
    area = tmp_path / "area"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("x")
    incomplete = area / "incomplete_back-2026-01-01T00_00_00"
    incomplete.mkdir(parents=True)
    (incomplete / "evil").symlink_to(outside)
    snap.delete_snapshot(str(area), incomplete.name)
    assert (outside / "precious").read_text() == "x"
    assert os.listdir(area) == []


@pytest.mark.parametrize(
    "name",
    ["current", "back-junk", "back-2026-01-01T00_00_00"],
    ids=["not-a-snapshot", "bad-stamp", "missing"],
)
def test_delete_snapshot_refuses_what_is_not_a_snapshot(tmp_path, name):
    area = tmp_path / "area"
    area.mkdir()
    (area / "current").symlink_to("elsewhere")
    with pytest.raises(snap.SnapshotNotFoundError):
        snap.delete_snapshot(str(area), name)


def test_finish_deletions_completes_a_crashed_delete(tmp_path):
    area = tmp_path / "area"
    (area / ".deleting-back-2026-01-01T00_00_00" / "sub").mkdir(parents=True)
    (area / ".deleting-back-2026-01-01T00_00_00" / "sub" / "f").write_text("x")
    (area / "back-2026-01-02T00_00_00").mkdir()
    assert snap.finish_deletions(str(area)) == ["back-2026-01-01T00_00_00"]
    assert os.listdir(area) == ["back-2026-01-02T00_00_00"]


# --- reading finished snapshots -------------------------------------------------


def _restore_area(tmp_path):
    area = tmp_path / "area"
    for stamp, content in (
        ("2026-01-01T00_00_00", "v1"),
        ("2026-01-02T00_00_00", None),
        ("2026-01-03T00_00_00", "v2"),
    ):
        (area / ("back-" + stamp) / "docs").mkdir(parents=True)
        if content is not None:
            (area / ("back-" + stamp) / "docs" / "a.txt").write_text(content)
    # An unchanged file is a hard link: the same version.
    (area / "back-2026-01-03T00_00_00" / "docs" / "same.txt").write_text("same")
    (area / "back-2026-01-04T00_00_00" / "docs").mkdir(parents=True)
    os.link(
        area / "back-2026-01-03T00_00_00" / "docs" / "same.txt",
        area / "back-2026-01-04T00_00_00" / "docs" / "same.txt",
    )
    os.link(
        area / "back-2026-01-03T00_00_00" / "docs" / "a.txt",
        area / "back-2026-01-04T00_00_00" / "docs" / "a.txt",
    )
    (area / "back-2026-01-04T00_00_00" / "escape").symlink_to("/etc")
    (area / "incomplete_back-2026-01-05T00_00_00" / "docs").mkdir(parents=True)
    (area / "incomplete_back-2026-01-05T00_00_00" / "docs" / "a.txt").write_text("half")
    return area


def test_locate_finds_the_newest_snapshot_holding_a_path(tmp_path):
    area = str(_restore_area(tmp_path))
    assert snap.locate(area, "docs/a.txt").name == "back-2026-01-04T00_00_00"
    at = datetime(2026, 1, 2, 12, tzinfo=timezone.utc)
    assert snap.locate(area, "docs/a.txt", at).name == "back-2026-01-01T00_00_00"
    with pytest.raises(snap.SnapshotNotFoundError, match="is in no snapshot"):
        snap.locate(area, "docs/never.txt")


@pytest.mark.parametrize("whole", [".", "", "./"])
def test_locate_the_whole_folder_is_the_newest_or_the_chosen_snapshot(tmp_path, whole):
    area = str(_restore_area(tmp_path))
    assert snap.locate(area, whole).name == "back-2026-01-04T00_00_00"
    at = datetime(2026, 1, 3, 12, tzinfo=timezone.utc)
    assert snap.locate(area, whole, at).name == "back-2026-01-03T00_00_00"
    with pytest.raises(snap.SnapshotNotFoundError):
        snap.locate(area, whole, datetime(2025, 1, 1, tzinfo=timezone.utc))
    for unsafe in ("..", "../x", "/etc", "a/./b"):
        with pytest.raises(snap.LayoutError):
            snap.locate(area, unsafe)


def test_changed_versions_collapse_hard_linked_copies(tmp_path):
    area = str(_restore_area(tmp_path))
    versions = snap.changed_versions(snap.find_versions(area, "docs/a.txt"))
    assert [found.name for found, _stat in versions] == [
        "back-2026-01-01T00_00_00",
        "back-2026-01-03T00_00_00",
    ]


@pytest.mark.parametrize(
    ("snapshot", "relpath", "error"),
    [
        ("back-2026-01-04T00_00_00", "escape/passwd", snap.LayoutError),
        ("back-2026-01-04T00_00_00", "../back-2026-01-01T00_00_00/docs/a.txt", snap.LayoutError),
        ("back-2026-01-04T00_00_00", "/etc/passwd", snap.LayoutError),
        ("incomplete_back-2026-01-05T00_00_00", "docs/a.txt", snap.SnapshotNotFoundError),
        ("back-2026-01-04T00_00_00", "docs/none", snap.SnapshotNotFoundError),
    ],
    ids=["through-symlink", "dotdot", "absolute", "incomplete", "missing"],
)
def test_resolve_in_snapshot_refuses_escapes(tmp_path, snapshot, relpath, error):
    area = str(_restore_area(tmp_path))
    with pytest.raises(error):
        snap.resolve_in_snapshot(area, snapshot, relpath)


def test_resolve_in_snapshot_allows_a_final_symlink(tmp_path):
    area = str(_restore_area(tmp_path))
    path = snap.resolve_in_snapshot(area, "back-2026-01-04T00_00_00", "escape")
    assert os.path.islink(path)


# --- the lock file's owner --------------------------------------------------------


def test_area_lock_hands_a_root_made_lock_file_to_the_area_owner(tmp_path):
    """Root (daily prune, mirror) must not lock the laptop's account out of its area."""
    if os.geteuid() != 0:
        raise AssertionError("this test needs root, as make test runs it")
    area = tmp_path / "area"
    area.mkdir()
    os.chown(area, 65534, 65534)
    lock = area / snap.LOCK_FILE
    lock.write_text("")  # made by root, owned by root
    with snap.area_lock(str(area)):
        pass
    assert (lock.stat().st_uid, lock.stat().st_gid) == (65534, 65534)


def test_area_lock_never_opens_a_planted_symlink(tmp_path):
    area = tmp_path / "area"
    area.mkdir()
    target = tmp_path / "elsewhere"
    (area / snap.LOCK_FILE).symlink_to(target)
    with (
        pytest.raises(OSError, match="Too many levels of symbolic links"),
        snap.area_lock(str(area)),
    ):
        pass
    assert not target.exists()
