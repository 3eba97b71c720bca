# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The btrfs backend of snapshots.py on a real btrfs file system.

Each test gets a fresh loop-mounted btrfs image on this machine (root and
btrfs-progs, which scripts/ensure-host installs; `make test` runs as root).
The laptop's account is played by a forked child that drops to an unused uid,
so what the kernel refuses it is really refused. The molecule scenario
`btrfs` covers the same through sshd, rsync and sudo.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ansible_collections.linkdest.backup.plugins.module_utils import mirror, retention, subvolumes
from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap

ACCOUNT_UID = 64123  # no such user: the laptop's account, as the kernel sees it
NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=timezone.utc)


IMAGES = {}  # mount point -> its image file, for the bit-rot test


def _btrfs_drive(tmp_path, name):
    if os.geteuid() != 0:
        pytest.fail("these tests mount a btrfs image: run them as root (make test does)")
    image = tmp_path / (name + ".img")
    # Outside pytest's root-only tmp_path, so that the account can reach it.
    mount_point = Path(tempfile.mkdtemp(prefix="linkdest-btrfs-", dir="/var/tmp"))
    with open(image, "wb") as handle:
        handle.truncate(256 * 1024 * 1024)
    subprocess.run(["mkfs.btrfs", "-q", "-f", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True)
    IMAGES[mount_point] = image
    try:
        mount_point.chmod(0o711)
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
        mount_point.rmdir()


@pytest.fixture
def drive(tmp_path):
    yield from _btrfs_drive(tmp_path, "drive")


@pytest.fixture
def mirror_drive(tmp_path):
    yield from _btrfs_drive(tmp_path, "mirror")


@pytest.fixture
def area(drive):
    path = drive / "laptop"
    path.mkdir(mode=0o700)
    os.chown(path, ACCOUNT_UID, ACCOUNT_UID)
    return path


def as_account(func, *args) -> int:
    """Run func(*args) in a child with the account's uid; return the errno it
    failed with, or 0."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setgid(ACCOUNT_UID)
            os.setuid(ACCOUNT_UID)
            func(*args)
        except OSError as exc:
            code = exc.errno or 1
        except BaseException:
            code = 250
        os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def write_as_account(path, content: str) -> int:
    def write():
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(content)

    return as_account(write)


def backup(area, content: dict[str, str], when: datetime) -> str:
    """One run as the gate does it: start, the account writes, root seals, finalize."""
    incoming = snap.start_incomplete(str(area), when, "btrfs")
    root = area / incoming.name
    assert os.lstat(root).st_uid == ACCOUNT_UID
    for relpath, text in content.items():
        assert write_as_account(root / relpath, text) == 0
    for relpath in set(os.listdir(root)) - set(content):
        os.unlink(root / relpath)  # what rsync --delete does for the laptop
    return snap.finalize(str(area), incoming.name).final


def test_a_run_seals_into_a_read_only_subvolume_of_root(area):
    name = backup(area, {"a.txt": "one"}, NOW)

    path = area / name
    st = os.lstat(path)
    assert st.st_ino == subvolumes.SUBVOLUME_ROOT_INODE
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o755)
    assert subvolumes.is_readonly(str(path))
    assert snap.read_current(str(area)) == name
    assert snap.is_subvolume_snapshot(str(area), name)
    with pytest.raises(OSError, match="Read-only file system"):
        (path / "a.txt").write_text("changed")


def test_the_account_can_neither_unseal_nor_delete_a_finished_snapshot(area):
    name = backup(area, {"a.txt": "one"}, NOW)
    path = str(area / name)

    def unseal():
        fd = subvolumes.open_dir(path)
        subvolumes.set_readonly_fd(fd, False)

    def destroy():
        fd = subvolumes.open_dir(str(area))
        subvolumes.destroy_at(fd, name)

    assert as_account(unseal) == errno.EPERM
    assert as_account(destroy) in (errno.EPERM, errno.EROFS, errno.EACCES)
    assert write_as_account(area / name / "a.txt", "x") in (errno.EACCES, errno.EROFS)
    assert subvolumes.is_readonly(path)
    assert (area / name / "a.txt").read_text() == "one"


def test_the_next_run_starts_from_current_and_shares_its_blocks(area):
    first = backup(area, {"a.txt": "one", "big.bin": "x" * 1_000_000}, NOW)
    incoming = snap.start_incomplete(str(area), NOW + timedelta(hours=1), "btrfs")

    root = area / incoming.name
    assert (root / "big.bin").read_text() == "x" * 1_000_000
    assert os.lstat(root).st_ino == subvolumes.SUBVOLUME_ROOT_INODE
    assert not subvolumes.is_readonly(str(root))
    assert os.lstat(root).st_uid == ACCOUNT_UID
    assert write_as_account(root / "a.txt", "two") == 0
    final = snap.finalize(str(area), incoming.name).final
    sizes = subvolumes.exclusive_bytes([str(area / first), str(area / final)])
    # The big file is shared: neither snapshot holds it alone.
    assert sizes[str(area / final)] < 100_000, sizes
    assert (area / first / "a.txt").read_text() == "one"
    assert (area / final / "a.txt").read_text() == "two"


def test_an_interrupted_run_is_resumed_under_the_new_name(area):
    backup(area, {"a.txt": "one"}, NOW)
    interrupted = snap.start_incomplete(str(area), NOW + timedelta(hours=1), "btrfs")
    assert write_as_account(area / interrupted.name / "partial.bin", "arrived") == 0

    resumed = snap.start_incomplete(str(area), NOW + timedelta(hours=2), "btrfs")

    assert not (area / interrupted.name).exists()
    assert (area / resumed.name / "partial.bin").read_text() == "arrived"
    assert [s.name for s in snap.list_incomplete(str(area))] == [resumed.name]


def test_planted_symlinks_never_lead_root_out_of_the_area(area, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    # The account plants the next run's name, and a symlink where current points.
    stamp = snap.format_stamp(NOW)
    os.symlink(outside, area / ("incomplete_back-" + stamp))
    os.symlink(outside, area / "back-2026-11-25T00_00_00")
    os.symlink("back-2026-11-25T00_00_00", area / "current")

    incoming = snap.start_incomplete(str(area), NOW, "btrfs")

    # The planted name is skipped, and the symlinked "current" is no source.
    assert incoming.name != "incomplete_back-" + stamp
    assert os.listdir(area / incoming.name) == []
    assert os.listdir(outside) == []
    with pytest.raises(snap.SnapshotError):
        snap.discard_subvolume(str(area), "incomplete_back-" + stamp)
    assert outside.is_dir()


def test_discard_refuses_a_finished_snapshot(area):
    name = backup(area, {"a.txt": "one"}, NOW)
    with pytest.raises(snap.LayoutError):
        snap.discard_subvolume(str(area), name)
    with pytest.raises(snap.SnapshotNotFoundError):
        snap.discard_subvolume(str(area), "incomplete_" + name)
    assert (area / name / "a.txt").read_text() == "one"


def test_root_prunes_finished_subvolumes_and_nothing_the_account_renamed(area):
    names = [backup(area, {"a.txt": str(n)}, NOW + timedelta(minutes=n)) for n in range(5)]

    def rename(old, new):
        os.rename(area / old, area / new)

    # The account renames one finished snapshot to a trash name (as if a
    # deletion had been interrupted), and one to an incomplete run's name;
    # it also plants directories named like snapshots of every day.
    assert as_account(rename, names[1], snap.TRASH_PREFIX + names[1]) == 0
    assert as_account(rename, names[2], "incomplete_" + names[2]) == 0
    for day in range(1, 40):
        fake = "back-" + snap.format_stamp(NOW - timedelta(days=day))
        assert as_account(os.mkdir, str(area / fake)) == 0
    assert as_account(snap.discard_subvolume, str(area), "incomplete_" + names[2]) != 0

    report = retention.prune(
        {"laptop": str(area)},
        retention.Policy(keep_all_hours=0, daily_days=0, min_keep=1),
        NOW + timedelta(hours=1),
    )

    # Only the sealed snapshots were weighed: the first of the week stays,
    # the newest stays, the one between goes; the renamed ones are untouched.
    part = report.areas["laptop"]
    assert [d.name for d in part.decisions] == [names[0], names[3], names[4]]
    assert part.removed == [names[3]]
    assert part.finished_deletions == []
    for kept in (names[0], names[4]):
        assert snap.is_sealed_snapshot(str(area), kept)
    assert subvolumes.is_readonly(str(area / (snap.TRASH_PREFIX + names[1])))
    assert subvolumes.is_readonly(str(area / ("incomplete_" + names[2])))
    listed = subprocess.run(
        ["btrfs", "subvolume", "list", str(area.parent)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert names[3] not in listed


def test_sealing_leaves_nothing_the_account_can_still_write(area):
    incoming = snap.start_incomplete(str(area), NOW, "btrfs")
    root = area / incoming.name
    assert write_as_account(root / "a.txt", "one") == 0
    # A process of the account's opens a.txt for writing before the seal and
    # writes after it (what an exploited receiver could leave running).
    ready_read, ready_write = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(ACCOUNT_UID)
            os.setuid(ACCOUNT_UID)
            fd = os.open(root / "a.txt", os.O_WRONLY | os.O_APPEND)
            os.write(ready_write, b"r")
            os.read(go_read, 1)
            with contextlib.suppress(OSError):
                os.write(fd, b"-after")
                os.close(fd)
        finally:
            os._exit(0)
    assert os.read(ready_read, 1) == b"r"

    def nest_and_set_read_only():
        fd = subvolumes.open_dir(str(root))
        subvolumes.create_at(fd, "nested")
        (root / "nested" / "n.txt").write_text("inside")
        subvolumes.set_readonly_fd(fd)  # as the subvolume's owner, it may

    assert as_account(nest_and_set_read_only) == 0

    final = snap.finalize(str(area), incoming.name).final
    os.write(go_write, b"g")
    os.waitpid(pid, 0)

    path = area / final
    assert os.lstat(path).st_uid == 0
    assert subvolumes.is_readonly(str(path))
    assert (path / "a.txt").read_text() == "one"
    # The nested subvolume did not come along: an empty directory in its place.
    assert os.listdir(path / "nested") == []
    assert not (area / incoming.name).exists()


def test_the_space_guard_reads_free_space_the_way_btrfs_counts_it(drive):
    usage = retention.measure(str(drive))
    statvfs = os.statvfs(drive)
    estimated = subvolumes.free_bytes(str(drive))
    assert estimated is not None
    assert usage.free_bytes == min(estimated, statvfs.f_bavail * statvfs.f_frsize)
    assert usage.total_inodes == 0  # btrfs reports no inode count: never short of inodes


def test_the_mirror_sends_read_only_snapshots_incrementally_between_btrfs_drives(
    area, mirror_drive
):
    names = [backup(area, {"big.bin": "x" * 2_000_000, "a.txt": "one"}, NOW)]
    # The next run changes a.txt only; big.bin's blocks stay shared.
    incoming = snap.start_incomplete(str(area), NOW + timedelta(hours=1), "btrfs")
    assert write_as_account(area / incoming.name / "a.txt", "two") == 0
    names.append(snap.finalize(str(area), incoming.name).final)
    config = mirror.Config(source=str(area.parent), destination=str(mirror_drive))
    result = mirror.RunResult()

    mirror.mirror_area(config, "laptop", result)

    dest = mirror_drive / "laptop"
    assert result.copied == 2
    assert result.problems == []
    for name in names:
        assert subvolumes.is_readonly(str(dest / name))
        assert os.lstat(dest / name).st_ino == subvolumes.SUBVOLUME_ROOT_INODE
    assert (dest / names[0] / "a.txt").read_text() == "one"
    assert (dest / names[1] / "a.txt").read_text() == "two"
    assert snap.read_current(str(dest)) == names[1]
    # The second went as a difference against the first: big.bin once, not twice.
    assert 2_000_000 < result.bytes < 2_000_000 + 200_000, result.bytes
    assert [n for n in os.listdir(dest) if n.startswith(".")] in ([], [".linkdest-journal"])

    # A snapshot pruned on the source goes from the mirror too.
    snap.delete_snapshot(str(area), names[0])
    again = mirror.RunResult()
    mirror.mirror_area(config, "laptop", again, allow_removals=True)
    assert again.removed == 1
    assert snap.list_snapshots(str(dest))[-1].name == names[1]
    assert [s.name for s in snap.list_snapshots(str(dest))] == [names[1]]


def test_the_mirror_copies_by_rsync_when_the_destination_is_not_btrfs(area, tmp_path):
    name = backup(area, {"a.txt": "one"}, NOW)
    plain = Path(tempfile.mkdtemp(prefix="linkdest-mirror-", dir="/var/tmp"))
    try:
        config = mirror.Config(source=str(area.parent), destination=str(plain))
        result = mirror.RunResult()
        mirror.mirror_area(config, "laptop", result)
        assert result.copied == 1
        assert result.problems == []
        assert (plain / "laptop" / name / "a.txt").read_text() == "one"
        assert not mirror.can_send(config, str(area), name)
    finally:
        shutil.rmtree(plain)


def test_an_interrupted_receive_is_removed_and_sent_again(area, mirror_drive):
    name = backup(area, {"a.txt": "one"}, NOW)
    dest = mirror_drive / "laptop"
    dest.mkdir()
    # What a receive killed halfway leaves: a writable subvolume, the final name.
    fd = subvolumes.open_dir(str(dest))
    try:
        subvolumes.create_at(fd, name)
    finally:
        os.close(fd)
    (dest / name / "half.txt").write_text("partial")
    config = mirror.Config(source=str(area.parent), destination=str(mirror_drive))
    result = mirror.RunResult()
    said = []

    mirror.mirror_area(config, "laptop", result, log=lambda message, *_: said.append(message))

    assert result.copied == 1
    assert "removed laptop/%s (an interrupted btrfs receive)" % name in said
    assert sorted(os.listdir(dest / name)) == ["a.txt"]
    assert subvolumes.is_readonly(str(dest / name))


def test_a_failing_receive_ends_the_copy_instead_of_hanging(area, mirror_drive):
    name = backup(area, {"big.bin": "y" * 3_000_000}, NOW)
    dest = mirror_drive / "laptop"
    dest.mkdir()
    (dest / name).mkdir()  # the receiver cannot create the subvolume: it fails at once
    config = mirror.Config(source=str(area.parent), destination=str(mirror_drive))

    def hung(_signum, _frame):
        raise TimeoutError("send_snapshot hung after the receiver failed")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        result = mirror.send_snapshot(config, str(area), str(dest), name, None)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)

    assert not result.ok
    assert "btrfs send/receive exit" in result.message
    assert os.listdir(dest / name) == []  # what was there is left alone


# --- manifests and verify on btrfs (issue 12) -------------------------------------------


def test_manifests_read_only_what_a_run_rewrote_and_verify_reads_shared_files_once(area, drive):
    from ansible_collections.linkdest.backup.plugins.module_utils import manifest as mf
    from ansible_collections.linkdest.backup.plugins.module_utils import scrub

    first = backup(area, {"a.txt": "one", "big.bin": "x" * 1_000_000}, NOW)
    scrub.make_manifest(str(drive), "laptop", first)
    # The next run rewrites a.txt in place (rsync --inplace does, on btrfs)
    # with the same size and the same mtime: only the ctime tells.
    incoming = snap.start_incomplete(str(area), NOW + timedelta(hours=1), "btrfs")
    target = area / incoming.name / "a.txt"
    st = os.lstat(target)
    assert write_as_account(target, "ONE") == 0
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.lstat(target).st_ino == st.st_ino
    second = snap.finalize(str(area), incoming.name).final

    stats = scrub.make_manifest(str(drive), "laptop", second)

    assert (stats.files, stats.read_files, stats.reused_files) == (2, 1, 1)
    entries = mf.load(str(drive), "laptop", second).by_path()
    assert entries["a.txt"].sha256 != mf.load(str(drive), "laptop", first).by_path()["a.txt"].sha256
    report = scrub.verify_drive(str(drive), ["laptop"])
    assert report.findings == []
    assert report.files == 4
    # big.bin once (the same extents in both), a.txt twice (rewritten).
    assert report.inodes_read == 3


def flip_in_sealed(path: Path, offset: int = 10) -> None:
    """Damage one byte of a file in a finished snapshot as bit rot would: same
    size, same mtime (only root, unsealing the subvolume, can write there)."""
    top = Path(*path.parts[: len(path.parts) - 1])
    while not subvolumes.is_subvolume(str(top)):
        top = top.parent
    st = os.lstat(path)
    fd = subvolumes.open_dir(str(top))
    try:
        with subvolumes.unsealed(fd), open(path, "r+b") as handle:
            handle.seek(offset)
            byte = handle.read(1)
            handle.seek(offset)
            handle.write(bytes([byte[0] ^ 0xFF]))
            handle.flush()
            os.fsync(handle.fileno())
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(fd)


def received_uuid(path) -> str:
    out = subprocess.run(
        ["btrfs", "subvolume", "show", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return next(
        line.split(":", 1)[1].strip() for line in out.splitlines() if "Received UUID" in line
    )


def fingerprint(top: Path) -> dict:
    """Content, mode, owner, mtime and xattrs of every path (directories too)."""
    out = {}
    for base, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            content = Path(path).read_bytes() if stat.S_ISREG(st.st_mode) else None
            xattrs = {a: os.getxattr(path, a, follow_symlinks=False) for a in os.listxattr(path)}
            out[os.path.relpath(path, top)] = (
                st.st_mode,
                st.st_uid,
                st.st_mtime_ns,
                content,
                xattrs,
            )
    return out


def test_damage_is_repaired_on_either_btrfs_drive_from_the_other(area, drive, mirror_drive):
    from ansible_collections.linkdest.backup.plugins.module_utils import scrub

    big = "".join("line %06d of a file every snapshot shares\n" % i for i in range(30_000))
    names = [backup(area, {"big.txt": big, "a.txt": "one"}, NOW)]
    names.append(backup(area, {"big.txt": big, "a.txt": "two"}, NOW + timedelta(hours=1)))
    for name in names:
        scrub.make_manifest(str(drive), "laptop", name)
    config = mirror.Config(source=str(drive), destination=str(mirror_drive))
    mirror.mirror_area(config, "laptop", mirror.RunResult())
    mirror.copy_manifests(config, "laptop", names)
    dest = mirror_drive / "laptop"
    received = {name: received_uuid(dest / name) for name in names}
    before = {name: fingerprint(area / name) for name in names}
    mirror_before = {name: fingerprint(dest / name) for name in names}

    # Bit rot in both snapshots' big.txt on drive 1 (on btrfs each snapshot
    # has its own inode, sharing blocks), and in a.txt on drive 2.
    for name in names:
        flip_in_sealed(area / name / "big.txt", 5000)
    flip_in_sealed(dest / names[1] / "a.txt", 1)
    report = scrub.verify_drive(str(drive), ["laptop"], other_root=str(mirror_drive))
    assert sorted((f.snapshot, f.path, f.problem) for f in report.findings) == [
        (names[0], "big.txt", scrub.CONTENT),
        (names[1], "big.txt", scrub.CONTENT),
    ]
    scrub.heal(report, str(mirror_drive))
    assert [f.unrepaired for f in report.findings] == ["", ""]
    assert [f.repaired_from for f in report.findings] == [str(mirror_drive)] * 2
    mirror_report = scrub.verify_drive(str(mirror_drive), ["laptop"], other_root=str(drive))
    assert [(f.snapshot, f.path) for f in mirror_report.findings] == [(names[1], "a.txt")]
    scrub.heal(mirror_report, str(drive))
    assert mirror_report.findings[0].repaired_from == str(drive)

    # Everything as it was, sealed again, the good copies only read.
    for name in names:
        assert fingerprint(area / name) == before[name]
        assert fingerprint(dest / name) == mirror_before[name]
        assert subvolumes.is_readonly(str(area / name))
        assert subvolumes.is_readonly(str(dest / name))
        assert received_uuid(dest / name) == received[name]
    assert scrub.verify_drive(str(drive), ["laptop"]).findings == []
    assert scrub.verify_drive(str(mirror_drive), ["laptop"]).findings == []
    assert not [n for n in os.listdir(area / names[1]) if n.startswith(scrub.HEAL_PREFIX)]
    # The two repaired copies share their blocks again (a reflink), as before.
    subvolumes.wait_for_deletions(str(drive))
    subprocess.run(["sync"], check=True)
    exclusive = subvolumes.exclusive_bytes([str(area / name / "big.txt") for name in names])
    assert max(exclusive.values()) < len(big) // 2, exclusive

    # The mirror still sends incrementally against a repaired snapshot.
    incoming = snap.start_incomplete(str(area), NOW + timedelta(hours=2), "btrfs")
    assert write_as_account(area / incoming.name / "a.txt", "three") == 0
    names.append(snap.finalize(str(area), incoming.name).final)
    result = mirror.RunResult()
    mirror.mirror_area(config, "laptop", result)
    assert result.problems == []
    assert result.copied == 1
    assert result.bytes < len(big) // 2, result.bytes
    assert (dest / names[2] / "big.txt").read_text() == big


def rot_on_disk(drive: Path, pattern: bytes) -> None:
    """Flip one byte of the only block holding ``pattern`` in the drive's image,
    below btrfs (as a failing disk would), then drop the page cache so the
    next read comes from the "disk" and meets btrfs's checksum."""
    subprocess.run(["sync"], check=True)
    image = IMAGES[drive]
    data = image.read_bytes()
    offset = data.index(pattern)
    assert data.find(pattern, offset + 1) == -1, "the pattern must be stored once"
    with open(image, "r+b") as handle:
        handle.seek(offset)
        handle.write(bytes([data[offset] ^ 0xFF]))
        handle.flush()
        os.fsync(handle.fileno())
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def test_bit_rot_under_btrfs_checksums_is_read_as_unreadable_and_repaired(
    area, drive, mirror_drive
):
    from ansible_collections.linkdest.backup.plugins.module_utils import scrub

    marker = b"ROT-ME-%s" % os.urandom(8).hex().encode()
    body = (marker + b"\n" + b"".join(b"%07d payload\n" % i for i in range(20_000))).decode()
    names = [backup(area, {"rot.txt": body, "a.txt": "one"}, NOW)]
    incoming = snap.start_incomplete(str(area), NOW + timedelta(hours=1), "btrfs")
    assert write_as_account(area / incoming.name / "a.txt", "two") == 0
    names.append(snap.finalize(str(area), incoming.name).final)
    for name in names:
        scrub.make_manifest(str(drive), "laptop", name)
    config = mirror.Config(source=str(drive), destination=str(mirror_drive))
    mirror.mirror_area(config, "laptop", mirror.RunResult())
    mirror.copy_manifests(config, "laptop", names)

    rot_on_disk(drive, marker)
    with pytest.raises(OSError, match="Input/output error") as caught:
        (area / names[1] / "rot.txt").read_bytes()
    assert caught.value.errno == errno.EIO  # btrfs caught it; nothing else would

    report = scrub.verify_drive(str(drive), ["laptop"], other_root=str(mirror_drive))
    # Both snapshots share the rotten block: both are named.
    assert sorted((f.snapshot, f.path, f.problem) for f in report.findings) == [
        (names[0], "rot.txt", scrub.UNREADABLE),
        (names[1], "rot.txt", scrub.UNREADABLE),
    ]
    scrub.heal(report, str(mirror_drive))
    assert [f.repaired_from for f in report.findings] == [str(mirror_drive)] * 2

    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    for name in names:
        assert (area / name / "rot.txt").read_text() == body
        assert subvolumes.is_readonly(str(area / name))
    assert scrub.verify_drive(str(drive), ["laptop"]).findings == []


def test_a_repair_that_crashed_is_sealed_again_and_the_mirror_waits_for_one(
    area, drive, mirror_drive
):
    from ansible_collections.linkdest.backup.plugins.module_utils import scrub

    name = backup(area, {"a.txt": "one"}, NOW)
    config = mirror.Config(source=str(drive), destination=str(mirror_drive), lock_timeout=1)
    mirror.mirror_area(config, "laptop", mirror.RunResult())
    dest = mirror_drive / "laptop" / name

    # A repair on the mirror drive is under way: the snapshot is unsealed and
    # the repair holds both drives' areas. The mirror must not take it for an
    # interrupted receive and delete it.
    fd = subvolumes.open_dir(str(dest))
    try:
        with scrub._both_areas_locked(str(mirror_drive), str(drive), "laptop"):
            subvolumes.set_readonly_fd(fd, False)
            with pytest.raises(mirror.BusyError):
                mirror.mirror_area(config, "laptop", mirror.RunResult())
            assert dest.is_dir()

        # Then it crashed there: unsealed, a temporary name left, its record kept.
        (dest / (scrub.HEAL_PREFIX + "0123")).write_text("half written")
        scratch = mirror_drive / scrub.HEAL_DIR
        scratch.mkdir(mode=0o700)
        (scratch / (scrub.UNSEALED_PREFIX + "0123")).write_text("laptop/%s\n" % name)

        scrub.recover_interrupted_repairs(str(mirror_drive))

        assert subvolumes.is_readonly_fd(fd)
    finally:
        os.close(fd)
    assert sorted(os.listdir(dest)) == ["a.txt"]
    assert os.listdir(scratch) == []
    result = mirror.RunResult()
    mirror.mirror_area(config, "laptop", result)
    assert result.problems == []
    assert (dest / "a.txt").read_text() == "one"


# --- the layout root keeps: the area's directory is root's (issue 20) ----------------

ACCOUNT_FILES = (".linkdest-journal", ".linkdest-received", ".linkdest-changes")


@pytest.fixture
def roots_area(drive):
    """A btrfs area as the role makes it: root's directory, the laptop's own
    group, 0750; the lock root's; the files the account writes its own."""
    path = drive / "laptop"
    path.mkdir(mode=0o750)
    os.chown(path, 0, ACCOUNT_UID)
    path.chmod(0o750)
    snap.ensure_account_files(str(path), ACCOUNT_FILES, ACCOUNT_UID, ACCOUNT_UID)
    with snap.area_lock(str(path)):
        pass
    return path


def start_for_account(area, when: datetime) -> tuple[str, int]:
    """What root's helper does on `start`: the run, and its subvolume id."""
    name = snap.snapshot_name(when, complete=False)
    snap.start_subvolume(str(area), name, owner=(ACCOUNT_UID, ACCOUNT_UID))
    return name, snap.subvolume_id_of(str(area), name)


def sealed_backup(area, text: str, when: datetime) -> str:
    name, ident = start_for_account(area, when)
    assert write_as_account(area / name / "a.txt", text) == 0
    return snap.seal_subvolume(str(area), name, ident)


def test_in_roots_area_the_account_can_name_nothing(roots_area):
    area = roots_area
    old = sealed_backup(area, "old", NOW)
    newer = sealed_backup(area, "newer", NOW + timedelta(hours=1))
    assert snap.read_current(str(area)) == newer
    assert os.lstat(area / snap.CURRENT_LINK).st_uid == 0
    running, _ident = start_for_account(area, NOW + timedelta(hours=2))
    later = "back-" + snap.format_stamp(NOW + timedelta(days=1))

    # Redate, replace, hide, plant: every name in the area is root's to give.
    attempts = {
        "redate": lambda: os.rename(area / old, area / later),
        "to incomplete": lambda: os.rename(area / old, area / ("incomplete_" + old)),
        "over the run": lambda: os.rename(area / old, area / running),
        "move the run": lambda: os.rename(area / running, area / "aside"),
        "plant": lambda: os.mkdir(area / later),
        "current": lambda: os.unlink(area / snap.CURRENT_LINK),
        "symlink": lambda: os.symlink(old, area / "x"),
        "lock": lambda: os.unlink(area / snap.LOCK_FILE),
    }
    for what, attempt in attempts.items():
        assert as_account(attempt) == errno.EACCES, what
    assert sorted(s.name for s in snap.list_snapshots(str(area))) == [old, newer]
    assert (area / old / "a.txt").read_text() == "old"

    # ... and still does its job: lock, write its run, its markers in place.
    def work():
        with snap.area_lock(str(area)):
            snap.write_area_file(str(area), ".linkdest-received", "%s 0\n" % running)
            snap.write_area_file(str(area), ".linkdest-journal", "{}\n", append=True)
            snap.clear_area_file(str(area), ".linkdest-changes")
        with open(area / running / "new.txt", "w", encoding="utf-8") as handle:
            handle.write("new")

    assert as_account(work) == 0
    assert snap.read_area_file(str(area), ".linkdest-received") == "%s 0\n" % running


def test_seal_and_discard_act_only_on_the_subvolume_root_started(roots_area):
    # Route 1 of issue 20, as if a rename had happened while root worked (or
    # in an area of the old layout): a finished snapshot under the run's name.
    area = roots_area
    old = sealed_backup(area, "old", NOW)
    running, ident = start_for_account(area, NOW + timedelta(hours=1))
    os.rename(area / running, area / "aside")
    os.rename(area / old, area / running)
    before = {n: subvolumes.is_readonly(str(area / n)) for n in os.listdir(area) if "back" in n}

    with pytest.raises(snap.IdentityError, match="not the run %d root started" % ident):
        snap.seal_subvolume(str(area), running, ident)
    with pytest.raises(snap.IdentityError):
        snap.discard_subvolume(str(area), running, ident, owner_uid=ACCOUNT_UID)

    # Nothing changed: still read-only, still there, content as sealed.
    assert {n: subvolumes.is_readonly(str(area / n)) for n in before} == before
    assert (area / running / "a.txt").read_text() == "old"
    assert snap.subvolume_id_of(str(area), "aside") == ident


def test_adopt_leaves_sealed_snapshots_root_s(roots_area):
    from ansible_collections.linkdest.backup.plugins.module_utils import server_cli

    area = roots_area
    name = sealed_backup(area, "one", NOW)
    # An article-made snapshot (a plain directory of another user) beside it.
    article = area / "back-2020-01-01T00_00_00"
    article.mkdir()
    (article / "f").write_text("article")
    os.chown(article / "f", 4321, 4321)
    os.chown(article, 4321, 4321)

    adopted = server_cli.adopt_area(str(area), ACCOUNT_UID, ACCOUNT_UID, roots_layout=True)

    assert sorted(adopted) == [article.name]
    st = os.lstat(area / name)
    assert (st.st_uid, subvolumes.is_readonly(str(area / name))) == (0, True)
    assert os.lstat(area / snap.LOCK_FILE).st_uid == 0
