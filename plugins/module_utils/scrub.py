# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Scrub: re-read snapshots, compare them with their manifests, repair from
the other drive.

``linkdest-server verify`` calls verify_drive() for the backup drive and, when
the mirror is set up, for the mirror drive, then heal() for what it found.

- Every inode is read once per run, however many snapshots share it (hard
  links): damage to a shared inode is one read and one finding per snapshot.
- A run can be a slice: it stops after a byte budget (``--sample PERCENT`` of
  the drive's used space) or a deadline (``--max-time``) and leaves a cursor;
  the next run goes on from there, so weekly slices cover the whole drive.
- Repair never writes into an inode. The good bytes from the other drive
  (checked against the manifest first) go into a new file, which then replaces
  the damaged one under every name that shared it, one rename at a time: a good
  copy is never touched, and a crash leaves each name either old or repaired.
  On btrfs each damaged snapshot (a read-only subvolume) is unsealed for its
  own repair and sealed again; copies after the first share blocks by reflink.

Standard library only: this file runs on the server.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import stat
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from ansible_collections.linkdest.backup.plugins.module_utils import manifest as mf
from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap
from ansible_collections.linkdest.backup.plugins.module_utils import subvolumes

STATE_FILE = "verify.json"
HEAL_PREFIX = ".linkdest-heal-"

CONTENT = "content differs from the manifest"
MISSING = "missing"
CHANGED = "size or mtime differs from the manifest"
UNREADABLE = "unreadable"


@dataclass
class Finding:
    drive: str
    client: str
    snapshot: str
    path: str
    problem: str
    expected: str
    actual: str = ""
    # Filled by heal(): where the good bytes came from, or why none were found.
    repaired_from: str = ""
    unrepaired: str = ""
    # The entry's place in the manifest: a later slice that checks it again
    # closes the damage only if it is intact then.
    index: int = 0
    # Which inode was damaged (not stored: only valid on this drive, this run).
    dev: int = 0
    ino: int = 0

    def describe(self) -> str:
        text = "%s: %s/%s/%s: %s" % (
            self.drive,
            self.client,
            self.snapshot,
            self.path,
            self.problem,
        )
        if self.repaired_from:
            text += " (repaired from %s)" % self.repaired_from
        elif self.unrepaired:
            text += " (not repaired: %s)" % self.unrepaired
        return text

    def record(self) -> dict:
        data = asdict(self)
        del data["dev"], data["ino"]
        return data


@dataclass
class DriveReport:
    drive: str
    files: int = 0
    inodes_read: int = 0
    bytes_read: int = 0
    snapshots: list[str] = field(default_factory=list)  # CLIENT/back-T fully checked
    findings: list[Finding] = field(default_factory=list)
    manifest_problems: list[str] = field(default_factory=list)
    no_manifest: list[str] = field(default_factory=list)
    complete: bool = True  # False: stopped by the budget or the deadline
    cursor: list | None = None
    # CLIENT/back-T -> [first, last + 1) manifest entries this run checked.
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def damaged(self) -> list[Finding]:
        return [f for f in self.findings if not f.repaired_from]


class _DirCache:
    """Opens the parent directory of each path without following symlinks.

    Entries come in walk order, so consecutive files share their directory:
    keeping the last one open avoids reopening every component every time.
    """

    def __init__(self, top_fd: int):
        self.top_fd = top_fd
        self.rel: str | None = None
        self.fd: int | None = None

    def parent(self, relpath: str) -> tuple[int, str]:
        rel_dir, _slash, base = relpath.rpartition("/")
        if rel_dir == self.rel and base not in ("", ".", ".."):
            return self.fd, base  # the directory is open: only the name is new
        parts = snap.split_relpath(relpath)
        if rel_dir != self.rel:
            self.close()
            fd = os.dup(self.top_fd)
            try:
                for part in parts[:-1]:
                    child = mf.open_dir_at(part, fd)
                    os.close(fd)
                    fd = child
            except OSError:
                os.close(fd)
                raise
            self.rel, self.fd = rel_dir, fd
        return self.fd, parts[-1]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.rel = self.fd = None


def _areas(root: str, clients: list[str]) -> list[tuple[str, str]]:
    found = []
    for client in sorted(clients):
        area = os.path.join(root, client)
        if os.path.isdir(area) and not os.path.islink(area):
            found.append((client, area))
    return found


def verify_drive(
    root: str,
    clients: list[str],
    budget_bytes: int | None = None,
    deadline: float | None = None,
    cursor: list | None = None,
    snapshots: set[str] | None = None,
    other_root: str | None = None,
    checkpoint=None,
) -> DriveReport:
    """Compare every (or the next slice of) snapshot on ``root`` with its manifest.

    ``cursor`` is [client, snapshot, entry index] where an earlier slice
    stopped; ``snapshots`` limits the run to those CLIENT/back-T names. A
    snapshot without a trusted manifest of its own is checked against
    ``other_root``'s (the other drive's) manifest of the same snapshot.
    ``budget_bytes`` counts each file the manifests say is one inode once.
    ``checkpoint(report, cursor)`` is called after a snapshot is checked to
    its end (every finding of it settled) at most every CHECKPOINT_SECONDS,
    with the cursor just past it: a run killed later resumes from there.
    """
    report = DriveReport(drive=root)
    planned: set[tuple] = set()
    budget = [0]

    def over(entry: mf.Entry) -> bool:
        if budget_bytes is not None and budget[0] >= budget_bytes:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return True
        if (entry.ino, entry.size, entry.mtime_ns) not in planned:
            planned.add((entry.ino, entry.size, entry.mtime_ns))
            budget[0] += entry.size
        return False

    last_checkpoint = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(READERS) as pool:
        reading = _Reading(subvolumes.is_btrfs(root), report, pool)
        for client, area in _areas(root, clients):
            if cursor and client < cursor[0]:
                continue
            for item in snap.list_snapshots(area):
                key = "%s/%s" % (client, item.name)
                if snapshots is not None and key not in snapshots:
                    continue
                start = 0
                if cursor and (client, item.name) < (cursor[0], cursor[1]):
                    continue
                if cursor and (client, item.name) == (cursor[0], cursor[1]):
                    start = int(cursor[2])
                cursor = None
                manifest = _trusted_manifest(root, other_root, client, item.name, report)
                if manifest is None:
                    continue
                found_before = len(report.findings)
                where = (root, client, area, item.name)
                stopped = _verify_snapshot(where, manifest, start, reading, over)
                if not os.path.isdir(os.path.join(area, item.name)):
                    # Pruned while it was read: what went missing is no damage.
                    del report.findings[found_before:]
                    continue
                if stopped is not None:
                    report.complete = False
                    report.cursor = [client, item.name, stopped]
                    return report
                # Checked to its end (by this run alone, or by the slices the
                # cursor chained before it).
                report.snapshots.append(key)
                if checkpoint and time.monotonic() - last_checkpoint >= CHECKPOINT_SECONDS:
                    checkpoint(report, [client, item.name, len(manifest.entries)])
                    last_checkpoint = time.monotonic()
    return report


def _trusted_manifest(root, other_root, client, name, report) -> mf.Manifest | None:
    """The drive's own trusted manifest, else the other drive's; problems are reported."""
    problems = []
    for where in [root] + ([other_root] if other_root else []):
        try:
            found = mf.load(where, client, name)
        except mf.ManifestError as exc:
            if mf.has_manifest(where, client, name):
                problems.append(str(exc))
            continue
        # An untrusted manifest on this drive is reported even when the
        # other drive's is good: someone or something wrote it.
        report.manifest_problems += problems
        return found
    report.manifest_problems += problems
    if not problems:
        report.no_manifest.append("%s/%s" % (client, name))
    return None


# How often a long run saves where it is (run_verify): a killed run loses at
# most this much work, and a snapshot's worth.
CHECKPOINT_SECONDS = 300.0

# How many threads check files (lstat, open, read, hash): the disk always has
# requests queued while Python walks; how many entries may wait for them.
READERS = 4
MAX_PENDING = 512


class _Reading:
    """What this run has read: each content once (read_key()), by READERS threads.

    The walking thread checks each name (lstat, size, mtime) and opens a
    content the first time it meets it; a thread reads and hashes it, so the
    disk always has requests queued while the walk goes on.
    """

    def __init__(self, btrfs: bool, report: DriveReport, pool):
        self.btrfs = btrfs
        self.report = report
        self.pool = pool
        # read_key() -> the read's future, then (digest, error) once settled
        # (a tuple holds far less than a future, for a drive of many files).
        self.digests: dict[tuple, object] = {}

    def check(self, dir_fd: int, base: str, entry: mf.Entry):
        """(problem, actual, lstat, None) now, or (None, None, lstat, read_key())."""
        try:
            st = os.lstat(base, dir_fd=dir_fd)
        except OSError:
            return (MISSING, "", None, None)
        if not stat.S_ISREG(st.st_mode):
            return (MISSING, "not a regular file", None, None)
        if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
            return (CHANGED, "size %d mtime_ns %d" % (st.st_size, st.st_mtime_ns), st, None)
        key = read_key(st, self.btrfs)
        if key not in self.digests:
            try:
                fd = mf.open_file_at(base, dir_fd)
            except OSError as exc:
                self.digests[key] = ("", exc.strerror or str(exc))
            else:
                self.digests[key] = self.pool.submit(_digest_and_close, fd)
            self.report.inodes_read += 1
            self.report.bytes_read += st.st_size
        return (None, None, st, key)

    def result(self, key: tuple) -> tuple[str, str]:
        value = self.digests[key]
        if isinstance(value, concurrent.futures.Future):
            value = self.digests[key] = value.result()
        return value


def _digest_and_close(fd: int) -> tuple[str, str]:
    try:
        return mf.digest_fd(fd), ""
    except OSError as exc:
        return "", exc.strerror or str(exc)
    finally:
        os.close(fd)


def _verify_snapshot(where, manifest, start, reading, over):
    """Check one snapshot from entry ``start``; returns where it stopped, or None."""
    root, client, area, name = where
    report = reading.report
    try:
        top_fd = mf.open_dir_at(os.path.join(area, name))
    except OSError as exc:
        report.manifest_problems.append("%s/%s: cannot open: %s" % (client, name, exc))
        return None
    dirs = _DirCache(top_fd)
    index = start
    pending: list = []  # (index, entry, future), in manifest order
    try:
        for index in range(start, len(manifest.entries)):
            entry = manifest.entries[index]
            if over(entry):
                return index
            report.files += 1
            try:
                dir_fd, base = dirs.parent(entry.path)
            except (OSError, snap.LayoutError):
                pending.append((index, entry, (MISSING, "", None, None)))
            else:
                pending.append((index, entry, reading.check(dir_fd, base, entry)))
            if len(pending) >= MAX_PENDING:
                _settle(where, pending, reading)
        index = len(manifest.entries)
    finally:
        _settle(where, pending, reading)
        report.ranges["%s/%s" % (client, name)] = (start, index)
        dirs.close()
        os.close(top_fd)
    return None


def _settle(where, pending: list, reading: _Reading) -> None:
    """Turn the checked entries into findings, in manifest order."""
    root, client, _area, name = where
    report = reading.report
    for index, entry, (problem, actual, st, key) in pending:
        if key is not None:
            digest, error = reading.result(key)
            if error:
                problem, actual = UNREADABLE, error
            elif digest != entry.sha256:
                problem, actual = CONTENT, digest
            else:
                continue
        report.findings.append(
            Finding(
                root,
                client,
                name,
                entry.path,
                problem,
                entry.sha256,
                actual,
                index=index,
                dev=st.st_dev if st is not None else 0,
                ino=st.st_ino if st is not None else 0,
            )
        )
    pending.clear()


def read_key(st: os.stat_result, btrfs: bool) -> tuple:
    """Which files are the same content, read once per run.

    On one file system, the same inode. On btrfs every snapshot is a
    subvolume of its own (own device number), where an unchanged file keeps
    its inode number, size, mtime and ctime and shares its extents with the
    snapshot before: reading it again would read the same blocks.
    """
    if btrfs:
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return (st.st_dev, st.st_ino)


def make_manifest(root: str, client: str, name: str) -> mf.BuildStats | None:
    """Write the manifest of the finished snapshot ``name``; None when it has one.

    ManifestError when it has one that is not trusted.

    Digests of files that are the same inode as in the nearest older snapshot
    with a trusted manifest are taken from that manifest: only new content is read.
    """
    area = os.path.join(root, client)
    if snap.parse_snapshot_name(name) is None or not os.path.isdir(os.path.join(area, name)):
        raise snap.SnapshotNotFoundError("no finished snapshot %s of %s" % (name, client))
    if mf.has_manifest(root, client, name):
        # Trusted: never rewritten. Not trusted: remaking it from what the
        # snapshot holds now would bless whatever changed it; verify reports
        # it and README says what to do.
        mf.load(root, client, name)
        return None
    previous = previous_dir = None
    trust_inodes = True
    older = [s.name for s in snap.list_snapshots(area) if s.name < name]
    for candidate in reversed(older):
        try:
            previous = mf.load(root, client, candidate)
        except mf.ManifestError:
            continue
        previous_dir = os.path.join(area, candidate)
        trust_inodes = not mf.repaired_since(root, client, candidate)
        break
    snapshot_dir = os.path.join(area, name)
    with mf.ManifestWriter(root, client, name, mf.filesystem_id(snapshot_dir)) as out:
        _manifest, stats = mf.build_manifest(
            snapshot_dir, client, name, previous, previous_dir, trust_inodes, out
        )
    return stats


def catch_up(root: str, clients: list[str], log=lambda message: None) -> int:
    """Manifests for every finished snapshot lacking one (oldest first: each
    builds on the one before), and none for snapshots that are gone."""
    made = 0
    for client, area in _areas(root, clients):
        names = [s.name for s in snap.list_snapshots(area)]
        for name in names:
            if mf.has_manifest(root, client, name):
                continue
            try:
                with snap.area_lock(area, wait=300):
                    stats = make_manifest(root, client, name)
            except snap.LockBusyError:
                log("manifest of %s/%s: the area stayed busy, next time" % (client, name))
                break
            except (OSError, snap.SnapshotError, mf.ManifestError) as exc:
                # One unreadable snapshot must not stop the others (nor the
                # verify that follows, which reports it as without a manifest).
                log("manifest of %s/%s failed: %s" % (client, name, exc))
                continue
            if stats is not None:
                made += 1
                log("manifest of %s/%s: %s" % (client, name, stats.describe()))
        mf.remove_orphans(root, client, set(names))
    return made


# --- repair -------------------------------------------------------------------

# Root's scratch directory on each drive: a repaired file is written and
# linked here, then renamed into the snapshot, so a crash never leaves a stray
# name inside a snapshot (only here, where the next heal sweeps it).
HEAL_DIR = ".linkdest-heal"


def _open_in_snapshot(root: str, client: str, snapshot: str, relpath: str):
    """(parent dir fd, name, lstat or None) of a path in a finished snapshot, or None
    when its directory cannot be reached."""
    top = os.path.join(root, client, snapshot)
    try:
        fd = mf.open_dir_at(top)
    except OSError:
        return None
    dirs = _DirCache(fd)
    try:
        dir_fd, base = dirs.parent(relpath)
        parent = os.dup(dir_fd)
    except (OSError, snap.LayoutError):
        return None
    finally:
        dirs.close()
        os.close(fd)
    try:
        st = os.lstat(base, dir_fd=parent)
    except FileNotFoundError:
        st = None
    except OSError:
        os.close(parent)
        return None
    return parent, base, st


def _good_copy(other_root: str, finding: Finding):
    """(fd, lstat) of the other drive's copy of the finding's file, if it matches
    the manifest; else (None, why not)."""
    opened = _open_in_snapshot(other_root, finding.client, finding.snapshot, finding.path)
    if opened is None or opened[2] is None:
        if opened is not None:
            os.close(opened[0])
        return None, "no copy on %s" % other_root
    parent, base, st = opened
    try:
        if not stat.S_ISREG(st.st_mode):
            return None, "the copy on %s is not a regular file" % other_root
        fd = mf.open_file_at(base, parent)
    except OSError as exc:
        return None, "the copy on %s is unreadable: %s" % (other_root, exc.strerror)
    finally:
        os.close(parent)
    if mf.digest_fd(fd) != finding.expected:
        os.close(fd)
        return None, "the copy on %s is damaged too" % other_root
    os.lseek(fd, 0, os.SEEK_SET)
    return fd, os.fstat(fd)


def _names_of_inode(
    root: str, client: str, group: list[Finding], one_snapshot: bool = False
) -> list[tuple[str, str]]:
    """Every (snapshot, path) on ``root`` that is the damaged inode.

    Every name of one inode had the same content when its snapshot was made,
    so the candidates are the entries with the expected digest (the mirror
    drive's manifests carry the backup drive's inode numbers, so those cannot
    tell). Each candidate is confirmed with lstat before it is replaced. On
    btrfs (``one_snapshot``) an inode lives in one subvolume only.
    """
    dev, ino = group[0].dev, group[0].ino
    expected = group[0].expected
    names = []
    area = os.path.join(root, client)
    snapshots = [group[0].snapshot] if one_snapshot else [s.name for s in snap.list_snapshots(area)]
    for name in snapshots:
        try:
            entries = mf.load(root, client, name).entries
        except mf.ManifestError:
            entries = []
        candidates = {f.path for f in group if f.snapshot == name}
        candidates |= {e.path for e in entries if e.sha256 == expected}
        for path in sorted(candidates):
            opened = _open_in_snapshot(root, client, name, path)
            if opened is None:
                continue
            os.close(opened[0])
            if opened[2] is not None and (opened[2].st_dev, opened[2].st_ino) == (dev, ino):
                names.append((name, path))
    return names


def _copy_metadata(template_fd: int, new_fd: int, st: os.stat_result) -> None:
    """Owner, mode, extended attributes (--fake-super's record) and times."""
    for attr in os.listxattr(template_fd):
        os.setxattr(new_fd, attr, os.getxattr(template_fd, attr))
    os.fchown(new_fd, st.st_uid, st.st_gid)
    os.fchmod(new_fd, stat.S_IMODE(st.st_mode))
    os.utime(new_fd, ns=(st.st_atime_ns, st.st_mtime_ns))


UNSEALED_PREFIX = "unsealed-"


def _scratch(root: str) -> int:
    """Root's scratch directory on the drive, emptied of what a crash left
    (after sealing again any snapshot a crashed repair left unsealed)."""
    path = os.path.join(root, HEAL_DIR)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    fd = mf.open_dir_at(path)
    st = os.fstat(fd)
    if st.st_uid != 0 or st.st_mode & 0o077:
        os.close(fd)
        raise OSError("%s is not root's alone: not used" % path)
    try:
        for name in os.listdir(fd):
            if name.startswith(UNSEALED_PREFIX):
                with open(
                    name, encoding="utf-8", opener=functools.partial(os.open, dir_fd=fd)
                ) as f:
                    _seal_after_crash(root, f.read().strip())
            os.unlink(name, dir_fd=fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def recover_interrupted_repairs(root: str) -> None:
    """Seal again what a repair that crashed left unsealed, and clear its scratch."""
    os.close(_scratch(root))


def _seal_after_crash(root: str, record: str) -> None:
    """Remove the repair's temporary names from a snapshot's top directory and
    seal it again. The names are the only thing a crash can leave there: every
    other name is either still the damaged file or already the repaired one."""
    client, _sep, snapshot = record.partition("/")
    if not client or "/" in snapshot or snap.parse_snapshot_name(snapshot) is None:
        return
    try:
        top_fd = mf.open_dir_at(os.path.join(root, client, snapshot))
    except OSError:
        return  # pruned meanwhile
    try:
        if not subvolumes.is_subvolume(os.path.join(root, client, snapshot), os.fstat(top_fd)):
            return
        if subvolumes.is_readonly_fd(top_fd):
            return
        for name in os.listdir(top_fd):
            if name.startswith(HEAL_PREFIX):
                os.unlink(name, dir_fd=top_fd)
        subvolumes.set_readonly_fd(top_fd, True)
    finally:
        os.close(top_fd)


def _write_good(
    source_fd: int, scratch_fd: int, template_fd: int, expected: str, repaired_fd=None
) -> str:
    """A new file in the scratch directory with the good bytes; returns its name.

    Its owner, mode, xattrs and times come from ``template_fd``: the damaged
    file (to stand in for it exactly) or, for a missing one, the good copy.
    ``repaired_fd``, a file this repair already wrote on the same btrfs drive,
    lends its extents instead (a reflink): repaired snapshots share blocks
    again, as the damaged ones did.
    """
    tmp = HEAL_PREFIX + uuid.uuid4().hex
    new_fd = os.open(
        tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=scratch_fd
    )
    try:
        cloned = repaired_fd is not None and subvolumes.clone_file(repaired_fd, new_fd)
        # A clone is checked like a copy: nothing unchecked goes under a name.
        if cloned and _digest_from_start(new_fd) != expected:
            os.ftruncate(new_fd, 0)
            cloned = False
        if not cloned:
            _copy_checked(source_fd, new_fd, expected)
        _copy_metadata(template_fd, new_fd, os.fstat(template_fd))
        os.fsync(new_fd)
    except BaseException:
        os.close(new_fd)
        os.unlink(tmp, dir_fd=scratch_fd)
        raise
    os.close(new_fd)
    return tmp


def _digest_from_start(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    digest = mf.digest_fd(fd)
    os.lseek(fd, 0, os.SEEK_SET)
    return digest


def _copy_checked(source_fd: int, new_fd: int, expected: str) -> None:
    """Read the good copy once from its start, hashing and writing the same bytes."""
    os.lseek(source_fd, 0, os.SEEK_SET)
    digest = mf.hashlib.sha256()
    while True:
        chunk = os.read(source_fd, mf.READ_CHUNK)
        if not chunk:
            break
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(new_fd, view) :]
    if digest.hexdigest() != expected:
        raise OSError("the good copy changed while it was read")


def _put_in_place(root, client, names, scratch_fd, tmp, dev=None, ino=None) -> int:
    """Put the new inode under each name, one rename at a time; returns how many.

    With ``dev``/``ino`` a name is replaced only while it still is the damaged
    inode; without, only while it is still missing (rename never replaces then:
    link() refuses an existing name).
    """
    placed = 0
    for snapshot, path in names:
        opened = _open_in_snapshot(root, client, snapshot, path)
        if opened is None:
            continue
        dir_fd, base, st = opened
        try:
            times = os.fstat(dir_fd)
            link = HEAL_PREFIX + uuid.uuid4().hex
            if ino is None:
                if st is not None:
                    continue  # no longer missing: leave it
                os.link(tmp, base, src_dir_fd=scratch_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            else:
                if st is None or (st.st_dev, st.st_ino) != (dev, ino):
                    continue  # changed since: leave it
                os.link(
                    tmp, link, src_dir_fd=scratch_fd, dst_dir_fd=scratch_fd, follow_symlinks=False
                )
                os.rename(link, base, src_dir_fd=scratch_fd, dst_dir_fd=dir_fd)
            _keep_times(dir_fd, times)
            os.fsync(dir_fd)
            placed += 1
        finally:
            os.close(dir_fd)
    return placed


def _keep_times(fd: int, before: os.stat_result) -> None:
    """Put a directory's times back: a repair changes no metadata a snapshot recorded."""
    os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))


def heal(report: DriveReport, other_root: str | None) -> None:
    """Repair ``report``'s damaged and missing files on its drive from ``other_root``.

    Runs under each area's lock. Content damage is repaired under every name
    of the damaged inode; a missing file (the mirror left out a file that was
    damaged on the backup drive, say) is put back where its directory exists.
    A changed size or mtime means someone wrote to the file: reported, never
    overwritten. On btrfs each damaged snapshot is unsealed for its repair
    alone and sealed again (subvolumes.unsealed).
    """
    groups: dict[tuple, list[Finding]] = {}
    for finding in report.findings:
        if finding.problem in (CONTENT, UNREADABLE):
            key = (finding.client, "inode", finding.dev, finding.ino)
        elif finding.problem == MISSING and not finding.actual:
            key = (finding.client, "missing", finding.path, finding.expected)
        else:
            finding.unrepaired = "not a content error: someone wrote to it"
            continue
        if other_root is None:
            finding.unrepaired = "no other drive"
            continue
        groups.setdefault(key, []).append(finding)
    if not groups:
        return
    try:
        scratch_fd = _scratch(report.drive)
    except OSError as exc:
        for group in groups.values():
            for finding in group:
                finding.unrepaired = "repair failed: %s" % exc
        return
    # Per (client, digest): a file this run repaired, whose blocks the next
    # repaired copy on btrfs shares (it would have shared the damaged ones).
    repaired: dict[tuple[str, str], tuple[str, str]] = {}
    try:
        for (client, kind, *_rest), group in groups.items():
            try:
                # Both drives' areas: the mirror never runs meanwhile (it would
                # take an unsealed btrfs snapshot for an interrupted receive).
                with _both_areas_locked(report.drive, other_root, client):
                    reason = _heal_group(
                        report.drive,
                        other_root,
                        client,
                        group,
                        scratch_fd,
                        kind == "missing",
                        repaired,
                    )
            except (
                OSError,
                snap.SnapshotError,
                subvolumes.SubvolumeError,
                mf.ManifestError,
            ) as exc:
                reason = "repair failed: %s" % exc
            for finding in group:
                if reason:
                    finding.unrepaired = reason
                else:
                    finding.repaired_from = other_root
    finally:
        os.close(scratch_fd)


@contextlib.contextmanager
def _both_areas_locked(root: str, other_root: str, client: str):
    with contextlib.ExitStack() as stack:
        for area in sorted({os.path.join(root, client), os.path.join(other_root, client)}):
            if os.path.isdir(area):
                stack.enter_context(snap.area_lock(area, wait=300))
        yield


def _heal_group(root, other_root, client, group, scratch_fd, missing, repaired) -> str:
    """Repair one damaged inode, or one missing file; returns why not, or ''."""
    on_btrfs = snap.is_subvolume_snapshot(os.path.join(root, client), group[0].snapshot)
    source_fd, why = None, ""
    for finding in group:
        source_fd, why = _good_copy(other_root, finding)
        if source_fd is not None:
            break
    if source_fd is None:
        return why
    try:
        if missing:
            names = [(f.snapshot, f.path) for f in group]
        else:
            names = _names_of_inode(root, client, group, one_snapshot=on_btrfs)
            if not names:
                return "the damaged file changed meanwhile"
            # Before an inode a manifest names is freed (and its number reused).
            mf.mark_repaired(root, client)
        template_fd = source_fd if missing else _open_regular(root, client, names[0])
        if template_fd is None:
            return "the damaged file vanished meanwhile"
        try:
            if on_btrfs:
                placed = _heal_in_subvolumes(
                    root,
                    client,
                    names,
                    (scratch_fd, source_fd, template_fd),
                    group[0],
                    missing,
                    repaired,
                )
            else:
                placed = _heal_names(
                    root, client, names, scratch_fd, source_fd, template_fd, group[0], missing
                )
        finally:
            if template_fd != source_fd:
                os.close(template_fd)
    finally:
        os.close(source_fd)
    if placed < len(names):
        return "repaired %d of %d names; the rest changed meanwhile (verify again)" % (
            placed,
            len(names),
        )
    return ""


def _open_regular(root: str, client: str, name: tuple[str, str]):
    """The file at (snapshot, path) opened for reading, or None when it is gone."""
    opened = _open_in_snapshot(root, client, name[0], name[1])
    if opened is None:
        return None
    try:
        return None if opened[2] is None else mf.open_file_at(opened[1], opened[0])
    finally:
        os.close(opened[0])


def _heal_names(
    root, client, names, scratch_fd, source_fd, template_fd, first, missing, repaired_fd=None
) -> int:
    """Write the good file once in ``scratch_fd`` and put it under ``names``; how many."""
    tmp = _write_good(source_fd, scratch_fd, template_fd, first.expected, repaired_fd)
    try:
        return _put_in_place(
            root,
            client,
            names,
            scratch_fd,
            tmp,
            None if missing else first.dev,
            None if missing else first.ino,
        )
    finally:
        os.unlink(tmp, dir_fd=scratch_fd)


def _heal_in_subvolumes(root, client, names, fds, first, missing, repaired) -> int:
    """The btrfs repair: each snapshot is a read-only subvolume, and a file
    cannot be linked from one subvolume into another. So each snapshot in
    turn is unsealed, gets the good file written into its own top directory
    and put under its names, and is sealed again; a copy after the first
    shares its blocks (a reflink), found in ``repaired`` by digest. The
    laptop's account never writes to a finished snapshot meanwhile: heal()
    holds the area's lock, and the gate lets it write only into the run it
    started. A record in the scratch directory names the unsealed snapshot
    until it is sealed again: after a crash, the next repair seals it.
    """
    scratch_fd, source_fd, template_fd = fds
    by_snapshot: dict[str, list[tuple[str, str]]] = {}
    for snapshot, path in names:
        by_snapshot.setdefault(snapshot, []).append((snapshot, path))
    placed = 0
    for snapshot, batch in by_snapshot.items():
        earlier = repaired.get((client, first.expected))
        top_fd = mf.open_dir_at(os.path.join(root, client, snapshot))
        repaired_fd = None
        record = ""
        try:
            repaired_fd = _open_regular(root, client, earlier) if earlier else None
            times = os.fstat(top_fd)
            record = _write_record(scratch_fd, "%s/%s" % (client, snapshot))
            with subvolumes.unsealed(top_fd):
                try:
                    done = _heal_names(
                        root,
                        client,
                        batch,
                        top_fd,
                        source_fd,
                        template_fd,
                        first,
                        missing,
                        repaired_fd,
                    )
                finally:
                    _keep_times(top_fd, times)
        finally:
            if record and _is_sealed(top_fd):
                os.unlink(record, dir_fd=scratch_fd)
            os.close(top_fd)
            if repaired_fd is not None:
                os.close(repaired_fd)
        placed += done
        if done == len(batch):
            # Every name holds the checked bytes now: a safe source to clone.
            repaired.setdefault((client, first.expected), batch[0])
    return placed


def _write_record(dir_fd: int, text: str) -> str:
    """A durable note in the scratch directory; returns its name."""
    name = UNSEALED_PREFIX + uuid.uuid4().hex
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, text.encode("utf-8", "surrogateescape") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.fsync(dir_fd)
    return name


def _is_sealed(fd: int) -> bool:
    try:
        return subvolumes.is_readonly_fd(fd)
    except (OSError, subvolumes.SubvolumeError):
        return False


# --- a run over both drives ------------------------------------------------------


@dataclass
class VerifyRun:
    reports: list[DriveReport]
    state: dict
    manifests_made: int = 0

    @property
    def repaired(self) -> list[Finding]:
        return [f for r in self.reports for f in r.findings if f.repaired_from]

    @property
    def damaged(self) -> list[dict]:
        """Damage not repaired: this run's and earlier runs' that no run has seen fixed."""
        return open_damage(self.state)

    @property
    def problems(self) -> list[str]:
        return [p for r in self.reports for p in r.manifest_problems]


def run_verify(
    root: str,
    clients: list[str],
    mirror_root: str | None,
    state_dir: str,
    sample_percent: float | None = None,
    max_time: float | None = None,
    restart: bool = False,
    repair: bool = True,
    save: bool = True,
    statvfs=os.statvfs,
    log=lambda message: None,
) -> VerifyRun:
    """Verify the backup drive, then the mirror drive, each from its cursor.

    With ``save`` off (check mode) nothing is written: no missing manifest is
    made, nothing repaired, no state recorded.
    """
    made = catch_up(root, clients, log) if save else 0
    drives = [(root, mirror_root)]
    if mirror_root is not None:
        drives.append((mirror_root, root))
    state = read_state(state_dir)
    started = time.monotonic()
    now = datetime.now(timezone.utc)
    reports = []
    for index, (drive, other) in enumerate(drives):
        if save and repair:
            try:
                recover_interrupted_repairs(drive)
            except (OSError, subvolumes.SubvolumeError) as exc:
                log("%s: cannot clear what an interrupted repair left: %s" % (drive, exc))
        saved = state.get("drives", {}).get(drive, {})
        deadline = None
        if max_time is not None:
            # Each drive gets its share of the time.
            deadline = started + max_time * (index + 1) / len(drives)
        budget = None
        if sample_percent is not None:
            st = statvfs(drive)
            budget = max(1, int((st.f_blocks - st.f_bfree) * st.f_frsize * sample_percent / 100))
        report = verify_drive(
            drive,
            clients,
            budget_bytes=budget,
            deadline=deadline,
            cursor=None if restart else saved.get("cursor"),
            other_root=other,
            checkpoint=functools.partial(_save_progress, state, now, state_dir) if save else None,
        )
        if repair and save:
            heal(report, other)
        else:
            for finding in report.findings:
                finding.unrepaired = "repair not asked for"
        if subvolumes.is_btrfs(drive):
            report.manifest_problems += btrfs_scrub_problems(drive)
        record(state, report, now)
        existing = {
            "%s/%s" % (client, item.name)
            for client in clients
            if os.path.isdir(os.path.join(drive, client))
            for item in snap.list_snapshots(os.path.join(drive, client))
        }
        forget_gone(state, {drive: existing})
        reports.append(report)
    if save:
        write_state(state_dir, state)
    return VerifyRun(reports, state, made)


_SCRUB_ERRORS = (
    "read_errors",
    "csum_errors",
    "verify_errors",
    "super_errors",
    "uncorrectable_errors",
)


def btrfs_scrub_problems(root: str) -> list[str]:
    """What the last ``btrfs scrub`` of ``root`` found: btrfs checks its own
    checksums of every block, which covers what a manifest cannot repair there."""
    try:
        result = subprocess.run(
            [subvolumes.btrfs_command(), "scrub", "status", "-R", root],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
    except (OSError, subvolumes.SubvolumeError) as exc:
        return ["btrfs scrub status of %s: %s" % (root, exc)]
    if result.returncode != 0:
        return ["btrfs scrub status of %s failed: %s" % (root, result.stderr.strip())]
    return parse_scrub_status(root, result.stdout)


def parse_scrub_status(root: str, text: str) -> list[str]:
    counts = {}
    for line in text.splitlines():
        key, _colon, value = line.strip().partition(":")
        if key in _SCRUB_ERRORS and value.strip().isdigit() and int(value) > 0:
            counts[key] = int(value)
    if not counts:
        return []
    return [
        "btrfs scrub of %s found %s"
        % (root, ", ".join("%s %d" % item for item in sorted(counts.items())))
    ]


# --- state ----------------------------------------------------------------------


def _save_progress(state: dict, now: datetime, state_dir: str, report, cursor: list) -> None:
    """Record a run so far as a slice that stopped at ``cursor`` (verify_drive's
    checkpoint). The findings are recorded as open damage: the end of the run
    records them again, repaired or not, over the same entries."""
    kept = report.cursor, report.complete
    report.cursor, report.complete = cursor, False
    try:
        record(state, report, now)
        write_state(state_dir, state)
    finally:
        report.cursor, report.complete = kept


def read_state(state_dir: str) -> dict:
    try:
        with open(os.path.join(state_dir, STATE_FILE), encoding="utf-8") as handle:
            return json.load(handle)
    except (FileNotFoundError, ValueError):
        return {}


def write_state(state_dir: str, state: dict) -> None:
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(state_dir, STATE_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


def record(state: dict, report: DriveReport, now: datetime) -> None:
    """Fold one drive's report into the state: cursor, per-snapshot verdicts, open damage.

    Open damage stays until a later run checks that entry again and finds
    it intact (repaired, or restored by hand), or its snapshot is gone.
    """
    drive = state.setdefault("drives", {}).setdefault(report.drive, {})
    stamp = now.astimezone(timezone.utc).isoformat(timespec="seconds")
    drive["cursor"] = report.cursor
    drive["last_run"] = stamp
    if report.complete:
        drive["last_complete"] = stamp
    verified = drive.setdefault("snapshots", {})
    open_damage = {(d["client"], d["snapshot"], d["path"]): d for d in drive.get("damage", [])}
    for key in report.snapshots:
        verified[key] = stamp
    for key, (first, stop) in report.ranges.items():
        client, name = key.split("/", 1)
        for item, damage in list(open_damage.items()):
            if item[:2] == (client, name) and first <= damage.get("index", -1) < stop:
                del open_damage[item]
    for finding in report.findings:
        if finding.repaired_from:
            continue
        open_damage[(finding.client, finding.snapshot, finding.path)] = finding.record()
    drive["damage"] = [open_damage[k] for k in sorted(open_damage)]
    drive["manifest_problems"] = report.manifest_problems
    drive["repaired"] = drive.get("repaired", []) + [
        dict(f.record(), time=stamp) for f in report.findings if f.repaired_from
    ]
    drive["repaired"] = drive["repaired"][-100:]


def forget_gone(state: dict, existing: dict[str, set[str]]) -> None:
    """Drop verdicts and damage of snapshots that were pruned.

    ``existing`` maps each drive to its set of CLIENT/back-T names.
    """
    for drive_root, drive in state.get("drives", {}).items():
        names = existing.get(drive_root)
        if names is None:
            continue
        drive["snapshots"] = {k: v for k, v in drive.get("snapshots", {}).items() if k in names}
        drive["damage"] = [
            d for d in drive.get("damage", []) if "%s/%s" % (d["client"], d["snapshot"]) in names
        ]


def open_damage(state: dict) -> list[dict]:
    return [d for drive in state.get("drives", {}).values() for d in drive.get("damage", [])]


def metrics_text(state: dict) -> str:
    """Prometheus lines for verify: open damage and the last complete pass, per drive."""
    lines = [
        "# HELP linkdest_damaged_files Files that verify found damaged and could not repair.",
        "# TYPE linkdest_damaged_files gauge",
    ]
    drives = state.get("drives", {})
    for root, drive in sorted(drives.items()):
        lines.append('linkdest_damaged_files{drive="%s"} %d' % (root, len(drive.get("damage", []))))
    lines += [
        "# HELP linkdest_verify_last_complete_timestamp_seconds"
        " When verify last reached the end of the drive.",
        "# TYPE linkdest_verify_last_complete_timestamp_seconds gauge",
    ]
    for root, drive in sorted(drives.items()):
        if drive.get("last_complete"):
            stamp = datetime.fromisoformat(drive["last_complete"]).timestamp()
            lines.append(
                'linkdest_verify_last_complete_timestamp_seconds{drive="%s"} %d' % (root, stamp)
            )
    return "\n".join(lines) + "\n"


def verification_of(root: str, client: str, names: list[str], state: dict) -> dict[str, dict]:
    """Per snapshot: its manifest (trusted, missing or why not trusted), when
    verify last checked it whole on this drive, and its open damage."""
    drive = state.get("drives", {}).get(root, {})
    verified = drive.get("snapshots", {})
    damage: dict[str, list[str]] = {}
    for item in drive.get("damage", []):
        if item["client"] == client:
            damage.setdefault(item["snapshot"], []).append(item["path"])
    out = {}
    for name in names:
        if not mf.has_manifest(root, client, name):
            manifest = "missing"
        else:
            try:
                mf.load(root, client, name)
                manifest = "trusted"
            except mf.ManifestError as exc:
                manifest = "not trusted: %s" % exc
        out[name] = {
            "manifest": manifest,
            "verified": verified.get("%s/%s" % (client, name)),
            "damaged": sorted(damage.get(name, [])),
        }
    return out
