# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Snapshot layout logic for linkdest.backup: the one home of naming, listing,
starting, finalizing and classifying backups (see DESIGN.md).

Pure standard library on purpose: the modules import it through AnsiballZ and
the server command ``linkdest-server`` imports the very same file on the
server, where Ansible is not installed.

Layout of one client's area::

    AREA/back-2026-11-26T11_40_37/            finished, never modified again
    AREA/current -> back-2026-11-26T11_40_37  swapped atomically
    AREA/incomplete_back-2026-11-26T12_10_02/ only during or after a failed run

Nothing here follows a symlink found inside an area, except ``current``, whose
target is only *read* and matched by name against the area's own snapshots.

Two storage backends share this layout: ``hardlink`` (plain directories, rsync
--link-dest) and ``btrfs`` (each snapshot a subvolume, finished ones read-only
and root's; subvolumes.py). Which one a snapshot uses is read off the disk, so
finalize, delete and the readers need no setting; only starting a run asks.
A laptop's account cannot do the btrfs steps root must do: those functions take
``privileged(operation, name)``, which asks root (server_cli.py) instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ansible_collections.linkdest.backup.plugins.module_utils import subvolumes

SNAPSHOT_PREFIX = "back-"
INCOMPLETE_PREFIX = "incomplete_back-"
CURRENT_LINK = "current"
LOCK_FILE = ".linkdest.lock"
# A snapshot being deleted is first renamed to TRASH_PREFIX + name, out of the
# back-* namespace, so a crash mid-delete never leaves a half snapshot that
# looks finished; the next run finishes the removal.
TRASH_PREFIX = ".deleting-"
NAME_TIME_FORMAT = "%Y-%m-%dT%H_%M_%S"
# \Z, not $: "$" would also accept a trailing newline.
_STAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}_\d{2}_\d{2}\Z")

# How many later seconds start_incomplete() tries when a name is taken.
_NAME_ATTEMPTS = 120


class SnapshotError(Exception):
    """Base class of every error this library raises on purpose."""


class NameCollisionError(SnapshotError):
    """A rename or mkdir would have replaced an existing entry."""


class SnapshotNotFoundError(SnapshotError):
    """The named snapshot does not exist in the area."""


class LayoutError(SnapshotError):
    """The area is not in a shape this library will touch."""


class LockBusyError(SnapshotError):
    """Another run holds the area's lock."""


class IdentityError(LayoutError):
    """A subvolume under a name root knows is not the one root made there."""


class DriveMissingError(SnapshotError):
    """The backup drive is not mounted where it should be."""


def drive_missing(root: str, must_be_mount: bool = True) -> str | None:
    """Why the backup drive is not there, or None: the one check everything
    that touches the drive makes first (the server's verbs, the gate, the
    modules). An unplugged drive leaves an empty directory on the system disk;
    read, it looks like a drive with no snapshots, and written, it fills the
    system disk."""
    if must_be_mount and not os.path.ismount(root):
        return "backup drive %s is not mounted" % root
    return None


def client_area(root: str, client: str, must_be_mount: bool = True) -> str:
    """The path of one client's area: a plain name directly under a drive that
    is there, a real directory (not a symlink). Raises DriveMissingError or
    LayoutError, before anything reads or writes."""
    if client in ("", ".", "..") or "/" in client or "\0" in client:
        raise LayoutError("client must be a plain directory name, got %r" % client)
    missing = drive_missing(root, must_be_mount)
    if missing is not None:
        raise DriveMissingError(missing)
    area = os.path.join(root, client)
    if os.path.islink(area) or not os.path.isdir(area):
        raise LayoutError("backup area %s does not exist or is not a directory" % area)
    return area


@dataclass(frozen=True)
class Snapshot:
    """One snapshot directory of an area, finished or incomplete."""

    name: str
    time: datetime
    complete: bool

    @property
    def stamp(self) -> str:
        return stamp_of(self.name)


# --- naming -----------------------------------------------------------------


def format_stamp(when: datetime) -> str:
    """Return the article's time stamp for ``when``, converted to UTC."""
    if when.tzinfo is None:
        raise ValueError("snapshot times must be timezone-aware")
    return when.astimezone(timezone.utc).strftime(NAME_TIME_FORMAT)


def snapshot_name(when: datetime, complete: bool = True) -> str:
    prefix = SNAPSHOT_PREFIX if complete else INCOMPLETE_PREFIX
    return prefix + format_stamp(when)


