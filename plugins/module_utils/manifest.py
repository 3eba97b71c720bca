# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Snapshot manifests: what each finished snapshot held when it was made.

A manifest lists every regular file of one snapshot with a SHA-256 of its
content, its size, mtime, ctime and inode. ``linkdest-server verify`` (scrub.py)
re-reads the drive later and compares: a flipped bit that keeps the size and
the mtime (invisible to rsync's quick check) shows up as a different digest.

Where they live: ``ROOT/.linkdest-manifests/CLIENT/back-T``, a tree only root
can read or write: a laptop account may neither write a manifest nor learn
another laptop's file names from one (the gate hands a laptop its own, read
through root). A stolen key must not be able to "bless"
tampered content by rewriting the manifest, so a manifest is trusted only when
root owns it and its directories and nobody else can write to them, and only
when its last line (a count and a digest of everything before it) matches: a
truncated or edited file is reported, never used.

Cost: a file that is the same inode as in the previous snapshot (a hard link
made by --link-dest, or a btrfs file the run did not write) takes its digest
from the previous manifest; only new content is read. With hard links the
directory listing alone tells (path and inode number): an unchanged snapshot
costs one listing of its tree, no stat, and its lines are the previous ones.

The format is gzip-compressed text, one file per line::

    linkdest-manifest 1 CLIENT SNAPSHOT FSID
    SHA256HEX SIZE MTIME_NS CTIME_NS INODE "PATH"
    ...
    end COUNT SHA256HEX-OF-THE-LINES-ABOVE

FSID is the id of the file system the snapshot was on (older manifests lack
it). PATH is a JSON string (names may hold any byte but NUL and "/"; undecodable
bytes travel as surrogate escapes). CTIME_NS is the ctime when the content was
read; with hard links each later link changes the inode's ctime, not the line.

Standard library only: this file runs on the server.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import hashlib
import json
import operator
import os
import queue
import re
import stat
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

MANIFEST_DIR = ".linkdest-manifests"
TMP_PREFIX = ".tmp-"
# Lines handed to the writer's thread at a time (about 0.7 MB).
_CHUNK_LINES = 4096
MAGIC = "linkdest-manifest 1"
READ_CHUNK = 1 << 20
# O_NOATIME keeps verify from dirtying every inode it reads; only the owner
# or root may use it, so it is dropped on EPERM.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_NOATIME = getattr(os, "O_NOATIME", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class ManifestError(Exception):
    """A manifest that cannot be trusted: missing, unsafe owner, truncated, edited."""


class Entry(NamedTuple):
    """One regular file of a snapshot (a tuple: a manifest holds many)."""

    path: str
    sha256: str
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int


@dataclass
class Manifest:
    """One snapshot's manifest: its entry lines as stored, parsed on demand
    (the next snapshot's manifest reuses most lines as they are)."""

    client: str
    snapshot: str
    lines: list[str]
    # The file system the snapshot was on when its manifest was made
    # (filesystem_id): inode numbers mean something only there.
    fsid: str = ""

    @functools.cached_property
    def entries(self) -> list[Entry]:
        return [entry_of(line) for line in self.lines]

    def by_path(self) -> dict[str, Entry]:
        return {entry.path: entry for entry in self.entries}


def entry_of(line: str) -> Entry:
    digest, size, mtime, ctime, ino, path = line.split(" ", 5)
    # Most names need no unescaping: skip the JSON parser for those.
    path = path[1:-1] if "\\" not in path else json.loads(path)
    return Entry(path, digest, int(size), int(mtime), int(ctime), int(ino))


def _line(digest: str, st, quoted: str) -> str:
    """An entry line (entry_of() reads it back); ``st`` has the lstat fields."""
    return "%s %d %d %d %d %s" % (
        digest,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        quoted,
    )


@dataclass
class BuildStats:
    files: int = 0
    read_files: int = 0
    read_bytes: int = 0
    reused_files: int = 0
    # Of those, how many by path and inode number alone (no stat; build_manifest).
    by_listing: int = 0
    skipped: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = "%d files, %d read (%d bytes), %d from the previous manifest" % (
            self.files,
            self.read_files,
            self.read_bytes,
            self.reused_files,
        )
        if self.skipped:
            # Left out of the manifest, so never verified: say so loudly.
            text += "; UNREADABLE, left out: %s" % ", ".join(self.skipped[:20])
        return text


