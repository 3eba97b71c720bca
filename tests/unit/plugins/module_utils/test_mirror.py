# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of mirror.py on real file systems with real rsync.

The source snapshots are made the way the server makes them: rsync
--fake-super with --link-dest against ``current`` into an incomplete
directory, then snapshots.finalize(). The drives are plain directories
(``*_must_be_mount`` off), except where the mount checks themselves are tested.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import linkdest_testlib as lib
import pytest

from ansible_collections.linkdest.backup.plugins.module_utils import manifest as mf
from ansible_collections.linkdest.backup.plugins.module_utils import mirror, scrub
from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap

RSYNC = shutil.which("rsync")
NOW = datetime(2026, 11, 26, 10, 0, 0, tzinfo=timezone.utc)
CLIENT = "laptop-a"


# --- helpers --------------------------------------------------------------------------


def stamp(n: int) -> str:
    return "back-2026-11-%02dT10_00_00" % (n + 1)


class World:
    """A source drive with one laptop's area, a mirror drive, a state directory."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.src = tmp_path / "drive1"
        self.dst = tmp_path / "drive2"
        self.state = tmp_path / "state"
        self.laptop = tmp_path / "laptop"
        for path in (self.src, self.dst, self.laptop):
            path.mkdir()
        self.config = mirror.Config(
            source=str(self.src),
            destination=str(self.dst),
            source_must_be_mount=False,
            destination_must_be_mount=False,
            state_dir=str(self.state),
            log_file=str(tmp_path / "mirror.log"),
            rsync=RSYNC,
            lock_timeout=5,
        )
        self.count = 0

    def area(self, client: str = CLIENT) -> Path:
        return self.src / client

    def mirror_area(self, client: str = CLIENT) -> Path:
        return self.dst / client

    def write(self, rel: str, content: str, mode: int = 0o644) -> None:
        path = self.laptop / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(mode)
        os.utime(path, (1767225600 + self.count, 1767225600 + self.count))

    def backup(self, client: str = CLIENT) -> str:
        """One snapshot as the server's gate and finalize make it."""
        area = self.area(client)
        area.mkdir(exist_ok=True)
        name = stamp(self.count)
        self.count += 1
        incomplete = "incomplete_" + name
        # -H: hard links inside a snapshot, which the mirror must keep too.
        argv = [RSYNC, "-aH", "--fake-super"]
        base = snap.current_snapshot(str(area))
        if base is not None:
            argv.append("--link-dest=../%s" % base.name)
        subprocess.run(argv + ["%s/" % self.laptop, "%s/" % incomplete], cwd=area, check=True)
        snap.finalize(str(area), incomplete)
        return name

    def setup(self) -> mirror.SetupResult:
        return mirror.setup(self.config, NOW)

    def run(self, **kwargs) -> mirror.RunResult:
        return mirror.run(self.config, now=NOW, **kwargs)


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    w.write("docs/a.txt", "alpha\n")
    w.write("docs/b.txt", "bravo\n", 0o600)
    w.write("big/c.bin", "c" * 100000)
    os.symlink("docs/a.txt", w.laptop / "link-to-a")
    os.link(w.laptop / "docs/a.txt", w.laptop / "docs/a-hardlink.txt")
    # Files of a laptop user: the server's --fake-super records the owner in
    # user.rsync.%stat xattrs, which the mirror must keep.
    for base, dirs, files in os.walk(w.laptop):
        for name in dirs + files:
            os.lchown(os.path.join(base, name), 1000, 1000)
    return w


def tree(root: Path) -> dict:
    """Every entry under root: type, inode, mode, size, mtime, xattrs, link target."""
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            xattrs = {}
            if not stat.S_ISLNK(st.st_mode):
                xattrs = {k: os.getxattr(path, k) for k in sorted(os.listxattr(path))}
            out[os.path.relpath(path, root)] = (
                stat.S_IFMT(st.st_mode),
                st.st_ino,
                stat.S_IMODE(st.st_mode),
                st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
                int(st.st_mtime) if not stat.S_ISDIR(st.st_mode) else 0,
                tuple(xattrs.items()),
                os.readlink(path) if stat.S_ISLNK(st.st_mode) else None,
            )
    return out


def inode_groups(area: Path) -> set[frozenset]:
    """Which (snapshot, file) pairs share an inode, across all finished snapshots."""
    groups: dict[int, set] = {}
    for snapshot in snap.list_snapshots(str(area)):
        top = area / snapshot.name
        for base, _dirs, files in os.walk(top):
            for name in files:
                path = os.path.join(base, name)
                key = (snapshot.name, os.path.relpath(path, top))
                groups.setdefault(os.lstat(path).st_ino, set()).add(key)
    return {frozenset(group) for group in groups.values()}


