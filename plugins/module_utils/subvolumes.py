# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""btrfs subvolumes for the ``btrfs`` storage backend (DESIGN.md, Storage backends).

With this backend each snapshot is a subvolume: a run starts as a writable
snapshot of ``current`` (an empty subvolume the first time), rsync rewrites
only the changed blocks in place, and finalize makes it read-only. A finished
snapshot belongs to root and is read-only at the file-system level: the
laptop's account can neither write to it, nor turn the flag off, nor delete
it (only the owner of a subvolume may change its flags).

Everything here runs the ``btrfs`` command of btrfs-progs; the few operations
a laptop's account may not do itself (:data:`HELPER_OPERATIONS`) go through
``linkdest-server subvolume`` under a narrow sudo rule (server_cli.py).
Standard library only: the server imports this file without Ansible.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
import struct
import subprocess
import time
from collections.abc import Iterable

BACKENDS = ("hardlink", "btrfs")
# The root directory of every btrfs subvolume has this inode number.
SUBVOLUME_ROOT_INODE = 256
# What the helper does for a laptop's account, and nothing else.
HELPER_OPERATIONS = ("start", "seal", "discard")


class SubvolumeError(Exception):
    """A btrfs operation failed or the file system is not btrfs."""


def btrfs_command() -> str:
    for candidate in (shutil.which("btrfs"), "/usr/bin/btrfs", "/sbin/btrfs", "/bin/btrfs"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SubvolumeError("the btrfs command is missing (install btrfs-progs)")


def _run(*args: str) -> str:
    result = subprocess.run(
        [btrfs_command(), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SubvolumeError(
            "btrfs %s failed: %s" % (" ".join(args), result.stderr.strip() or result.returncode)
        )
    return result.stdout


MOUNTINFO = "/proc/self/mountinfo"


def filesystem_type(path: str) -> str:
    """The kernel's name for the file system holding ``path`` (``btrfs``, ``ext4``...).

    Read from the mount table (the mount point that is the longest prefix of
    the path's real location): a btrfs subvolume has a device number of its
    own, so the device cannot be matched, and a ``stat --file-system``
    process per question costs more than the question is worth.
    """
    real = os.path.realpath(path)
    try:
        os.stat(real)
        with open(MOUNTINFO, "rb") as handle:
            table = handle.read().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise SubvolumeError("cannot read the file system of %s: %s" % (path, exc)) from exc
    best, kind = "", ""
    for line in table.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:]:
            continue
        point = _unescape_mount_point(fields[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            # Later lines stack over earlier ones at the same mount point.
            best, kind = point, fields[fields.index("-", 6) + 1]
    if not kind:
        raise SubvolumeError("cannot read the file system of %s: no mount holds it" % path)
    return kind


def _unescape_mount_point(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in octal (\\040)."""
    if "\\" not in field:
        return field
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def is_btrfs(path: str) -> bool:
    return filesystem_type(path) == "btrfs"


def is_subvolume(path: str, st: os.stat_result | None = None) -> bool:
    """True for the root directory of a btrfs subvolume (never follows a symlink)."""
    st = st if st is not None else os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_ino != SUBVOLUME_ROOT_INODE:
        return False
    # Inode 256 can be any directory elsewhere: ask only when it matters.
    return is_btrfs(path)


# --- ioctls --------------------------------------------------------------------
# The kernel's own interface (linux/btrfs.h), on directory file descriptors and
# single names, so that root acting in a laptop's area never resolves a path
# the laptop's account could swap for a symlink between a check and the act.

_VOL_ARGS_SIZE = 4096  # struct btrfs_ioctl_vol_args and ..._v2 are both 4096 bytes
_NAME_MAX = 4039  # BTRFS_SUBVOL_NAME_MAX (a 4040-byte field in _v2)
_SUBVOL_RDONLY = 1 << 1


def _iow(nr: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (0x94 << 8) | nr


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (0x94 << 8) | nr


_IOC_SNAP_DESTROY = _iow(15, _VOL_ARGS_SIZE)
_IOC_SNAP_CREATE_V2 = _iow(23, _VOL_ARGS_SIZE)
_IOC_SUBVOL_CREATE_V2 = _iow(24, _VOL_ARGS_SIZE)
_IOC_SUBVOL_GETFLAGS = _ior(25, 8)
_IOC_SUBVOL_SETFLAGS = _iow(26, 8)


def _checked_name(name: str) -> bytes:
    raw = os.fsencode(name)
    if not raw or b"/" in raw or raw in (b".", b"..") or len(raw) > _NAME_MAX:
        raise SubvolumeError("not a plain subvolume name: %r" % name)
    return raw


def _vol_args_v2(name: str, source_fd: int = 0, flags: int = 0) -> bytearray:
    # fd (s64), transid (u64), flags (u64), a 32-byte union, then the name.
    buf = bytearray(_VOL_ARGS_SIZE)
    struct.pack_into("=qQQ", buf, 0, source_fd, 0, flags)
    raw = _checked_name(name)
    buf[56 : 56 + len(raw)] = raw
    return buf


def _ioctl(fd: int, request: int, arg, what: str):
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as exc:
        if exc.errno == errno.ENOTTY:
            raise SubvolumeError("%s: not on btrfs" % what) from exc
        raise


def open_dir(path: str, dir_fd: int | None = None) -> int:
    """Open a directory without following a symlink in its last component."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


def create_at(parent_fd: int, name: str) -> None:
    """Create an empty subvolume ``name`` in the directory ``parent_fd``; never replaces."""
    _ioctl(parent_fd, _IOC_SUBVOL_CREATE_V2, _vol_args_v2(name), "creating %s" % name)


def snapshot_at(source_fd: int, parent_fd: int, name: str, readonly: bool = False) -> None:
    """Snapshot the subvolume open as ``source_fd`` as ``name`` in ``parent_fd``."""
    args = _vol_args_v2(name, source_fd, _SUBVOL_RDONLY if readonly else 0)
    _ioctl(parent_fd, _IOC_SNAP_CREATE_V2, args, "snapshotting into %s" % name)


def flags_of(fd: int) -> int:
    """The subvolume flags of the subvolume root open as ``fd`` (SubvolumeError if none)."""
    try:
        out = _ioctl(fd, _IOC_SUBVOL_GETFLAGS, bytes(8), "reading flags")
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise SubvolumeError("not the root directory of a subvolume") from exc
        raise
    return struct.unpack("=Q", out)[0]


# _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args): treeid (u64), objectid
# (u64), a 4080-byte name. Asked for the subvolume root's own objectid with
# treeid 0, the kernel answers with the id of the subvolume the fd is in.
_INO_LOOKUP_SIZE = 4096
_IOC_INO_LOOKUP = (3 << 30) | (_INO_LOOKUP_SIZE << 16) | (0x94 << 8) | 18


def subvolume_id(fd: int) -> int:
    """The id of the subvolume open as ``fd``: while it exists no other
    subvolume of the file system has it, and no rename or move changes it, so
    it names a subvolume in a way the laptop's account cannot forge."""
    buf = bytearray(_INO_LOOKUP_SIZE)
    struct.pack_into("=QQ", buf, 0, 0, SUBVOLUME_ROOT_INODE)
    _ioctl(fd, _IOC_INO_LOOKUP, buf, "reading the subvolume id")
    return struct.unpack_from("=Q", buf, 0)[0]


def is_readonly_fd(fd: int) -> bool:
    return bool(flags_of(fd) & _SUBVOL_RDONLY)


def set_readonly_fd(fd: int, readonly: bool = True) -> None:
    flags = flags_of(fd)
    flags = flags | _SUBVOL_RDONLY if readonly else flags & ~_SUBVOL_RDONLY
    _ioctl(fd, _IOC_SUBVOL_SETFLAGS, struct.pack("=Q", flags), "setting flags")


@contextlib.contextmanager
def unsealed(fd: int):
    """Make the sealed snapshot open as ``fd`` writable for the block, then seal it again.

    Root's repair of a damaged file (scrub.py) is the only user. The flag is
    flipped by ioctl, which keeps a received snapshot's received UUID: the
    repair puts back the bytes it was received with, so incremental sends
    that use it as their parent stay valid (``btrfs property set ro false``
    would clear it). The kernel refuses while a send reads the snapshot.
    """
    if not is_readonly_fd(fd):
        raise SubvolumeError("not a sealed snapshot: left alone")
    set_readonly_fd(fd, False)
    try:
        yield fd
    finally:
        _seal_again(fd)


def _seal_again(fd: int, attempts: int = 3) -> None:
    """Set read-only, retrying a failure (a full drive's transaction, say)."""
    for attempt in range(attempts):
        try:
            set_readonly_fd(fd, True)
            return
        except OSError as exc:
            if attempt == attempts - 1:
                raise SubvolumeError(
                    "could not make the snapshot read-only again: %s" % exc.strerror
                ) from exc
            time.sleep(1)


# _IOW(0x94, 9, int): share the source file's extents with the destination file.
_FICLONE = _iow(9, 4)


def clone_file(source_fd: int, dest_fd: int) -> bool:
    """Make ``dest_fd`` share every extent of ``source_fd`` (a reflink); False
    when the file system cannot, and the caller copies instead."""
    try:
        fcntl.ioctl(dest_fd, _FICLONE, source_fd)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
            return False
        raise
    return True


def destroy_at(parent_fd: int, name: str) -> None:
    """Delete the subvolume ``name`` of the directory ``parent_fd`` (root, or the
    owner of a writable one on a file system mounted with user_subvol_rm_allowed)."""
    buf = bytearray(_VOL_ARGS_SIZE)
    raw = _checked_name(name)
    buf[8 : 8 + len(raw)] = raw
    _ioctl(parent_fd, _IOC_SNAP_DESTROY, buf, "deleting %s" % name)


# --- by path (tests, the administrator's tools) ------------------------------------


def is_readonly(path: str) -> bool:
    fd = open_dir(path)
    try:
        return is_readonly_fd(fd)
    finally:
        os.close(fd)


def delete(path: str) -> None:
    parent = open_dir(os.path.dirname(os.path.abspath(path)))
    try:
        destroy_at(parent, os.path.basename(path))
    finally:
        os.close(parent)


def wait_for_deletions(path: str) -> None:
    """Wait until btrfs has freed the space of the subvolumes deleted on the file
    system holding ``path``: a deletion returns at once and a cleaner thread
    frees the blocks later, so free space measured right after it is stale."""
    _run("subvolume", "sync", path)


def exclusive_bytes(paths: Iterable[str]) -> dict[str, int]:
    """Bytes only each path holds (shared with no other snapshot), by ``btrfs filesystem du``."""
    paths = list(paths)
    if not paths:
        return {}
    out = _run("filesystem", "du", "-s", "--raw", "--", *paths)
    found = {}
    for line in out.splitlines()[1:]:
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[1].isdigit():
            found[parts[3]] = int(parts[1])
    return {path: found.get(path, 0) for path in paths}


def free_bytes(path: str) -> int | None:
    """What btrfs estimates is free, or None when it cannot say.

    statvfs on btrfs counts unallocated space as if it could all hold data;
    ``Free (estimated)`` takes the metadata profile into account, and its
    ``min`` is what is free if new chunks are allocated with the worst profile.
    """
    try:
        out = _run("filesystem", "usage", "-b", path)
    except SubvolumeError:
        return None
    for line in out.splitlines():
        if line.strip().startswith("Free (estimated):"):
            fields = line.split(":", 1)[1].replace("(", " ").replace(")", " ").split()
            numbers = [int(f) for f in fields if f.isdigit()]
            if numbers:
                return min(numbers)
    return None