def stamp_of(name: str) -> str:
    """Accept ``back-T``, ``incomplete_back-T`` or a bare ``T`` and return ``T``."""
    for prefix in (INCOMPLETE_PREFIX, SNAPSHOT_PREFIX):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    if not _STAMP_RE.match(name):
        raise SnapshotNotFoundError(
            "%r is not a snapshot name (expected back-YYYY-MM-DDTHH_MM_SS)" % name
        )
    return name


def parse_snapshot_name(name: str) -> Snapshot | None:
    """Parse a directory name; return None for anything that is not a snapshot.

    Times are read as UTC. Trees made by the article's script used local time;
    their names are adopted as they are, which keeps their order.
    """
    if name.startswith(INCOMPLETE_PREFIX):
        complete, stamp = False, name[len(INCOMPLETE_PREFIX) :]
    elif name.startswith(SNAPSHOT_PREFIX):
        complete, stamp = True, name[len(SNAPSHOT_PREFIX) :]
    else:
        return None
    if not _STAMP_RE.match(stamp):
        return None
    try:
        when = datetime.strptime(stamp, NAME_TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return Snapshot(name=name, time=when, complete=complete)


# --- listing ----------------------------------------------------------------


def _scan(area: str) -> list[Snapshot]:
    found = []
    try:
        entries = list(os.scandir(area))
    except FileNotFoundError:
        raise LayoutError("backup area %s does not exist" % area) from None
    for entry in entries:
        snap = parse_snapshot_name(entry.name)
        # A symlink named like a snapshot is never a snapshot: it is not followed.
        if snap is not None and entry.is_dir(follow_symlinks=False):
            found.append(snap)
    return sorted(found, key=lambda s: (s.time, s.name))


def list_snapshots(area: str) -> list[Snapshot]:
    """Finished snapshots of ``area``, oldest first."""
    return [s for s in _scan(area) if s.complete]


def list_incomplete(area: str) -> list[Snapshot]:
    """Incomplete snapshots of ``area``, oldest first."""
    return [s for s in _scan(area) if not s.complete]


def read_current(area: str) -> str | None:
    """Name of the finished snapshot ``current`` points to, if it is valid.

    Accepts our relative targets and the article's absolute ones
    (``ln -s $TARGET/back-T $TARGET/current``) as long as they name a finished
    snapshot directly inside this area.
    """
    link = os.path.join(area, CURRENT_LINK)
    try:
        target = os.readlink(link)
    except (FileNotFoundError, OSError):
        return None
    head, name = os.path.split(os.path.normpath(target))
    # A relative head is relative to the link's directory (the area), never to
    # the process's working directory; an absolute head replaces ``area``.
    if head and os.path.realpath(os.path.join(area, head)) != os.path.realpath(area):
        return None
    snap = parse_snapshot_name(name)
    if snap is None or not snap.complete:
        return None
    if not os.path.isdir(os.path.join(area, name)) or os.path.islink(os.path.join(area, name)):
        return None
    return name


def current_snapshot(area: str) -> Snapshot | None:
    """The snapshot new backups link against: ``current``, else the newest."""
    name = read_current(area)
    if name is not None:
        return parse_snapshot_name(name)
    finished = list_snapshots(area)
    return finished[-1] if finished else None


# --- file system primitives ---------------------------------------------------

_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


@functools.lru_cache(maxsize=1)
def _libc():
    # The C library is already loaded into the process: its symbols need no
    # search (ctypes.util.find_library would run ldconfig, a helper process,
    # on every finalize).
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``; fail instead of replacing anything at ``dst``.

    Plain rename(2) silently replaces an empty directory, so two runs in the
    same second could swallow each other. renameat2(RENAME_NOREPLACE) makes
    the check and the rename one atomic step.
    """
    libc = _libc()
    func = getattr(libc, "renameat2", None) if libc is not None else None
    if func is not None:
        res = func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if res == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise NameCollisionError("refusing to replace existing %s" % dst)
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), src)
    # File systems without RENAME_NOREPLACE: check, then rename. The area lock
    # makes the window harmless for our own runs.
    if os.path.lexists(dst):
        raise NameCollisionError("refusing to replace existing %s" % dst)
    os.rename(src, dst)


def _syncfs_fd(fd: int) -> None:
    libc = _libc()
    func = getattr(libc, "syncfs", None) if libc is not None else None
    if func is None or func(fd) != 0:
        os.sync()


def sync_filesystem(path: str) -> None:
    """Flush the file system holding ``path`` to disk (syncfs, else sync)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _syncfs_fd(fd)
    finally:
        os.close(fd)


def swap_current(area: str, name: str) -> None:
    """Point ``current`` at ``name`` atomically: new link, then rename over."""
    link = os.path.join(area, CURRENT_LINK)
    if os.path.lexists(link) and not os.path.islink(link):
        raise LayoutError("%s exists and is not a symlink; not touching it" % link)
    tmp = os.path.join(area, ".%s.%d.tmp" % (CURRENT_LINK, os.getpid()))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(name, tmp)
    os.replace(tmp, link)


@contextlib.contextmanager
def area_lock(area: str, wait: float = 0.0):
    """Hold the area's kernel lock (flock): a killed holder releases it.

    ``wait`` is how many seconds to wait for a busy lock; 0 fails at once.
    """
    path = os.path.join(area, LOCK_FILE)
    # Read-only is enough for flock, so the laptop's account can lock a btrfs
    # area, whose directory and lock file are root's.
    # O_NONBLOCK: a FIFO planted under the lock's name must not hang root.
    flags = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LayoutError("%s is not a plain file; not locking through it" % path)
        # Root (the daily prune, the mirror, a module) must not leave a lock
        # file the laptop's account cannot open: it could never lock its area again.
        # (Explicit modes: root's umask may be 077 on a hardened system.)
        owner = os.lstat(area)
        if os.geteuid() == 0:
            st = os.fstat(fd)
            if st.st_uid != owner.st_uid:
                os.fchown(fd, owner.st_uid, owner.st_gid)
            if stat.S_IMODE(st.st_mode) != 0o644:
                os.fchmod(fd, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockBusyError(
                        "another backup, finalize or prune of %s is running" % area
                    ) from None
                time.sleep(0.2)
        yield fd
    finally:
        os.close(fd)


# --- the area's own small files ------------------------------------------------
#
# A btrfs area's directory is root's (the account may create, rename or remove
# no name in it, so it cannot touch a finished snapshot's name): the markers
# and journal the account writes are files root made for it, written in place.


def ensure_account_files(area: str, names: tuple[str, ...], uid: int, gid: int) -> list[str]:
    """Make each of ``names`` a regular file of ``uid`` in the area (as root);
    return those changed. Never follows a symlink: a non-file is refused."""
    changed = []
    area_fd = _open_area(area)
    try:
        for name in names:
            flags = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(name, flags, 0o600, dir_fd=area_fd)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise LayoutError("%s in %s is not a plain file" % (name, area))
                if (st.st_uid, st.st_gid) != (uid, gid):
                    os.fchown(fd, uid, gid)
                    changed.append(name)
            finally:
                os.close(fd)
    finally:
        os.close(area_fd)
    return changed


def ensure_lock_file(area: str) -> bool:
    """Make the area's lock file when it is missing (as root, for a btrfs area
    whose directory is root's: the account opens it, it cannot create it).
    True when it was made."""
    flags = os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(os.path.join(area, LOCK_FILE), flags, 0o644)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o644)  # whatever root's umask
    finally:
        os.close(fd)
    return True


def write_area_file(area: str, name: str, text: str, append: bool = False) -> None:
    """Write (or append to) one of the area's small files, in place and synced.

    In place, not by rename: a btrfs area lets the account write only the
    files root made for it. Readers treat a torn or empty file as absent.
    """
    mode = os.O_APPEND if append else os.O_TRUNC
    fd = os.open(
        os.path.join(area, name),
        os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | mode,
        0o600,
    )
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_area_file(area: str, name: str) -> str:
    """One of the area's small files, "" when it is missing or empty."""
    try:
        fd = os.open(os.path.join(area, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    with open(fd, encoding="utf-8", errors="replace") as handle:
        return handle.read()


# The last check that found nothing new since current (VERB_UNCHANGED): a
# laptop that is unchanged makes no snapshot, and this is its sign of life.
CHECKED_FILE = ".linkdest-checked"


def record_check(area: str, snapshot: str, when: datetime) -> None:
    """Note that the laptop was checked at ``when`` and unchanged since ``snapshot``."""
    text = json.dumps({"snapshot": snapshot, "time": when.isoformat(timespec="seconds")})
    write_area_file(area, CHECKED_FILE, text + "\n")


# A check recorded later than now by more than this is not believed.
CHECK_CLOCK_SLACK = timedelta(minutes=5)


def last_check(area: str, now: datetime | None = None) -> tuple[str, datetime] | None:
    """(snapshot, time) of the last unchanged check, when it vouches for the
    area's newest finished snapshot; None when there is none, or it names
    another snapshot (a newer backup, a pruned or renamed one): a check only
    ever extends what the newest snapshot holds, never an older one.

    Root reads this file (the daily check, list, snapshot_info), and the
    laptop's account writes what is in it: a non-file is not opened in a way
    that could block, at most 4 KiB are read, and a time in the future is not
    believed (a check cannot keep the watchdog quiet past the real time).
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(os.path.join(area, CHECKED_FILE), flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 4096).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)
    try:
        fields = json.loads(text)
        snapshot = fields["snapshot"]
        when = datetime.fromisoformat(fields["time"])
    except (ValueError, KeyError, TypeError):
        return None
    if when.tzinfo is None or when > (now or datetime.now(timezone.utc)) + CHECK_CLOCK_SLACK:
        return None
    finished = list_snapshots(area)
    if not finished or finished[-1].name != snapshot:
        return None
    return snapshot, max(when, finished[-1].time)


def clear_area_file(area: str, name: str) -> None:
    """Empty one of the area's small files (what removing it used to say)."""
    try:
        fd = os.open(
            os.path.join(area, name), os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        )
    except FileNotFoundError:
        return
    os.close(fd)


# --- starting a snapshot ----------------------------------------------------


# Asks root to do one btrfs step on this process's own area: (operation, name).
Privileged = Callable[[str, str], None]


def _as_root_or_ask(privileged: Privileged | None, operation: str, name: str, act) -> None:
    if privileged is None or os.geteuid() == 0:
        act()
    else:
        privileged(operation, name)


def start_incomplete(
    area: str, now: datetime, backend: str = "hardlink", privileged: Privileged | None = None
) -> Snapshot:
    """Create ``incomplete_back-T`` named by ``now``, for a run to write into.

    ``hardlink``: an empty directory. ``btrfs``: see :func:`start_subvolume`.
    If the second is taken (by a finished or an incomplete snapshot), the
    next free second is used, so two runs never share a directory.
    """
    if not os.path.isdir(area) or os.path.islink(area):
        raise LayoutError("backup area %s is not a directory" % area)
    if backend not in subvolumes.BACKENDS:
        raise LayoutError("unknown storage backend %r" % backend)
    for offset in range(_NAME_ATTEMPTS):
        stamp = format_stamp(now + timedelta(seconds=offset))
        if os.path.lexists(os.path.join(area, SNAPSHOT_PREFIX + stamp)):
            continue
        name = INCOMPLETE_PREFIX + stamp
        try:
            if backend == "btrfs":
                _as_root_or_ask(
                    privileged, "start", name, functools.partial(start_subvolume, area, name)
                )
            else:
                os.mkdir(os.path.join(area, name), 0o700)
        except FileExistsError:
            continue
        return Snapshot(name=name, time=parse_snapshot_name(name).time, complete=False)
    raise NameCollisionError("no free snapshot name near %s in %s" % (now, area))


def _open_area(area: str) -> int:
    if os.path.islink(area):
        raise LayoutError("backup area %s is a symlink" % area)
    return subvolumes.open_dir(area)


def _open_subvolume(area_fd: int, name: str) -> int | None:
    """The subvolume ``name`` of the area, opened; None when it is anything else."""
    try:
        fd = subvolumes.open_dir(name, dir_fd=area_fd)
    except (FileNotFoundError, NotADirectoryError, OSError):
        return None
    try:
        subvolumes.flags_of(fd)
    except (subvolumes.SubvolumeError, OSError):
        os.close(fd)
        return None
    return fd


def start_subvolume(area: str, name: str, owner: tuple[int, int] | None = None) -> str:
    """Create the incomplete subvolume ``name`` for a btrfs run (as root).

    It resumes the newest interrupted run (renamed, with what it received), or
    is a writable snapshot of ``current`` (rsync then rewrites only changed
    blocks), or, the first time, empty. It belongs to ``owner`` (uid, gid), the
    laptop's account (default: the area's owner). Returns what it started
    from. Works on the area's file descriptor and single names: the account
    cannot redirect root elsewhere.
    """
    area_fd = _open_area(area)
    try:
        if owner is None:
            st = os.fstat(area_fd)
            owner = (st.st_uid, st.st_gid)
        try:
            os.lstat(name, dir_fd=area_fd)
            raise FileExistsError(errno.EEXIST, "exists", name)
        except FileNotFoundError:
            pass
        started = None
        for interrupted in reversed(list_incomplete(area)):
            fd = _open_subvolume(area_fd, interrupted.name)
            if fd is None:
                continue
            writable = not subvolumes.is_readonly_fd(fd)
            os.close(fd)
            if writable:
                rename_noreplace(os.path.join(area, interrupted.name), os.path.join(area, name))
                started = "resumed " + interrupted.name
                break
        if started is None:
            base = current_snapshot(area)
            source = _open_subvolume(area_fd, base.name) if base is not None else None
            if source is not None:
                try:
                    subvolumes.snapshot_at(source, area_fd, name)
                finally:
                    os.close(source)
                started = "snapshot of " + base.name
            else:
                subvolumes.create_at(area_fd, name)
                started = "empty"
        fd = subvolumes.open_dir(name, dir_fd=area_fd)
        try:
            os.fchown(fd, owner[0], owner[1])
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
        return started
    finally:
        os.close(area_fd)


def subvolume_id_of(area: str, name: str) -> int | None:
    """The id of the subvolume ``name`` of the area, None when it is none."""
    return _read_subvolume(area, name, subvolumes.subvolume_id, None)


def _check_identity(fd: int, name: str, expected_id: int | None) -> None:
    if expected_id is None:
        return
    found = subvolumes.subvolume_id(fd)
    if found != expected_id:
        raise IdentityError(
            "%s is subvolume %d, not the run %d root started under that name"
            % (name, found, expected_id)
        )


def point_current_at_newest(area: str) -> str | None:
    """Swap ``current`` to the newest snapshot root sealed when it names
    another (root, after a seal: in a btrfs area only root may write names).
    Only sealed ones count: a directory named like a snapshot that the account
    made before its area was root's must not become ``current``."""
    sealed = [s for s in list_snapshots(area) if is_sealed_snapshot(area, s.name)]
    if not sealed:
        return None
    newest = sealed[-1].name
    if read_current(area) != newest:
        swap_current(area, newest)
    return newest


def seal_subvolume(
    area: str, name: str, expected_id: int | None = None, update_current: bool = True
) -> str:
    """Finish the incomplete subvolume ``name`` as ``back-T`` (as root); return ``back-T``.

    The finished snapshot is a fresh read-only snapshot of the run's subvolume,
    made by root and owned by root: only a subvolume's owner may clear its
    read-only flag, no file the account still holds open for writing is in it,
    and no subvolume the account nested inside comes along (a snapshot does
    not descend into them). The run's subvolume is then deleted and
    ``current`` names the newest finished snapshot. Never replaces anything
    (a taken name raises NameCollisionError). With ``expected_id``, a
    subvolume under ``name`` that is not that one is refused (IdentityError)
    before anything changes.
    """
    final = SNAPSHOT_PREFIX + stamp_of(name)
    area_fd = _open_area(area)
    try:
        fd = _open_subvolume(area_fd, name)
        if fd is None:
            raise SnapshotNotFoundError("no subvolume %s in %s" % (name, area))
        try:
            _check_identity(fd, name, expected_id)
            # The account may have set the flag itself: root owns it from here.
            if subvolumes.is_readonly_fd(fd):
                subvolumes.set_readonly_fd(fd, False)
            os.fchown(fd, 0, 0)
            os.fchmod(fd, 0o755)
            _syncfs_fd(fd)
            try:
                subvolumes.snapshot_at(fd, area_fd, final, readonly=True)
            except FileExistsError as exc:
                raise NameCollisionError(
                    "refusing to replace existing %s in %s" % (final, area)
                ) from exc
        finally:
            os.close(fd)
        _destroy_with_nested(area_fd, name)
    finally:
        os.close(area_fd)
    if update_current:
        point_current_at_newest(area)
    return final


def _destroy_with_nested(parent_fd: int, name: str) -> None:
    """Delete the subvolume ``name``, first any subvolumes nested inside it (as root)."""
    try:
        subvolumes.destroy_at(parent_fd, name)
        return
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:
            raise
    top = subvolumes.open_dir(name, dir_fd=parent_fd)
    try:
        device = os.fstat(top).st_dev
        for _base, dirs, _files, base_fd in os.fwalk(dir_fd=top, topdown=False):
            for entry in dirs:
                st = os.lstat(entry, dir_fd=base_fd)
                if st.st_dev != device and st.st_ino == subvolumes.SUBVOLUME_ROOT_INODE:
                    _destroy_with_nested(base_fd, entry)
    finally:
        os.close(top)
    subvolumes.destroy_at(parent_fd, name)


def discard_subvolume(
    area: str, name: str, expected_id: int | None = None, owner_uid: int | None = None
) -> None:
    """Delete an interrupted run's subvolume ``name`` (as root, for the account).

    Only an incomplete run's subvolume qualifies: writable and owned by the
    account (``owner_uid``, default the area's owner), as start_subvolume made
    it, and with ``expected_id`` the very subvolume root started. A finished snapshot renamed to
    an incomplete name is root's and read-only, and is refused.
    """
    parsed = parse_snapshot_name(name)
    if parsed is None or parsed.complete:
        raise LayoutError("only incomplete snapshots are discarded, not %r" % name)
    area_fd = _open_area(area)
    try:
        fd = _open_subvolume(area_fd, name)
        if fd is None:
            raise SnapshotNotFoundError("no subvolume %s in %s" % (name, area))
        try:
            _check_identity(fd, name, expected_id)
            st = os.fstat(fd)
            if owner_uid is None:
                owner_uid = os.fstat(area_fd).st_uid
            if subvolumes.is_readonly_fd(fd) or st.st_uid != owner_uid:
                raise LayoutError(
                    "%s is read-only or not the account's: not an interrupted run" % name
                )
        finally:
            os.close(fd)
        _destroy_with_nested(area_fd, name)
    finally:
        os.close(area_fd)


def _read_subvolume(area: str, name: str, read: Callable[[int], object], missing):
    """``read(fd)`` of the subvolume ``name`` of the area, ``missing`` when it is none."""
    area_fd = _open_area(area)
    try:
        fd = _open_subvolume(area_fd, name)
        if fd is None:
            return missing
        try:
            return read(fd)
        finally:
            os.close(fd)
    finally:
        os.close(area_fd)


def _subvolume_is(area: str, name: str, check: Callable[[int], bool]) -> bool:
    """False unless ``name`` is a subvolume of the area and ``check(its fd)`` holds."""
    return _read_subvolume(area, name, check, False)


def is_sealed_snapshot(area: str, name: str) -> bool:
    """True for a finished btrfs snapshot as root made it: a read-only subvolume of root's."""
    return _subvolume_is(
        area, name, lambda fd: os.fstat(fd).st_uid == 0 and subvolumes.is_readonly_fd(fd)
    )


# --- finalize ---------------------------------------------------------------


@dataclass(frozen=True)
class FinalizePlan:
    """What finalizing one snapshot does; ``changed`` is False when it is done."""

    incomplete: str | None  # directory to rename, None when already finished
    final: str
    current_before: str | None
    current_after: str | None

    @property
    def changed(self) -> bool:
        return self.incomplete is not None or self.current_before != self.current_after


def plan_finalize(area: str, snapshot: str, update_current: bool = True) -> FinalizePlan:
    """Work out how to finalize ``snapshot`` (any of its three name forms).

    ``current`` moves only forward: finalizing an older snapshot than the
    one ``current`` names leaves ``current`` alone.
    """
    stamp = stamp_of(snapshot)
    incomplete = INCOMPLETE_PREFIX + stamp
    final = SNAPSHOT_PREFIX + stamp
    inc_path = os.path.join(area, incomplete)
    fin_path = os.path.join(area, final)
    if os.path.islink(inc_path) or os.path.islink(fin_path):
        raise LayoutError("%s is a symlink in %s; refusing to touch it" % (stamp, area))
    has_incomplete = os.path.isdir(inc_path)
    if has_incomplete and os.path.lexists(fin_path):
        raise NameCollisionError(
            "both %s and %s exist in %s; refusing to replace a finished snapshot"
            % (incomplete, final, area)
        )
    if not has_incomplete and not os.path.isdir(fin_path):
        raise SnapshotNotFoundError("no snapshot %s in %s" % (stamp, area))

    current_before = read_current(area)
    current_after = current_before
    if update_current:
        newest = max([s.name for s in list_snapshots(area)] + [final], key=stamp_of)
        current_after = newest
    # An article-made absolute `current` naming the same snapshot counts as
    # up to date: read_current() matched it by name, so it is adopted as is.
    link = os.path.join(area, CURRENT_LINK)
    if current_after != current_before and os.path.lexists(link) and not os.path.islink(link):
        # Refuse here, before anything is renamed, not halfway through apply.
        raise LayoutError("%s exists and is not a symlink; not touching it" % link)
    return FinalizePlan(
        incomplete=incomplete if has_incomplete else None,
        final=final,
        current_before=current_before,
        current_after=current_after,
    )


def is_subvolume_snapshot(area: str, name: str) -> bool:
    """True when the snapshot ``name`` of the area is a btrfs subvolume."""
    return _subvolume_is(area, name, lambda _fd: True)


def apply_finalize(area: str, plan: FinalizePlan, privileged: Privileged | None = None) -> None:
    """Carry out ``plan``: flush and rename without replacing (btrfs: root seals
    it under its final name instead), then swap ``current``."""
    if plan.incomplete is not None:
        if is_subvolume_snapshot(area, plan.incomplete):
            _as_root_or_ask(
                privileged,
                "seal",
                plan.incomplete,
                functools.partial(
                    seal_subvolume,
                    area,
                    plan.incomplete,
                    update_current=plan.current_after != plan.current_before,
                ),
            )
        else:
            sync_filesystem(os.path.join(area, plan.incomplete))
            rename_noreplace(os.path.join(area, plan.incomplete), os.path.join(area, plan.final))
    # After a seal, root has already moved current (a btrfs area's names are root's).
    if plan.current_after is not None and read_current(area) != plan.current_after:
        swap_current(area, plan.current_after)


def finalize(
    area: str, snapshot: str, update_current: bool = True, privileged: Privileged | None = None
) -> FinalizePlan:
    plan = plan_finalize(area, snapshot, update_current)
    apply_finalize(area, plan, privileged)
    return plan


# --- deleting ---------------------------------------------------------------


def _remove_tree(path: str) -> None:
    """Remove a directory tree without following any symlink inside it.

    rm -rf unlinks symlinks and never follows them; --one-file-system keeps it
    on the backup drive. It is the fastest way (pruning should cost no more
    than deleting the directory by hand). If it cannot (a directory the laptop
    made read-only, for the laptop's own account), shutil.rmtree finishes on
    directory file descriptors, opening such directories up first.
    """
    rm = shutil.which("rm")
    if rm is not None:
        subprocess.run(
            [rm, "-rf", "--one-file-system", "--", path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        if not os.path.lexists(path):
            return

    def _open_up_and_retry(func, failed_path, _exc_info):
        parent = os.path.dirname(failed_path)
        st = os.lstat(parent)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(parent, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
        func(failed_path)

    shutil.rmtree(path, onerror=_open_up_and_retry)


def delete_snapshot(area: str, name: str, privileged: Privileged | None = None) -> str:
    """Delete one snapshot (finished or incomplete) crash-safely.

    Renamed to ``.deleting-NAME`` first (never replacing anything), then
    removed. A subvolume is deleted in one step instead (btrfs finishes an
    interrupted deletion itself). Returns the snapshot's name. Callers decide
    what may go; this refuses only what is not a real snapshot directory of the
    area. A laptop's account asks root to discard its incomplete subvolumes
    (``privileged``); finished ones only root deletes.
    """
    snap = parse_snapshot_name(name)
    path = os.path.join(area, name)
    if snap is None or os.path.islink(path) or not os.path.isdir(path):
        raise SnapshotNotFoundError("no snapshot %s in %s" % (name, area))
    if is_subvolume_snapshot(area, name):
        if privileged is not None and os.geteuid() != 0:
            privileged("discard", name)
            return name
        area_fd = _open_area(area)
        try:
            _destroy_with_nested(area_fd, name)
        finally:
            os.close(area_fd)
        return name
    trash = TRASH_PREFIX + name
    rename_noreplace(path, os.path.join(area, trash))
    _remove_tree(os.path.join(area, trash))
    return name


def finish_deletions(area: str) -> list[str]:
    """Finish deletions a crash interrupted; return the names they had.

    A subvolume under a trash name is never deleted: deleting a subvolume
    takes one step and needs no trash name, so one there was renamed by the
    laptop's account (which may rename in its own area), maybe a finished
    snapshot. It stays for the administrator.
    """
    finished = []
    if not os.access(area, os.W_OK):
        # A btrfs area's names are root's: its own prune finishes these.
        return finished
    for entry in sorted(os.scandir(area), key=lambda e: e.name):
        if entry.name.startswith(TRASH_PREFIX) and entry.is_dir(follow_symlinks=False):
            if is_subvolume_snapshot(area, entry.name):
                continue
            _remove_tree(entry.path)
            finished.append(entry.name[len(TRASH_PREFIX) :])
    return finished


# --- reading finished snapshots (restore) ------------------------------------

MAX_RELPATH = 4096


def split_relpath(relpath: str) -> list[str]:
    """Split a path inside a snapshot into its parts, refusing any escape.

    No absolute paths, no ``.`` or ``..`` parts, no empty parts (except a
    trailing slash), no NUL: the path can only name something inside.
    """
    if not relpath or len(relpath) > MAX_RELPATH or "\0" in relpath or relpath.startswith("/"):
        raise LayoutError("unsafe path %r" % relpath[:200])
    parts = relpath.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise LayoutError("unsafe path %r" % relpath[:200])
    return parts


def resolve_in_snapshot(area: str, snapshot: str, relpath: str) -> str:
    """The path of ``relpath`` inside the finished ``snapshot`` of ``area``.

    Every part is looked at with lstat: a symlink before the last part is
    refused (it could lead out of the snapshot), the last part may be a
    symlink (rsync sends it as a link, never following it).
    """
    snap = parse_snapshot_name(snapshot)
    top = os.path.join(area, snapshot)
    if snap is None or not snap.complete or os.path.islink(top) or not os.path.isdir(top):
        raise SnapshotNotFoundError("no finished snapshot %s" % snapshot)
    path = top
    parts = split_relpath(relpath) if relpath not in ("", ".", "./") else []
    for index, part in enumerate(parts):
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise SnapshotNotFoundError("%s is not in %s" % (relpath, snapshot)) from None
        if stat.S_ISLNK(st.st_mode) and index < len(parts) - 1:
            raise LayoutError("%s passes through a symlink in %s" % (relpath, snapshot))
    return path


def find_versions(area: str, relpath: str) -> list[tuple[Snapshot, os.stat_result]]:
    """Every finished snapshot holding ``relpath``, oldest first, with its lstat."""
    found = []
    for snap in list_snapshots(area):
        try:
            path = resolve_in_snapshot(area, snap.name, relpath)
        except SnapshotNotFoundError:
            continue
        found.append((snap, os.lstat(path)))
    return found


def changed_versions(
    versions: list[tuple[Snapshot, os.stat_result]],
) -> list[tuple[Snapshot, os.stat_result]]:
    """Keep the snapshots where the file differs from the one before.

    Unchanged files are hard links, so the same inode means the same version.
    """
    kept = []
    for snap, st in versions:
        if not kept or (kept[-1][1].st_ino, kept[-1][1].st_dev) != (st.st_ino, st.st_dev):
            kept.append((snap, st))
    return kept


def locate(area: str, relpath: str, at: datetime | None = None) -> Snapshot:
    """The newest finished snapshot (taken at or before ``at``) holding ``relpath``.

    "." (or "") is the folder itself, which every finished snapshot holds.
    """
    if relpath not in ("", ".", "./"):
        split_relpath(relpath)
    candidates = [
        found for found, _stat in find_versions(area, relpath) if at is None or found.time <= at
    ]
    if not candidates:
        when = "" if at is None else " at or before %s" % at.isoformat()
        raise SnapshotNotFoundError("%s is in no snapshot%s" % (relpath, when))
    return candidates[-1]


# --- rsync exit codes ---------------------------------------------------------

# The one table of what an rsync exit code means for a snapshot.
# outcome: success | warning | partial | failed. "finalize" says whether the
# snapshot may become a finished one.
RSYNC_EXIT_CODES = {
    0: ("success", "transfer complete"),
    1: ("failed", "rsync syntax or usage error"),
    2: ("failed", "rsync protocol incompatibility"),
    3: ("failed", "errors selecting input/output files or directories"),
    5: ("failed", "error starting the client-server protocol"),
    10: ("failed", "error in socket I/O"),
    11: ("failed", "error in file I/O (is the backup drive full?)"),
    12: ("failed", "error in the rsync protocol data stream"),
    20: ("failed", "interrupted by a signal"),
    23: ("partial", "some files could not be transferred (unreadable?)"),
    24: ("warning", "some source files vanished during the transfer"),
    30: ("failed", "timeout in data send/receive"),
    35: ("failed", "timeout waiting for the daemon connection"),
    255: ("failed", "ssh failed (server unreachable, key refused or host key mismatch)"),
}

PARTIAL_POLICIES = ("finalize", "keep-incomplete")


@dataclass(frozen=True)
class RsyncResult:
    code: int
    outcome: str
    finalize: bool
    message: str


def classify_rsync_exit(code: int, partial_policy: str = "finalize") -> RsyncResult:
    """Classify an rsync exit code by the table above.

    23 (some files unreadable) is never a plain success: it finalizes a
    snapshot flagged as partial, or keeps it incomplete, by ``partial_policy``.
    """
    if partial_policy not in PARTIAL_POLICIES:
        raise ValueError("partial_policy must be one of %s" % ", ".join(PARTIAL_POLICIES))
    outcome, message = RSYNC_EXIT_CODES.get(code, ("failed", "rsync failed"))
    if outcome == "partial":
        ok = partial_policy == "finalize"
    else:
        ok = outcome in ("success", "warning")
    return RsyncResult(code=code, outcome=outcome, finalize=ok, message=message)