def contents(area: Path) -> dict:
    """Per snapshot: relative path -> (type, mode, size, mtime, xattrs, target), no inodes."""
    out = {}
    for snapshot in snap.list_snapshots(str(area)):
        entries = tree(area / snapshot.name)
        out[snapshot.name] = {rel: value[:1] + value[2:] for rel, value in entries.items()}
    return out


def hidden_leftovers(area: Path) -> list[str]:
    return sorted(
        n for n in os.listdir(area) if n.startswith((mirror.COPY_PREFIX, mirror.RESUME_PREFIX))
    )


# --- configuration --------------------------------------------------------------------


GOOD = {"source": "/media/backup_drive", "destination": "/media/backup_drive2"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": 1}, "unknown setting 'extra'"),
        ({"max_removed_percent": True}, "max_removed_percent has the wrong type"),
        ({"bwlimit": "fast"}, "bwlimit has the wrong type"),
        ({"destination": ""}, "destination is required"),
        ({"destination": "backup_drive2"}, "destination must be an absolute path"),
        ({"destination": "/"}, "destination must be an absolute path"),
        ({"destination": "/media/../etc"}, "destination must be an absolute path"),
        ({"destination": "/media/backup_drive/mirror"}, "must be separate trees"),
        ({"source": "/media/backup_drive2/x"}, "must be separate trees"),
        ({"destination": "/media/backup_drive/"}, "must be separate trees"),
        ({"max_removed_percent": 101}, "between 0 and 100"),
        ({"bwlimit": -1}, "bwlimit must be 0"),
        ({"lock_timeout": -1}, "lock_timeout must be 0 or more"),
    ],
    ids=[
        "unknown-key",
        "bool-percent",
        "str-bwlimit",
        "no-destination",
        "relative",
        "slash",
        "dotdot",
        "dest-in-source",
        "source-in-dest",
        "same-with-slash",
        "percent-too-big",
        "negative-bwlimit",
        "negative-timeout",
    ],
)
def test_bad_configurations_are_refused_with_the_setting_named(change, message):
    with pytest.raises(mirror.ConfigError, match=message):
        mirror.config_from_dict(dict(GOOD, **change))


def test_a_minimal_configuration_gets_safe_defaults():
    config = mirror.config_from_dict(dict(GOOD, destination="/media/backup_drive2/"))
    assert config.destination == "/media/backup_drive2"
    assert config.source_must_be_mount is True
    assert config.destination_must_be_mount is True
    assert config.max_removed_percent == 50
    assert config.bwlimit == 0


def test_a_missing_configuration_file_says_what_writes_it(tmp_path):
    with pytest.raises(mirror.ConfigError, match="backup_mirror_dest"):
        mirror.load_config(str(tmp_path / "mirror.json"))


# --- drives ---------------------------------------------------------------------------


def test_check_drive_refuses_missing_symlinked_and_unmounted_drives(tmp_path):
    with pytest.raises(mirror.DriveError, match="does not exist"):
        mirror.check_drive(str(tmp_path / "nope"), "destination", True)
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(mirror.DriveError, match="symlink"):
        mirror.check_drive(str(tmp_path / "link"), "destination", False)
    (tmp_path / "file").write_text("")
    with pytest.raises(mirror.DriveError, match="not a directory"):
        mirror.check_drive(str(tmp_path / "file"), "source", False)
    with pytest.raises(mirror.DriveError, match="not a mount point"):
        mirror.check_drive(str(tmp_path / "real"), "destination", True)
    mirror.check_drive(str(tmp_path / "real"), "destination", False)


def test_check_drive_refuses_a_mount_point_on_the_root_device(tmp_path, monkeypatch):
    drive = tmp_path / "drive"
    drive.mkdir()
    monkeypatch.setattr(mirror.os.path, "ismount", lambda path: True)
    device = os.stat(drive).st_dev
    with pytest.raises(mirror.DriveError, match="root file system's device"):
        mirror.check_drive(str(drive), "destination", True, root_dev=device)
    mirror.check_drive(str(drive), "destination", True, root_dev=device + 1)


# --- pure decisions -------------------------------------------------------------------


NAMES = [stamp(n) for n in range(10)]


