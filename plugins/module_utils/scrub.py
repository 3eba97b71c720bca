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

Standard library only: this file runs on the server.
"""

from __future__ import annotations

import json
import os
import stat
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from ansible_collections.linkdest.backup.plugins.module_utils import manifest as mf
from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap

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
        parts = snap.split_relpath(relpath)
        rel_dir = "/".join(parts[:-1])
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
) -> DriveReport:
    """Compare every (or the next slice of) snapshot on ``root`` with its manifest.

    ``cursor`` is [client, snapshot, entry index] where an earlier slice
    stopped; ``snapshots`` limits the run to those CLIENT/back-T names.
    """
    report = DriveReport(drive=root)
    read: dict[tuple[int, int], tuple[str, str]] = {}  # (dev, ino) -> (digest, error)

    def over() -> bool:
        if budget_bytes is not None and report.bytes_read >= budget_bytes:
            return True
        return deadline is not None and time.monotonic() >= deadline

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
            try:
                manifest = mf.load(root, client, item.name)
            except mf.ManifestError as exc:
                if mf.has_manifest(root, client, item.name):
                    report.manifest_problems.append(str(exc))
                else:
                    report.no_manifest.append(key)
                continue
            stopped = _verify_snapshot(
                root, client, area, item.name, manifest, start, read, report, over
            )
            if stopped is not None:
                report.complete = False
                report.cursor = [client, item.name, stopped]
                return report
            report.snapshots.append(key)
    return report


def _verify_snapshot(root, client, area, name, manifest, start, read, report, over):
    """Check one snapshot from entry ``start``; returns where it stopped, or None."""
    try:
        top_fd = mf.open_dir_at(os.path.join(area, name))
    except OSError as exc:
        report.manifest_problems.append("%s/%s: cannot open: %s" % (client, name, exc))
        return None
    dirs = _DirCache(top_fd)
    try:
        for index in range(start, len(manifest.entries)):
            if over():
                return index
            entry = manifest.entries[index]
            report.files += 1
            problem = _check_entry(root, client, name, entry, dirs, read, report)
            if problem is not None:
                report.findings.append(problem)
    finally:
        dirs.close()
        os.close(top_fd)
    return None


def _check_entry(root, client, name, entry, dirs, read, report) -> Finding | None:
    def finding(problem: str, actual: str = "", st=None) -> Finding:
        return Finding(
            root,
            client,
            name,
            entry.path,
            problem,
            entry.sha256,
            actual,
            dev=st.st_dev if st is not None else 0,
            ino=st.st_ino if st is not None else 0,
        )

    try:
        dir_fd, base = dirs.parent(entry.path)
        st = os.lstat(base, dir_fd=dir_fd)
    except (OSError, snap.LayoutError):
        return finding(MISSING)
    if not stat.S_ISREG(st.st_mode):
        return finding(MISSING, "not a regular file")
    if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
        return finding(CHANGED, "size %d mtime_ns %d" % (st.st_size, st.st_mtime_ns), st)
    key = (st.st_dev, st.st_ino)
    if key not in read:
        try:
            digest, error = mf.digest_at(base, dir_fd), ""
        except OSError as exc:
            digest, error = "", exc.strerror or str(exc)
        read[key] = (digest, error)
        report.inodes_read += 1
        report.bytes_read += st.st_size
    digest, error = read[key]
    if error:
        return finding(UNREADABLE, error, st)
    if digest != entry.sha256:
        return finding(CONTENT, digest, st)
    return None


def make_manifest(root: str, client: str, name: str) -> mf.BuildStats | None:
    """Write the manifest of the finished snapshot ``name``; None when it has one.

    Digests of files that are the same inode as in the nearest older snapshot
    with a trusted manifest are taken from that manifest: only new content is read.
    """
    area = os.path.join(root, client)
    if snap.parse_snapshot_name(name) is None or not os.path.isdir(os.path.join(area, name)):
        raise snap.SnapshotNotFoundError("no finished snapshot %s of %s" % (name, client))
    try:
        mf.load(root, client, name)
        return None
    except mf.ManifestError:
        pass  # missing or not trusted: (re)made from the snapshot itself
    previous = previous_dir = None
    older = [s.name for s in snap.list_snapshots(area) if s.name < name]
    for candidate in reversed(older):
        try:
            previous = mf.load(root, client, candidate)
        except mf.ManifestError:
            continue
        previous_dir = os.path.join(area, candidate)
        break
    entries, stats = mf.build(os.path.join(area, name), previous, previous_dir)
    mf.write(root, client, name, entries)
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
            with snap.area_lock(area, wait=300):
                stats = make_manifest(root, client, name)
            if stats is not None:
                made += 1
                log(
                    "manifest of %s/%s: %d files, %d read (%d bytes), %d from the previous one"
                    % (
                        client,
                        name,
                        stats.files,
                        stats.read_files,
                        stats.read_bytes,
                        stats.reused_files,
                    )
                )
        mf.remove_orphans(root, client, set(names))
    return made


# --- repair -------------------------------------------------------------------


def _open_in_snapshot(root: str, client: str, snapshot: str, relpath: str):
    """(parent dir fd, name, lstat) of a path in a finished snapshot, or None."""
    top = os.path.join(root, client, snapshot)
    try:
        fd = mf.open_dir_at(top)
    except OSError:
        return None
    dirs = _DirCache(fd)
    try:
        dir_fd, base = dirs.parent(relpath)
        st = os.lstat(base, dir_fd=dir_fd)
        parent = os.dup(dir_fd)
    except (OSError, snap.LayoutError):
        return None
    finally:
        dirs.close()
        os.close(fd)
    return parent, base, st


def _good_copy(other_root: str, finding: Finding):
    """An fd on the other drive's copy of the finding's file, if it matches the manifest."""
    opened = _open_in_snapshot(other_root, finding.client, finding.snapshot, finding.path)
    if opened is None:
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
    return fd, ""


def _names_of_inode(root: str, client: str, group: list[Finding]) -> list[tuple[str, str]]:
    """Every (snapshot, path) on ``root`` that is the damaged inode.

    Hard links made by --link-dest keep the path; links inside a laptop's
    folder keep the inode number in the manifests. Each candidate is
    confirmed with lstat before it is replaced.
    """
    dev, ino = group[0].dev, group[0].ino
    paths = {f.path for f in group}
    names = []
    area = os.path.join(root, client)
    for item in snap.list_snapshots(area):
        try:
            entries = mf.load(root, client, item.name).entries
        except mf.ManifestError:
            entries = []
        candidates = paths | {e.path for e in entries if e.ino == ino}
        for path in sorted(candidates):
            opened = _open_in_snapshot(root, client, item.name, path)
            if opened is None:
                continue
            os.close(opened[0])
            if (opened[2].st_dev, opened[2].st_ino) == (dev, ino):
                names.append((item.name, path))
    return names


def _copy_metadata(bad_fd: int, new_fd: int, st: os.stat_result) -> None:
    """Owner, mode, extended attributes (--fake-super's record) and times of the damaged file."""
    for attr in os.listxattr(bad_fd):
        os.setxattr(new_fd, attr, os.getxattr(bad_fd, attr))
    os.fchown(new_fd, st.st_uid, st.st_gid)
    os.fchmod(new_fd, stat.S_IMODE(st.st_mode))
    os.utime(new_fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _write_good(source_fd: int, dir_fd: int, bad_name: str, expected: str) -> str:
    """A new file beside the damaged one with the good bytes; returns its name."""
    tmp = HEAL_PREFIX + uuid.uuid4().hex
    bad_fd = mf.open_file_at(bad_name, dir_fd)
    new_fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd
    )
    try:
        # Read the good copy once, hashing and writing the same bytes.
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
        _copy_metadata(bad_fd, new_fd, os.fstat(bad_fd))
        os.fsync(new_fd)
    except BaseException:
        os.close(new_fd)
        os.close(bad_fd)
        os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.close(new_fd)
    os.close(bad_fd)
    return tmp


def _replace_names(root, client, names, dev, ino, first_dir_fd, tmp) -> int:
    """Put the new inode under every name of the damaged one; returns how many."""
    replaced = 0
    for snapshot, path in names:
        opened = _open_in_snapshot(root, client, snapshot, path)
        if opened is None:
            continue
        dir_fd, base, st = opened
        try:
            if (st.st_dev, st.st_ino) != (dev, ino):
                continue  # changed since: leave it
            link = HEAL_PREFIX + uuid.uuid4().hex
            os.link(tmp, link, src_dir_fd=first_dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            os.rename(link, base, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
            replaced += 1
        finally:
            os.close(dir_fd)
    return replaced


def heal(report: DriveReport, other_root: str | None) -> None:
    """Repair ``report``'s damaged files on its drive from ``other_root``.

    Runs under each area's lock. Only content damage is repaired (a changed
    size or mtime means someone wrote to the file: that is reported, not
    overwritten). On btrfs, where finished snapshots are read-only
    subvolumes, nothing is repaired: it is reported, with btrfs scrub's
    own findings.
    """
    groups: dict[tuple, list[Finding]] = {}
    for finding in report.findings:
        if finding.problem not in (CONTENT, UNREADABLE):
            finding.unrepaired = "not a content error"
            continue
        if other_root is None:
            finding.unrepaired = "no other drive"
            continue
        groups.setdefault((finding.client, finding.dev, finding.ino), []).append(finding)
    for (client, _dev, _ino), group in groups.items():
        area = os.path.join(report.drive, client)
        try:
            with snap.area_lock(area, wait=300):
                reason = _heal_group(report.drive, other_root, client, group)
        except (OSError, snap.SnapshotError) as exc:
            reason = "repair failed: %s" % exc
        for finding in group:
            if reason:
                finding.unrepaired = reason
            else:
                finding.repaired_from = other_root


def _heal_group(root: str, other_root: str, client: str, group: list[Finding]) -> str:
    """Repair one damaged inode; returns why not, or '' when repaired."""
    first = group[0]
    if snap.is_subvolume_snapshot(os.path.join(root, client), first.snapshot):
        return "btrfs snapshots are read-only subvolumes: restore by hand (see README)"
    source_fd, why = None, ""
    for finding in group:
        source_fd, why = _good_copy(other_root, finding)
        if source_fd is not None:
            break
    if source_fd is None:
        return why
    try:
        names = _names_of_inode(root, client, group)
        if not names:
            return "the damaged file changed meanwhile"
        opened = _open_in_snapshot(root, client, names[0][0], names[0][1])
        if opened is None:
            return "the damaged file vanished meanwhile"
        dir_fd, base, _st = opened
        try:
            tmp = _write_good(source_fd, dir_fd, base, first.expected)
            try:
                _replace_names(root, client, names, first.dev, first.ino, dir_fd, tmp)
            finally:
                os.unlink(tmp, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        os.close(source_fd)
    return ""


# --- state ----------------------------------------------------------------------


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

    Open damage stays until a later run finds that file intact (repaired, or
    restored by hand) or its snapshot is gone.
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
        client, name = key.split("/", 1)
        for item in [k for k in open_damage if k[:2] == (client, name)]:
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