def manifest_dir(root: str, client: str) -> str:
    return os.path.join(root, MANIFEST_DIR, client)


def manifest_path(root: str, client: str, snapshot: str) -> str:
    return os.path.join(manifest_dir(root, client), snapshot)


def open_dir_at(name: str, dir_fd: int | None = None) -> int:
    """Open a directory without following a symlink at the last step."""
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def open_file_at(name: str, dir_fd: int | None = None) -> int:
    """Open a regular file for reading, never through a symlink, never a FIFO."""
    try:
        fd = os.open(name, _READ_FLAGS | _NOATIME, dir_fd=dir_fd)
    except PermissionError:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", name)
    return fd


_LOCAL = threading.local()  # one read buffer per thread, reused for every file


def digest_fd(fd: int, on_bytes: Callable[[int], None] | None = None) -> str:
    """SHA-256 of everything readable from fd.

    The kernel is asked to read the whole file ahead (WILLNEED), so the disk
    keeps reading while the chunks already read are hashed.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    buffer = getattr(_LOCAL, "buffer", None)
    if buffer is None:
        buffer = _LOCAL.buffer = bytearray(READ_CHUNK)
    digest = hashlib.sha256()
    view = memoryview(buffer)
    while True:
        count = os.readv(fd, [buffer])
        if not count:
            return digest.hexdigest()
        digest.update(view[:count])
        if on_bytes is not None:
            on_bytes(count)


def digest_at(name: str, dir_fd: int | None = None, on_bytes=None) -> str:
    fd = open_file_at(name, dir_fd)
    try:
        return digest_fd(fd, on_bytes)
    finally:
        os.close(fd)


def walk_entries(top: str) -> Iterator[tuple[str, int, str, int]]:
    """Every regular file under ``top``: (relative path, parent dir fd, name, inode).

    Type and inode come with each name in the directory listing: no stat
    call. Works on directory file descriptors and never follows a symlink, so
    a snapshot's content cannot lead the walk (root's, too) outside it. The
    parent fd is valid only until the next item. Depth first, names sorted
    within each directory; a stack, not recursion, so a deep tree costs no
    chain of generators.
    """
    top_fd = open_dir_at(top)
    stack = [(top_fd, "", iter(_listing(top_fd)))]
    try:
        while stack:
            dir_fd, prefix, entries = stack[-1]
            for entry in entries:
                try:
                    is_file = entry.is_file(follow_symlinks=False)
                    is_dir = not is_file and entry.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                if is_file:
                    yield prefix + entry.name, dir_fd, entry.name, entry.inode()
                elif is_dir:
                    try:
                        child = open_dir_at(entry.name, dir_fd)
                    except OSError:
                        continue
                    stack.append((child, prefix + entry.name + "/", iter(_listing(child))))
                    break
            else:
                stack.pop()
                os.close(dir_fd)
    finally:
        for dir_fd, _prefix, _entries_left in stack:
            os.close(dir_fd)


def _listing(dir_fd: int) -> list[os.DirEntry]:
    with os.scandir(dir_fd) as listing:
        return sorted(listing, key=operator.attrgetter("name"))


def filesystem_id(path: str) -> str:
    """The file system's id (statvfs f_fsid, derived from its UUID on ext4,
    xfs and btrfs): the same after a remount, another on a replaced drive."""
    return "%x" % os.statvfs(path).f_fsid


def reuse_key(path: str, st: os.stat_result, same_device: bool) -> tuple:
    """What must match for a file to take the previous manifest's digest.

    --link-dest links a file at the same path, and a btrfs snapshot keeps
    every path and inode, so the path is part of the key: an inode number the
    kernel reused for another file elsewhere can never inherit a digest. On one
    file system the same inode is the same content; the ctime is left out
    because every link() made by --link-dest changes it. Across btrfs
    subvolumes inode numbers repeat and ``rsync --inplace`` keeps them, so the
    ctime (which only the kernel sets, which a write changes and a btrfs
    snapshot keeps) must match as well.
    """
    if same_device:
        return (path, st.st_ino, st.st_size, st.st_mtime_ns)
    return (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def build_manifest(
    snapshot_dir: str,
    client: str,
    snapshot: str,
    previous: Manifest | None = None,
    previous_dir: str | None = None,
    trust_inodes: bool = True,
    out: ManifestWriter | None = None,
) -> tuple[Manifest, BuildStats]:
    """The manifest of ``snapshot_dir``, reading only content that is new.

    With hard links (``previous_dir`` on the same file system) a file whose
    path and inode number, straight from the directory listing, are those the
    previous manifest lists is that very inode: the previous snapshot still
    holds it, so the number cannot have been reused, and finished snapshots
    are never written in place. Its line is taken as it is, without a stat
    (its ctime stays the one recorded when the content was read). A repair
    (scrub.heal) frees inodes a manifest names: after one, ``trust_inodes``
    is off and every file is matched by lstat as well, and so it is when the
    previous manifest was made on another file system (a drive replaced by a
    copy of the mirror: the numbers there were the old drive's).

    With ``out`` the lines go to the writer as they are made, in chunks.
    """
    stats = BuildStats()
    by_inode: dict[tuple[str, str], str] = {}  # (quoted path, inode) -> line
    by_stat: dict[tuple, str] = {}  # reuse_key -> digest
    same_device = True
    if previous is not None and previous_dir is not None:
        try:
            same_device = os.lstat(previous_dir).st_dev == os.lstat(snapshot_dir).st_dev
        except OSError:
            previous = None
    fsid = filesystem_id(snapshot_dir)
    if previous is not None and previous.fsid != fsid:
        trust_inodes = False
    if previous is not None and same_device and trust_inodes:
        for line in previous.lines:
            _digest, _size, _mtime, _ctime, ino, quoted = line.split(" ", 5)
            by_inode[(quoted, ino)] = line
    elif previous is not None:
        for old in previous.entries:
            key = (old.path, old.ino, old.size, old.mtime_ns)
            by_stat[key if same_device else (*key, old.ctime_ns)] = old.sha256
    lines: list[str] = []
    fed = 0
    seen_here: dict[int, str] = {}  # hard links inside this snapshot: read once
    plain = _PLAIN_NAME.match
    for rel, dir_fd, name, ino in walk_entries(snapshot_dir):
        if out is not None and len(lines) - fed >= _CHUNK_LINES:
            out.feed(lines[fed:])
            fed = len(lines)
        quoted = '"%s"' % rel if plain(rel) else json.dumps(rel)  # _quoted(), inline
        line = by_inode.get((quoted, str(ino))) if by_inode else None
        if line is not None:
            stats.files += 1
            stats.reused_files += 1
            stats.by_listing += 1
            seen_here[ino] = line[:64]
            lines.append(line)
            continue
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue  # replaced since it was listed
        stats.files += 1
        digest = by_stat.get(reuse_key(rel, st, same_device)) or seen_here.get(st.st_ino)
        if digest is not None:
            stats.reused_files += 1
        else:
            try:
                digest = digest_at(name, dir_fd)
            except OSError as exc:
                stats.skipped.append("%s: %s" % (rel, exc.strerror or exc))
                continue
            stats.read_files += 1
            stats.read_bytes += st.st_size
        seen_here[st.st_ino] = digest
        lines.append(_line(digest, st, quoted))
    if out is not None:
        out.feed(lines[fed:])
    return Manifest(client, snapshot, lines, fsid), stats


# Printable ASCII but the quote and the backslash: such a name is its own JSON
# string body, no encoder needed (most names are).
_PLAIN_NAME = re.compile(r"[ !#-\[\]-~]*\Z")


def _quoted(path: str) -> str:
    return '"%s"' % path if _PLAIN_NAME.match(path) else json.dumps(path)


def _trailer(count: int, digest) -> bytes:
    return b"end %d %s\n" % (count, digest.hexdigest().encode())


def _header(client: str, snapshot: str, fsid: str) -> str:
    return "%s %s %s%s\n" % (MAGIC, client, snapshot, " " + fsid if fsid else "")


class ManifestWriter:
    """Writes one manifest atomically (temporary file, fsync, rename) while it
    is being built: a second thread hashes and compresses each chunk of lines
    as it comes (zlib and hashlib let go of the interpreter lock), so on more
    than one core that costs next to nothing beside the walk.

    Level 1 compression: a manifest is written at every finalize; the best
    level took most of an unchanged snapshot's manifest time for a few
    percent less.
    """

    def __init__(self, root: str, client: str, snapshot: str, fsid: str = ""):
        self.directory = manifest_dir(root, client)
        self.final = os.path.join(self.directory, snapshot)
        self.header = _header(client, snapshot, fsid).encode("ascii")
        self.count = 0
        self.tmp = ""
        self._chunks: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None

    def __enter__(self) -> ManifestWriter:
        _ensure_root_dir(self.directory)
        self.tmp = os.path.join(self.directory, "%s%s" % (TMP_PREFIX, uuid.uuid4().hex))
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            self._handle = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            os.unlink(self.tmp)
            raise
        self._thread = threading.Thread(target=self._drain, name="manifest-writer", daemon=True)
        self._thread.start()
        self._chunks.put(self.header)
        return self

    def feed(self, lines: list[str]) -> None:
        """Append entry lines (as stored, without newlines)."""
        if lines:
            self.count += len(lines)
            self._chunks.put(("\n".join(lines) + "\n").encode("ascii"))

    def _drain(self) -> None:
        digest = hashlib.sha256()
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: a gzip stream
        ended = False
        try:
            while True:
                chunk = self._chunks.get()
                if chunk is None:
                    ended = True
                    break
                digest.update(chunk)
                self._handle.write(packer.compress(chunk))
            self._handle.write(packer.compress(_trailer(self.count, digest)))
            self._handle.write(packer.flush())
        except BaseException as exc:  # raised by __exit__, in the caller's thread
            self._failed = exc
            while not ended and self._chunks.get() is not None:
                pass

    def __exit__(self, kind, _value, _traceback) -> None:
        self._chunks.put(None)
        self._thread.join()
        renamed = False
        try:
            try:
                if kind is None and self._failed is None:
                    self._handle.flush()
                    os.fsync(self._handle.fileno())
            finally:
                self._handle.close()
            if kind is not None:
                return
            if self._failed is not None:
                raise self._failed
            os.replace(self.tmp, self.final)
            renamed = True
        finally:
            if not renamed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.tmp)
        dir_fd = open_dir_at(self.directory)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _ensure_root_dir(path: str) -> None:
    """Make ``path`` and its parents (up to an existing one) 0700, not following links."""
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        _ensure_root_dir(parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ManifestError("%s is not a directory" % path)


def write_manifest(root: str, manifest: Manifest) -> str:
    """Write a manifest built beforehand; returns its path."""
    with ManifestWriter(root, manifest.client, manifest.snapshot, manifest.fsid) as out:
        out.feed(manifest.lines)
    return out.final


def _check_trusted(path: str, st: os.stat_result, trusted_uid: int) -> None:
    if st.st_uid != trusted_uid:
        raise ManifestError("%s is owned by uid %d, not root: not trusted" % (path, st.st_uid))
    if st.st_mode & 0o022:
        raise ManifestError(
            "%s can be written by others (mode %o): not trusted" % (path, stat.S_IMODE(st.st_mode))
        )


def parse(data: bytes, where: str) -> Manifest:
    """Parse a manifest's (decompressed) bytes, checking its count and digest."""
    if not data.endswith(b"\n"):
        raise ManifestError("%s is truncated (no end line)" % where)
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1
    body, trailer = data[:cut], data[cut:].decode("ascii", errors="replace").split()
    lines = body.decode("ascii", errors="replace").split("\n")[:-1]
    if len(trailer) != 3 or trailer[0] != "end":
        raise ManifestError("%s is truncated (no end line)" % where)
    if not lines or not lines[0].startswith(MAGIC + " "):
        raise ManifestError("%s is not a linkdest manifest" % where)
    if trailer[2] != hashlib.sha256(body).hexdigest() or trailer[1] != str(len(lines) - 1):
        raise ManifestError("%s does not match its own digest: edited or damaged" % where)
    header = lines[0][len(MAGIC) + 1 :].split(" ")
    header += [""] * (3 - len(header))
    return Manifest(header[0], header[1], lines[1:], header[2])


def load(root: str, client: str, snapshot: str, trusted_uid: int = 0) -> Manifest:
    """The trusted manifest of ``snapshot``; ManifestError when there is none."""
    path = manifest_path(root, client, snapshot)
    for directory in (os.path.join(root, MANIFEST_DIR), manifest_dir(root, client)):
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            raise ManifestError("no manifest for %s/%s" % (client, snapshot)) from None
        if not stat.S_ISDIR(st.st_mode):
            raise ManifestError("%s is not a directory: not trusted" % directory)
        _check_trusted(directory, st, trusted_uid)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ManifestError("no manifest for %s/%s" % (client, snapshot)) from None
    except OSError as exc:
        raise ManifestError("%s: %s" % (path, exc.strerror)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ManifestError("%s is not a regular file: not trusted" % path)
        _check_trusted(path, st, trusted_uid)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read()
    finally:
        os.close(fd)
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError, ValueError) as exc:
        raise ManifestError("%s is truncated or damaged (%s)" % (path, exc)) from None
    manifest = parse(data, path)
    if (manifest.client, manifest.snapshot) != (client, snapshot):
        raise ManifestError(
            "%s names %s/%s, not %s/%s: not trusted"
            % (path, manifest.client, manifest.snapshot, client, snapshot)
        )
    return manifest


def text_of(manifest: Manifest) -> str:
    """The manifest's lines as stored (header, entries, end line), decompressed."""
    body = _header(manifest.client, manifest.snapshot, manifest.fsid)
    body += "".join(line + "\n" for line in manifest.lines)
    return body + _trailer(len(manifest.lines), hashlib.sha256(body.encode("ascii"))).decode()


REPAIRED_STAMP = ".repaired"


def mark_repaired(root: str, client: str) -> None:
    """Note that a repair is about to free inodes this client's manifests name
    (the next manifest must not trust inode numbers; build_manifest)."""
    directory = manifest_dir(root, client)
    _ensure_root_dir(directory)
    stamp = os.path.join(directory, REPAIRED_STAMP)
    fd = os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.utime(fd)
        os.fsync(fd)
    finally:
        os.close(fd)


def repaired_since(root: str, client: str, snapshot: str) -> bool:
    """True when a repair came after the manifest of ``snapshot`` was written."""
    try:
        stamp = os.lstat(os.path.join(manifest_dir(root, client), REPAIRED_STAMP))
        made = os.lstat(manifest_path(root, client, snapshot))
    except FileNotFoundError:
        return False
    return stamp.st_mtime_ns >= made.st_mtime_ns


def has_manifest(root: str, client: str, snapshot: str) -> bool:
    return os.path.lexists(manifest_path(root, client, snapshot))


def listed(root: str, client: str) -> list[str]:
    """Snapshot names that have a manifest file (trusted or not)."""
    try:
        return sorted(n for n in os.listdir(manifest_dir(root, client)) if not n.startswith("."))
    except FileNotFoundError:
        return []


STALE_TMP_SECONDS = 24 * 3600


def remove_orphans(root: str, client: str, snapshots: set[str]) -> list[str]:
    """Remove the manifests of snapshots that are gone (pruned); returns their names.

    Temporaries a crashed writer left are removed too, once a day old (a
    younger one may be a writer's at work).
    """
    with contextlib.suppress(FileNotFoundError):
        directory = manifest_dir(root, client)
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if name.startswith(TMP_PREFIX) and time.time() - os.lstat(path).st_mtime > (
                STALE_TMP_SECONDS
            ):
                os.unlink(path)
    gone = []
    for name in listed(root, client):
        if name not in snapshots:
            try:
                os.unlink(manifest_path(root, client, name))
            except FileNotFoundError:
                continue
            gone.append(name)
    return gone