@pytest.mark.parametrize(
    ("mirror_names", "source_names", "percent", "refused"),
    [
        (NAMES[:4], NAMES[:4], 50, None),
        (NAMES[:4], NAMES[1:4], 50, None),  # one thinned: 25 % fewer
        (NAMES[:4], NAMES[1:4] + NAMES[4:6], 20, None),  # thinned while new ones came
        (NAMES[:10], NAMES[5:10], 50, None),  # exactly 50 % fewer is allowed
        (NAMES[:10], NAMES[6:10], 50, "60% fewer"),
        (NAMES[:4], NAMES[3:4], 50, "75% fewer"),
        (NAMES[:4], NAMES[2:4], 20, "50% fewer"),
        (NAMES[:4], [], 50, "none of the mirror's 4"),  # wiped or vanished area
        (NAMES[:4], NAMES[4:8], 50, "none of the mirror's 4"),  # a different history
        (NAMES[:4], NAMES[4:8], 100, "none of the mirror's 4"),
        (NAMES[:10], NAMES[9:10], 100, None),  # 100 switches the share check off
        ([], NAMES[:3], 0, None),
    ],
    ids=[
        "nothing-gone",
        "one-thinned",
        "thinned-and-new",
        "exactly-at-limit",
        "over-limit",
        "three-of-four",
        "strict-limit",
        "source-empty",
        "no-overlap",
        "no-overlap-even-at-100",
        "share-check-off",
        "empty-mirror",
    ],
)
def test_removal_guard(mirror_names, source_names, percent, refused):
    reason = mirror.removal_refusal(mirror_names, source_names, percent)
    if refused is None:
        assert reason is None
    else:
        assert refused in reason


@pytest.mark.parametrize(
    ("name", "on_mirror", "expected"),
    [
        (NAMES[3], NAMES[:3], [NAMES[2]]),
        (NAMES[0], [], []),
        (NAMES[0], NAMES[1:3], [NAMES[1]]),
        (NAMES[2], [NAMES[0], NAMES[5]], [NAMES[0], NAMES[5]]),
    ],
    ids=["newest", "first", "oldest-out-of-order", "in-between"],
)
def test_link_dests_are_the_nearest_snapshots_on_the_mirror(name, on_mirror, expected):
    assert mirror.link_dests_for(name, on_mirror) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Number of files: 1,203 (reg: 1,000, dir: 203)\n"
            "Number of regular files transferred: 1,234\n"
            "Total file size: 99,999,999 bytes\n"
            "Total transferred file size: 5,678,901 bytes\n",
            (1234, 5678901),
        ),
        ("Number of regular files transferred: 0\nTotal transferred file size: 0 bytes\n", (0, 0)),
        ("", (0, 0)),
    ],
    ids=["thousands-separators", "nothing-sent", "no-stats"],
)
def test_parse_rsync_stats(text, expected):
    assert mirror.parse_rsync_stats(text) == expected


def test_rsync_argv_keeps_links_xattrs_and_never_follows_symlinks():
    config = mirror.Config(source="/a", destination="/b", bwlimit=5000)
    argv = mirror.rsync_argv(config, "/a/c/back-T", ".mirroring-back-T", ["back-S", "back-U"])
    assert argv == [
        "/usr/bin/rsync",
        "-aHXX",
        "--numeric-ids",
        "--ignore-existing",
        "--stats",
        "--bwlimit=5000",
        "--link-dest=../back-S",
        "--link-dest=../back-U",
        "--",
        "/a/c/back-T/",
        ".mirroring-back-T/",
    ]
    for word in ("-L", "--copy-links", "-K", "-k", "--inplace", "--delete"):
        assert word not in argv


# --- pre-linking -------------------------------------------------------------------


def test_prelink_links_what_the_source_shares_and_keeps_hard_link_groups(world):
    first = world.backup()
    world.setup()
    world.run()
    world.write("docs/b.txt", "bravo, changed\n", 0o600)
    # A new name for an unchanged inode, sorted before its old name.
    os.link(world.laptop / "docs/a.txt", world.laptop / "docs/0-new-name.txt")
    second = world.backup()
    area, copy = world.area(), world.mirror_area()
    dest = copy / ".test-prelink"
    dest.mkdir()

    count = mirror.prelink(str(area / second), str(area / first), str(copy / first), str(dest))

    def ino(path):
        return os.lstat(path).st_ino

    assert ino(dest / "big/c.bin") == ino(copy / first / "big/c.bin")
    assert ino(dest / "docs/a.txt") == ino(copy / first / "docs/a.txt")
    assert ino(dest / "docs/a-hardlink.txt") == ino(dest / "docs/a.txt")
    assert ino(dest / "docs/0-new-name.txt") == ino(dest / "docs/a.txt")
    assert not (dest / "docs/b.txt").exists()  # changed: left to rsync
    # --fake-super stores the laptop's symlink as a plain file: linked like any.
    assert ino(dest / "link-to-a") == ino(copy / first / "link-to-a")
    assert count == 5


def test_prelink_never_follows_a_symlink_on_either_drive(world, tmp_path):
    first = world.backup()
    world.setup()
    world.run()
    second = world.backup()
    copy = world.mirror_area()
    # The mirror's docs/ replaced by a symlink to a directory with the same names.
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("a.txt", "a-hardlink.txt", "b.txt"):
        shutil.copy2(copy / first / "docs" / name, outside / name)
    shutil.rmtree(copy / first / "docs")
    os.symlink(outside, copy / first / "docs")
    dest = copy / ".test-prelink"
    dest.mkdir()

    mirror.prelink(
        str(world.area() / second), str(world.area() / first), str(copy / first), str(dest)
    )

    assert not (dest / "docs").is_symlink()
    assert (dest / "docs").is_dir()
    assert os.listdir(dest / "docs") == []
    assert all(os.lstat(outside / name).st_nlink == 1 for name in os.listdir(outside))


def test_a_mirror_copy_that_differs_is_not_linked_and_not_changed(world):
    first = world.backup()
    world.setup()
    world.run()
    damaged = world.mirror_area() / first / "big/c.bin"
    os.chmod(damaged, 0o666)
    before = tree(world.mirror_area() / first)
    second = world.backup()

    result = world.run()

    assert (result.code, result.copied) == (0, 1)
    copy = world.mirror_area()
    assert os.lstat(copy / second / "big/c.bin").st_ino != os.lstat(damaged).st_ino
    assert contents(copy)[second] == contents(world.area())[second]
    after = tree(copy / first)
    assert {k: v[:1] + v[2:] for k, v in after.items()} == {
        k: v[:1] + v[2:] for k, v in before.items()
    }


@pytest.mark.parametrize("base", ["prelink", "link-dest only"], ids=["prelink", "link-dest"])
def test_both_copy_paths_give_the_same_mirror(world, monkeypatch, base):
    if base != "prelink":
        monkeypatch.setattr(mirror, "prelink_base", lambda *args: None)
    world.backup()
    world.setup()
    world.run()
    world.write("docs/a.txt", "alpha, edited\n")
    world.backup()
    world.write("more/new.txt", "new\n")
    world.backup()
    result = world.run()
    assert (result.code, result.copied) == (0, 2)
    assert contents(world.mirror_area()) == contents(world.area())
    assert inode_groups(world.mirror_area()) == inode_groups(world.area())


# --- setup ----------------------------------------------------------------------------


def test_setup_writes_each_marker_once_and_records_the_destination(world):
    first = world.setup()
    assert first.changed
    source = mirror.read_marker(str(world.src))
    dest = mirror.read_marker(str(world.dst))
    assert (source.role, dest.role) == ("source", "destination")
    assert source.id != dest.id
    state = json.loads((world.state / "state.json").read_text())
    assert state["destination_id"] == dest.id
    assert state["source_id"] == source.id

    before = (world.dst / mirror.MARKER_NAME).read_bytes()
    again = world.setup()
    assert not again.changed
    assert (again.source_id, again.destination_id) == (source.id, dest.id)
    assert (world.dst / mirror.MARKER_NAME).read_bytes() == before


def test_setup_in_dry_run_writes_nothing(world):
    result = mirror.setup(world.config, NOW, dry_run=True)
    assert result.changed
    assert not (world.src / mirror.MARKER_NAME).exists()
    assert not (world.dst / mirror.MARKER_NAME).exists()
    assert not (world.state / "state.json").exists()


def test_setup_adopts_an_existing_marker_when_nothing_is_recorded(world):
    mirror.write_marker(str(world.dst), "destination", "1" * 8 + "-1111-4111-8111-" + "1" * 12, NOW)
    result = world.setup()
    assert result.destination_id == "11111111-1111-4111-8111-111111111111"


def test_setup_refuses_a_different_disk_until_told_it_is_new(world):
    world.setup()
    recorded = mirror.read_marker(str(world.dst)).id
    other = "22222222-2222-4222-8222-222222222222"
    mirror.write_marker(str(world.dst), "destination", other, NOW)
    with pytest.raises(mirror.RefusedError, match="different\\s+disk"):
        world.setup()
    (world.dst / mirror.MARKER_NAME).unlink()
    with pytest.raises(mirror.RefusedError, match="no marker"):
        world.setup()
    assert json.loads((world.state / "state.json").read_text())["destination_id"] == recorded

    result = mirror.setup(world.config, NOW, new_destination=True)
    assert result.destination_id != recorded
    assert mirror.read_marker(str(world.dst)).id == result.destination_id
    assert json.loads((world.state / "state.json").read_text())["destination_id"] == (
        result.destination_id
    )


def test_setup_refuses_drives_mounted_the_wrong_way_round(world):
    world.setup()
    source_marker = (world.src / mirror.MARKER_NAME).read_bytes()
    (world.src / mirror.MARKER_NAME).write_bytes((world.dst / mirror.MARKER_NAME).read_bytes())
    (world.dst / mirror.MARKER_NAME).write_bytes(source_marker)
    with pytest.raises(mirror.RefusedError, match="wrong way round"):
        world.setup()


def test_a_damaged_or_symlinked_marker_is_refused(world):
    (world.dst / mirror.MARKER_NAME).write_text("{not json")
    with pytest.raises(mirror.RefusedError, match="damaged"):
        mirror.read_marker(str(world.dst))
    (world.dst / mirror.MARKER_NAME).unlink()
    os.symlink(world.tmp / "elsewhere", world.dst / mirror.MARKER_NAME)
    with pytest.raises(mirror.RefusedError, match="cannot read"):
        mirror.read_marker(str(world.dst))


# --- runs -----------------------------------------------------------------------------


def test_first_run_copies_every_finished_snapshot_with_its_hard_links(world):
    names = [world.backup()]
    world.write("docs/b.txt", "bravo, changed\n", 0o600)
    names.append(world.backup())
    world.write("new.txt", "new\n")
    names.append(world.backup())
    (world.area() / "incomplete_back-2026-12-31T00_00_00").mkdir()
    world.setup()

    result = world.run()

    assert (result.code, result.copied, result.removed, result.areas) == (0, 3, 0, 1)
    area, copy = world.area(), world.mirror_area()
    assert [s.name for s in snap.list_snapshots(str(copy))] == names
    assert not (copy / "incomplete_back-2026-12-31T00_00_00").exists()
    assert snap.read_current(str(copy)) == names[-1]
    assert os.readlink(copy / "current") == names[-1]
    # Same files, modes, times, rsync --fake-super xattrs and stored symlinks.
    assert contents(copy) == contents(area)
    some = copy / names[0] / "docs/a.txt"
    assert "user.rsync.%stat" in os.listxattr(some)
    # The same inode sharing as on the source: between snapshots and inside one.
    assert inode_groups(copy) == inode_groups(area)
    assert (
        os.lstat(copy / names[2] / "big/c.bin").st_ino
        == os.lstat(copy / names[0] / "big/c.bin").st_ino
    )
    assert hidden_leftovers(copy) == []
    # The area looks like the source's: same owner and mode.
    assert stat.S_IMODE(os.lstat(copy).st_mode) == stat.S_IMODE(os.lstat(area).st_mode)
    assert (world.state / "last-success").read_text() == NOW.isoformat(timespec="seconds") + "\n"
    state = json.loads((world.state / "state.json").read_text())
    assert state["last_success"] == "2026-11-26T10:00:00+00:00"
    assert "copied=3" in state["last_run"]["summary"]


def test_a_later_run_copies_only_the_new_snapshot(world):
    first = world.backup()
    world.setup()
    world.run()
    inode_before = os.lstat(world.mirror_area() / first / "docs/a.txt").st_ino
    world.write("docs/a.txt", "alpha, edited\n")
    second = world.backup()

    result = world.run()

    assert (result.code, result.copied, result.removed) == (0, 1, 0)
    assert result.files == 1  # the edited file; its second name is a hard link to it
    copy = world.mirror_area()
    assert os.lstat(copy / first / "docs/a.txt").st_ino == inode_before
    assert inode_groups(copy) == inode_groups(world.area())
    assert snap.read_current(str(copy)) == second

    again = world.run()
    assert (again.code, again.copied, again.removed, again.files) == (0, 0, 0, 0)
    assert "copied=0" in mirror.format_summary(again)


def test_a_snapshot_pruned_on_the_source_disappears_from_the_mirror(world):
    names = [world.backup() for _snapshot in range(4)]
    world.setup()
    world.run()
    snap.delete_snapshot(str(world.area()), names[0])

    result = world.run()

    assert (result.code, result.removed, result.withheld) == (0, 1, 0)
    assert [s.name for s in snap.list_snapshots(str(world.mirror_area()))] == names[1:]
    assert not [n for n in os.listdir(world.mirror_area()) if n.startswith(".deleting-")]


def test_far_fewer_snapshots_on_the_source_removes_nothing_but_copies_what_is_new(world):
    names = [world.backup() for _snapshot in range(5)]
    world.setup()
    world.run()
    for name in names[:4]:
        snap.delete_snapshot(str(world.area()), name)
    newest = world.backup()
    (world.state / "last-success").unlink()

    result = world.run()

    assert (result.code, result.copied, result.removed, result.withheld) == (65, 1, 0, 4)
    assert "60% fewer" in result.problems[0]
    assert "--allow-removals" in result.problems[0]
    on_mirror = [s.name for s in snap.list_snapshots(str(world.mirror_area()))]
    assert on_mirror == names + [newest]
    assert snap.read_current(str(world.mirror_area())) == newest
    assert not (world.state / "last-success").exists()
    state = json.loads((world.state / "state.json").read_text())
    assert state["last_run"]["outcome"] == "removals-refused"

    forced = world.run(allow_removals=True)
    assert (forced.code, forced.removed) == (0, 4)
    assert [s.name for s in snap.list_snapshots(str(world.mirror_area()))] == [names[4], newest]


def test_a_vanished_source_area_keeps_its_mirror(world):
    names = [world.backup(), world.backup()]
    world.backup("laptop-b")
    world.setup()
    world.run()
    os.rename(world.area(), world.src / ".moved-away")

    result = world.run()

    assert (result.code, result.removed, result.withheld) == (65, 0, 2)
    assert "none of the mirror's 2" in result.problems[0]
    assert [s.name for s in snap.list_snapshots(str(world.mirror_area()))] == names
    assert snap.read_current(str(world.mirror_area())) == names[-1]


@pytest.mark.parametrize(
    ("damage", "code", "message"),
    [
        ("source-marker", 77, "carries no source marker"),
        ("dest-marker", 77, "carries no mirror drive marker"),
        ("swapped-disk", 77, "different disk"),
        ("no-state", 77, "no mirror drive identity recorded"),
        ("empty-source", 77, "holds no finished snapshot"),
        ("no-dest", 72, "does not exist"),
    ],
    ids=["source-marker", "dest-marker", "swapped-disk", "no-state", "empty-source", "no-dest"],
)
def test_a_refused_run_changes_nothing_on_either_drive(world, damage, code, message):
    names = [world.backup(), world.backup()]
    world.setup()
    world.run()
    world.backup()  # something new the refused run must not copy
    snap.delete_snapshot(str(world.area()), names[0])  # and a removal it must not make
    if damage == "source-marker":
        (world.src / mirror.MARKER_NAME).unlink()
    elif damage == "dest-marker":
        (world.dst / mirror.MARKER_NAME).unlink()
    elif damage == "swapped-disk":
        mirror.write_marker(
            str(world.dst), "destination", "3" * 8 + "-3333-4333-8333-" + "3" * 12, NOW
        )
    elif damage == "no-state":
        (world.state / "state.json").unlink()
    elif damage == "empty-source":
        os.rename(world.area(), world.src / ".elsewhere")
    elif damage == "no-dest":
        os.rename(world.dst, world.tmp / "unplugged")
    before_src, before_dst = tree(world.src), tree(world.dst) if world.dst.exists() else None

    with pytest.raises(mirror.MirrorError, match=message) as caught:
        world.run()

    assert caught.value.code == code
    assert tree(world.src) == before_src
    if before_dst is not None:
        assert tree(world.dst) == before_dst
    else:
        assert not world.dst.exists()


def test_an_unmounted_destination_leaves_the_system_disk_untouched(world):
    world.backup()
    world.setup()
    config = mirror.Config(**dict(world.config.__dict__, destination_must_be_mount=True))
    before = tree(world.dst)
    with pytest.raises(mirror.DriveError, match="not a mount point") as caught:
        mirror.run(config, now=NOW)
    assert caught.value.code == 72
    assert tree(world.dst) == before


def test_a_dry_run_changes_nothing(world):
    names = [world.backup(), world.backup()]
    world.setup()
    world.run()
    world.backup()
    snap.delete_snapshot(str(world.area()), names[0])
    os.unlink(world.area() / snap.LOCK_FILE)
    before_src, before_dst = tree(world.src), tree(world.dst)
    state = (world.state / "state.json").read_text()

    result = world.run(dry_run=True)

    assert (result.copied, result.removed, result.dry_run) == (1, 1, True)
    assert any(line.startswith("would copy laptop-a/") for line in result.messages)
    assert "(dry run)" in mirror.format_summary(result)
    assert tree(world.src) == before_src
    assert tree(world.dst) == before_dst
    assert (world.state / "state.json").read_text() == state


# --- locks ----------------------------------------------------------------------------


def test_a_run_waits_for_a_finalize_or_prune_holding_the_area(world):
    world.backup()
    world.setup()
    held = snap.area_lock(str(world.area()))
    held.__enter__()
    releaser = threading.Timer(1.0, held.__exit__, (None, None, None))
    releaser.start()
    started = time.monotonic()
    try:
        result = world.run()
    finally:
        releaser.join()
    assert time.monotonic() - started >= 0.9
    assert (result.code, result.copied) == (0, 1)


def test_a_run_that_cannot_get_the_area_copies_nothing_and_says_busy(world):
    world.backup()
    world.setup()
    config = mirror.Config(**dict(world.config.__dict__, lock_timeout=0.5))
    with snap.area_lock(str(world.area())):
        result = mirror.run(config, now=NOW)
    assert (result.code, result.copied, result.busy) == (75, 0, 1)
    assert "another backup, finalize or prune" in result.problems[0]
    assert not world.mirror_area().exists() or snap.list_snapshots(str(world.mirror_area())) == []
    assert not (world.state / "last-success").exists()


def test_one_mirror_run_at_a_time(world):
    world.backup()
    world.setup()
    with mirror.mirror_lock(str(world.state)), pytest.raises(mirror.BusyError):
        world.run()


def test_a_missing_area_lock_file_is_created_for_the_area_owner(world):
    world.backup()
    world.setup()
    assert not (world.area() / snap.LOCK_FILE).exists()
    os.chown(world.area(), 4242, 4343)
    world.run()
    st = os.lstat(world.area() / snap.LOCK_FILE)
    # Readable by all: flock needs only a read-only descriptor, and a btrfs
    # area's account opens its root-owned lock that way.
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4242, 4343, 0o644)
    mirrored = os.lstat(world.mirror_area())
    assert (mirrored.st_uid, mirrored.st_gid) == (4242, 4343)


# --- interrupted and failed copies ----------------------------------------------------


def test_a_failed_copy_never_appears_under_its_final_name_and_is_resumed(world, tmp_path):
    first = world.backup()
    world.setup()
    world.run()
    world.write("more.bin", "m" * 50000)
    second = world.backup()
    failing = tmp_path / "rsync-fails"
    failing.write_text(
        "#!/bin/sh\n"
        # Copy what arrives, then fail as an I/O error would.
        '%s "$@"\necho "rsync: write failed: No space left on device (28)" >&2\nexit 11\n' % RSYNC
    )
    failing.chmod(0o755)
    broken = mirror.Config(**dict(world.config.__dict__, rsync=str(failing)))

    result = mirror.run(broken, now=NOW)

    assert (result.code, result.copied, result.failed) == (1, 0, 1)
    assert "rsync exit 11" in result.problems[0]
    assert "No space left on device" in result.problems[0]
    copy = world.mirror_area()
    assert [s.name for s in snap.list_snapshots(str(copy))] == [first]
    assert snap.read_current(str(copy)) == first
    assert hidden_leftovers(copy) == [mirror.COPY_PREFIX + second]

    again = world.run()

    assert (again.code, again.copied) == (0, 1)
    assert hidden_leftovers(copy) == []
    assert contents(copy) == contents(world.area())
    assert inode_groups(copy) == inode_groups(world.area())


def test_leftovers_of_snapshots_no_longer_on_the_source_are_removed(world):
    world.backup()
    world.setup()
    world.run()
    stray = world.mirror_area() / (mirror.COPY_PREFIX + stamp(40))
    (stray / "sub").mkdir(parents=True)
    os.symlink("/etc", stray / "sub" / "escape")
    world.run()
    assert hidden_leftovers(world.mirror_area()) == []
    assert os.path.isdir("/etc")


def test_the_area_journal_goes_along(world):
    world.backup()
    (world.area() / mirror.JOURNAL).write_text('{"snapshot": "x"}\n')
    world.setup()
    world.run()
    assert (world.mirror_area() / mirror.JOURNAL).read_text() == '{"snapshot": "x"}\n'


# --- the command ----------------------------------------------------------------------


def write_config(world, **changes) -> str:
    data = dict(world.config.__dict__, **changes)
    path = world.tmp / "mirror.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_main_runs_logs_one_summary_and_records_success(world, capsys):
    world.backup()
    config = write_config(world)
    assert mirror.main(["--config", config, "setup"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is True
    assert mirror.main(["--config", config, "setup"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False

    assert mirror.main(["--config", config, "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    log = (world.tmp / "mirror.log").read_text().splitlines()
    summaries = [line for line in log if "mirror ok: " in line]
    assert len(summaries) == 1
    assert "copied=1 removed=0" in summaries[0]
    assert (world.state / "last-success").exists()

    assert mirror.main(["--config", config, "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["last_success"] == (world.state / "last-success").read_text().strip()


def test_main_alerts_on_each_failure_and_once_on_recovery(world, capsys):
    world.backup()
    alerts = world.tmp / "alerts"
    command = (
        'printf "%%s|%%s|%%s|%%s|" "$1" "$2" "$LINKDEST_EVENT" "$LINKDEST_MESSAGE" >> %s; cat >> %s'
        % (
            alerts,
            alerts,
        )
    )
    config = write_config(world, alert_command=command)
    assert mirror.main(["--config", config, "setup"]) == 0
    marker = (world.dst / mirror.MARKER_NAME).read_bytes()
    (world.dst / mirror.MARKER_NAME).unlink()

    assert mirror.main(["--config", config]) == 77

    assert "mirror refused" in capsys.readouterr().err
    event, argument, env_event, variable, stdin = alerts.read_text().split("|")
    assert event == env_event == "failure"
    assert argument == variable == stdin.strip()
    assert "carries no mirror drive marker" in argument
    assert "mirror refused" in (world.tmp / "mirror.log").read_text()
    state = json.loads((world.state / "state.json").read_text())
    assert (state["last_run"]["outcome"], state["failing"]) == ("refused", True)

    (world.dst / mirror.MARKER_NAME).write_bytes(marker)
    alerts.unlink()
    assert mirror.main(["--config", config, "--quiet"]) == 0
    event, argument = alerts.read_text().split("|")[:2]
    assert (event, argument.split(":")[0]) == ("recovery", "the mirror works again")

    alerts.unlink()
    assert mirror.main(["--config", config, "--quiet"]) == 0
    assert not alerts.exists()  # no alert on a plain success


def test_main_dry_run_prints_the_plan_and_alerts_nothing(world, capsys):
    world.backup()
    alerts = world.tmp / "alerts"
    config = write_config(world, alert_command="touch %s" % alerts)
    assert mirror.main(["--config", config, "setup"]) == 0
    capsys.readouterr()
    assert mirror.main(["--config", config, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would copy laptop-a/%s" % stamp(0) in out
    assert "mirror ok (dry run): areas=1 copied=1" in out
    assert not world.mirror_area().exists()
    assert not alerts.exists()


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["setup", "--allow-removals"], 64),
        (["run", "--new-destination"], 64),
        (["--config", "/nonexistent/mirror.json"], 78),
    ],
    ids=["allow-removals-on-setup", "new-destination-on-run", "no-config"],
)
def test_main_usage_errors(argv, code, capsys):
    assert mirror.main(argv) == code
    assert capsys.readouterr().err.startswith("linkdest-mirror: ")


def test_linkdest_server_dispatches_mirror(world, capsys):
    from ansible_collections.linkdest.backup.plugins.module_utils import server_cli

    world.backup()
    config = write_config(world)
    assert server_cli.main(["mirror", "--config", config, "setup"]) == 0
    assert server_cli.main(["mirror", "--config", config]) == 0
    assert "mirror ok: areas=1 copied=1" in capsys.readouterr().out


# --- manifests (issue 12) -----------------------------------------------------------


def test_manifests_go_along_and_a_damaged_new_file_is_not_mirrored(world):
    world.setup()
    first = world.backup()
    scrub.make_manifest(str(world.src), CLIENT, first)
    assert world.run().outcome == "ok"
    mf.load(str(world.dst), CLIENT, first)  # copied, and trusted on the mirror

    world.write("docs/new [1]*.txt", "new in the second snapshot\n")
    world.write("docs/also-new.txt", "fine\n")
    second = world.backup()
    scrub.make_manifest(str(world.src), CLIENT, second)
    damaged = world.area() / second / "docs" / "new [1]*.txt"
    lib.flip_byte(damaged)
    # Also damage a file the second snapshot shares with the first: the
    # mirror links its own good copy and reads nothing of it.
    lib.flip_byte(world.area() / second / "big" / "c.bin")

    result = world.run()
    assert result.outcome == "failed"
    assert result.damaged == 1
    assert "new [1]*.txt" in result.problems[0]
    mirrored = world.mirror_area() / second
    assert not (mirrored / "docs" / "new [1]*.txt").exists()
    assert (mirrored / "docs" / "also-new.txt").read_text() == "fine\n"
    assert (mirrored / "big" / "c.bin").read_text() == "c" * 100000
    assert (mirrored / "big" / "c.bin").stat().st_ino == (
        world.mirror_area() / first / "big" / "c.bin"
    ).stat().st_ino
    mf.load(str(world.dst), CLIENT, second)

    # The next snapshot shares the damaged inode: still withheld, although the
    # source links it to the snapshot before.
    third = world.backup()
    scrub.make_manifest(str(world.src), CLIENT, third)
    result = world.run()
    assert result.damaged == 1
    assert not (world.mirror_area() / third / "docs" / "new [1]*.txt").exists()

    # verify puts the good bytes back on the backup drive by hand here (no good
    # copy anywhere): then the mirror's missing copies are filled from it.
    lib.flip_byte(damaged)
    report = scrub.verify_drive(str(world.dst), [CLIENT], other_root=str(world.src))
    assert sorted((f.snapshot, f.problem) for f in report.findings) == [
        (second, scrub.MISSING),
        (third, scrub.MISSING),
    ]
    scrub.heal(report, str(world.src))
    assert (mirrored / "docs" / "new [1]*.txt").read_text() == "new in the second snapshot\n"
    assert scrub.verify_drive(str(world.dst), [CLIENT]).findings == []


def test_exclude_pattern_matches_exactly_one_path(tmp_path):
    names = ["plain.txt", "star*.txt", "q?.txt", "br[ack]et", "back\\slash", "back\\*both"]
    src = tmp_path / "src"
    src.mkdir()
    for name in names + ["starXX.txt", "qX.txt", "brae"]:
        (src / name).write_text(name)
    for name in names:
        dest = tmp_path / ("dest-%d" % names.index(name))
        excludes = tmp_path / "excludes"
        excludes.write_bytes(os.fsencode(mirror.exclude_pattern(name)) + b"\0")
        subprocess.run(
            [RSYNC, "-a", "--from0", "--exclude-from=%s" % excludes, "%s/" % src, "%s/" % dest],
            check=True,
        )
        assert sorted(os.listdir(dest)) == sorted(set(os.listdir(src)) - {name}), name
