# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Change lists: a snapshot that costs what changed, not what exists.

The laptop (client.py) keeps a record of the folder as it was sent in its last
finished snapshot: per path its type, size, mtime and ctime in ns, inode, mode
and owner, with the server's name of that snapshot. The next run walks the
folder once and compares. What is new, changed (ctime catches metadata-only
and mtime-preserving edits) or gone becomes a change list:

    KIND " " PATH "\\0"       KIND: d (a directory now), f (anything else now),
                              - (gone); then one more "\\0", the end mark

The server (server_cli.py) builds the new snapshot from ``current`` (a
hard-link clone, or a btrfs snapshot) and calls apply_removals() with the
list: every listed path that must be replaced or is gone leaves the clone, so
the receiver that follows writes each listed file as a new inode and never
touches one a finished snapshot shares. The laptop's rsync then sends just
the listed paths (``--files-from``).

This file is shared by both ends; standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import marshal
import os
import re
import select
import shutil
import signal
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

# Bump when the record or the way it is compared changes: a laptop with an
# older record then makes one full run.
FORMAT = 2
# marshal's format 4 reads the same on every Python 3 since 3.4.
MARSHAL_VERSION = 4
KIND_DIR = "d"
KIND_OTHER = "f"
KIND_GONE = "-"
KINDS = (KIND_DIR, KIND_OTHER, KIND_GONE)
# An empty entry ends the list.
END = b"\0"
# The server takes at most this many entries (a bigger change is a full run).
MAX_ENTRIES = 1_000_000
MAX_PATH_BYTES = 4096
# A file changed this close before the walk may change again within the same
# timestamp tick without a trace: it is recorded as racy and sent again. Linux
# file systems stamp times from a clock that ticks every few milliseconds; a
# file system whose times are whole seconds (FAT, HFS+) gets the longer window.
RACY_NS = 50 * 10**6
RACY_COARSE_NS = 2 * 10**9
# rsync's last pass over directory times compares whole seconds: a directory
# it writes into within the second of the directory's own mtime may keep the
# receiver's time. Such a directory is listed again by the next run, which
# sets the time right (full runs list every directory every time).
RACY_DIR_NS = 1100 * 10**6
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class ChangeListError(Exception):
    """A change list the server refuses (bad path, too long, malformed)."""


class Unsupported(Exception):
    """This run cannot use a change list; the reason says why (a full run does)."""


# --- the list on the wire ------------------------------------------------------


def check_path(path: str) -> str:
    """A path inside the snapshot: relative, no '.', '..' or empty parts.

    "." alone names the folder itself (its own times and mode).
    """
    if path == ".":
        return path
    if (
        not path
        or path.startswith("/")
        or "\0" in path
        or len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES
    ):
        raise ChangeListError("refused path %r in the change list" % path[:200])
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ChangeListError("refused path %r in the change list" % path[:200])
    return path


def encode(entries: Iterable[tuple[str, str]]) -> bytes:
    """The list on the wire, with its end mark (an empty entry)."""
    return (
        b"".join(
            (kind + " " + path).encode("utf-8", "surrogateescape") + b"\0" for kind, path in entries
        )
        + END
    )


class TimedReader:
    """A pipe read with an idle limit: a laptop that stops sending its list
    (asleep, gone, or never meaning to) does not hold the area's lock."""

    def __init__(self, stream, timeout: float):
        self.fd = stream.fileno()
        self.timeout = timeout

    def read(self, size: int) -> bytes:
        ready, _w, _x = select.select([self.fd], [], [], self.timeout)
        if not ready:
            raise ChangeListError("no change list data for %d s" % self.timeout)
        return os.read(self.fd, size)


def decode(stream, limit: int = MAX_ENTRIES) -> Iterator[tuple[str, str]]:
    """Entries from a binary stream, checked one by one as they arrive.

    The list must end with its end mark: a laptop that gives up half way
    (it decided on a full run after all) just closes the stream, and the
    server throws the clone away.
    """
    pending = b""
    count = 0
    while True:
        chunk = stream.read(1 << 16)
        if not chunk:
            raise ChangeListError("the change list ended before its end mark (abandoned)")
        pending += chunk
        *records, pending = pending.split(b"\0")
        for index, record in enumerate(records):
            if not record:
                if index + 1 < len(records) or pending or stream.read(1):
                    raise ChangeListError("the change list goes on after its end mark")
                return
            count += 1
            if count > limit:
                raise ChangeListError("the change list has more than %d entries" % limit)
            text = record.decode("utf-8", "surrogateescape")
            kind, sep, path = text.partition(" ")
            if kind not in KINDS or not sep:
                raise ChangeListError("malformed change list entry %r" % text[:200])
            yield kind, check_path(path)
        if len(pending) > MAX_PATH_BYTES + 8:
            raise ChangeListError("a change list entry is too long")


# --- the server: make room in the clone ----------------------------------------


def _open_parent(root_fd: int, path: str) -> tuple[int, str] | None:
    """An fd of PATH's parent inside the clone (never through a symlink), and
    PATH's last name; None when a parent is missing or not a directory."""
    *parents, name = path.split("/")
    fd = os.dup(root_fd)
    try:
        for part in parents:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    return None
                raise
            os.close(fd)
            fd = child
        result, fd = (fd, name), -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def _forget_time(fd: int) -> None:
    os.utime(fd, ns=(0, 0))


def _remove(parent_fd: int, name: str, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        # Server side only (Debian's Python 3.11 and later): the laptop, which
        # may run Python 3.9 (macOS), never applies a change list.
        shutil.rmtree(name, dir_fd=parent_fd)  # novermin
    else:
        os.unlink(name, dir_fd=parent_fd)


def apply_removals(
    clone: str, entries: Iterable[tuple[str, str]], keep_files: bool = False
) -> dict[str, int]:
    """Make room in a fresh clone of ``current`` for what the laptop sends.

    Gone paths leave, whatever they are. A path that is a directory on the
    laptop keeps its directory (its unlisted contents stay), with its time
    set to 1970: rsync takes times within the same second as equal, so a
    directory time an earlier run left a fraction off is set right only if
    it differs by more. (The clone's directories are its own, never shared.) Every other
    listed path is removed, so the receiver writes it anew: with hard links
    the old file is an inode finished snapshots share and must not be
    written. ``keep_files`` (btrfs, where the clone's files are its own)
    keeps a file that stays a file, so rsync can update it in place.
    """
    counts = {"removed": 0, "listed": 0}
    root_fd = os.open(clone, _DIR_FLAGS)
    try:
        for kind, path in entries:
            counts["listed"] += 1
            if path == ".":
                _forget_time(root_fd)
                continue
            opened = _open_parent(root_fd, path)
            if opened is None:
                continue
            parent_fd, name = opened
            try:
                try:
                    st = os.lstat(name, dir_fd=parent_fd)
                except FileNotFoundError:
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                if kind == KIND_DIR and is_dir:
                    os.utime(name, ns=(0, 0), dir_fd=parent_fd, follow_symlinks=False)
                    continue
                if kind == KIND_OTHER and keep_files and not is_dir:
                    continue
                _remove(parent_fd, name, st)
                counts["removed"] += 1
            finally:
                os.close(parent_fd)
    finally:
        os.close(root_fd)
    return counts


# --- the laptop: rsync's exclude patterns, mirrored ----------------------------

# Rule prefixes, "!", bracket classes and backslash escapes: rsync's own
# matching of those has corners (classes never match "/", "[!]]", escapes
# only in wildcard patterns) not worth mirroring for a rare exclude.
_UNSUPPORTED_PATTERN = re.compile(r"^[-+!] |^!$|[\[\\]|^\s*$")


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern
    dir_only: bool
    whole_path: bool


def _translate(pattern: str) -> str:
    """rsync's wildcards as a regex: * and ? stop at "/", ** does not."""
    return "".join(
        ".*"
        if part == "**"
        else "[^/]*"
        if part == "*"
        else "[^/]"
        if part == "?"
        else re.escape(part)
        for part in re.split(r"(\*\*|\*|\?)", pattern)
        if part
    )


class Excludes:
    """rsync's ``--exclude=PATTERN`` rules, as the laptop's walk applies them.

    Supported: ``*``, ``**``, ``?``, a leading ``/`` (anchored at the
    folder), a trailing ``/`` (directories only) and ``dir/***``. Anything
    else (rule prefixes such as ``+ ``, ``!``, ``[...]`` classes, backslash
    escapes) raises Unsupported: such a laptop makes full runs, where rsync
    itself applies the patterns.
    """

    def __init__(self, patterns: Iterable[str]):
        self.rules: list[_Rule] = []
        for pattern in patterns:
            if _UNSUPPORTED_PATTERN.search(pattern):
                raise Unsupported("the exclude pattern %r needs rsync itself" % pattern)
            self.rules.extend(self._rules_of(pattern))
        # One regex per kind of rule (on the name or the path, for anything
        # or directories only): the walk asks at most four per path.
        self._checks = [
            (dir_only, whole_path, re.compile("|".join(regexes), re.DOTALL))
            for (dir_only, whole_path), regexes in self._grouped().items()
        ]

    def _grouped(self) -> dict[tuple[bool, bool], list[str]]:
        groups: dict[tuple[bool, bool], list[str]] = {}
        for rule in self.rules:
            groups.setdefault((rule.dir_only, rule.whole_path), []).append(
                "(?:%s)" % rule.regex.pattern
            )
        return groups

    @staticmethod
    def _rules_of(pattern: str) -> list[_Rule]:
        dir_only = pattern.endswith("/")
        body = pattern.rstrip("/") if dir_only else pattern
        anchored = body.startswith("/")
        body = body.lstrip("/") if anchored else body
        if body.endswith("/***"):
            # "dir/***": the directory itself and everything in it.
            base = body[: -len("/***")]
            return Excludes._rules_of(("/" if anchored else "") + base + "/") + Excludes._rules_of(
                ("/" if anchored else "") + base + "/**"
            )
        whole_path = anchored or "/" in body or "**" in body
        if whole_path and not anchored:
            # Unanchored: it may match at any depth; a leading "**/" may
            # also match no directory at all (rsync: "**/c" excludes "c").
            regex = "(?:.*/)?" + _translate(body[3:] if body.startswith("**/") else body)
        else:
            regex = _translate(body)
        return [_Rule(re.compile("^" + regex + r"\Z", re.DOTALL), dir_only, whole_path)]

    def excluded(self, path: str, name: str, is_dir: bool) -> bool:
        for dir_only, whole_path, regex in self._checks:
            if (is_dir or not dir_only) and regex.match(path if whole_path else name):
                return True
        return False


def top_level_rule(name: str) -> str:
    """An rsync include pattern that matches exactly the top-level NAME.

    rsync reads backslash escapes only in a pattern with a wildcard (``*``,
    ``?``, ``[``): a name holding one gets them escaped; a name that starts
    with "#" or ";" (a comment in a rules file) gets its first character in a
    bracket class, which makes it a wildcard pattern too; any other name is
    matched as it is, backslashes included. (Classes match bytes, so only
    those ASCII first characters go into one.)
    """
    if re.search(r"[*?\[]", name):
        return "/" + re.sub(r"([*?\[\\])", r"\\\1", name)
    if name[0] in "#;":
        return "/[" + name[0] + "]" + re.sub(r"([\\])", r"\\\1", name[1:])
    return "/" + name


# --- the laptop: walk and record -----------------------------------------------


# A path's record (record_of): a tuple of ints, compared whole.
SIZE, MTIME, CTIME, INO, MODE, UID, GID = range(7)


@dataclass
class Walk:
    """The folder as it is now: path -> record (see record_of)."""

    entries: dict[str, tuple] = field(default_factory=dict)

    def kind(self, path: str) -> str:
        """d, f, l (symlink) or s (special) of a walked path."""
        return _kind_of(self.entries[path][MODE])


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISLNK(mode):
        return "l"
    return "s"  # fifo, socket, device


def record_of(st: os.stat_result, started_ns: int) -> tuple:
    """What a path's record holds (SIZE, MTIME, ... GID): equal means unchanged.
    The mode holds the type of file too."""
    return _record(st, started_ns, started_ns - max(RACY_NS, RACY_COARSE_NS, RACY_DIR_NS))


def _record(st: os.stat_result, started_ns: int, settled_ns: int) -> tuple:
    """record_of(), told when the widest racy window starts (``settled_ns``)."""
    ctime = st.st_ctime_ns
    mtime = st.st_mtime_ns
    # Most paths changed before every window: one comparison each.
    if ctime >= settled_ns or mtime >= settled_ns:
        window = RACY_COARSE_NS if ctime % 10**9 == 0 else RACY_NS
        if stat.S_ISDIR(st.st_mode):
            window = max(window, RACY_DIR_NS)
        if max(mtime, ctime) >= started_ns - window:
            ctime = -1  # changed too recently to trust: never equal, sent again
    return (st.st_size, mtime, ctime, st.st_ino, st.st_mode, st.st_uid, st.st_gid)


# A folder this big (by the last record) is walked by two processes: the
# walk is mostly lstat calls, which the second core can share.
SPLIT_WALK_ENTRIES = 20_000


def walk(
    source: str,
    excludes: Excludes,
    follow_links: bool,
    started_ns: int,
    previous: dict[str, tuple] | None = None,
    on_change=None,
) -> Walk:
    """Every path of the folder that rsync would send, with its record.

    ``follow_links`` mirrors rsync's --copy-links: symlinks are followed (a
    dangling one, or a loop, raises Unsupported: rsync reports those itself).
    An unreadable directory raises Unsupported too. With ``previous`` (the
    last record), ``on_change()`` is called once, at the first path that is
    new or differs from it (not for removals: those are known at the end).
    A folder whose last record holds SPLIT_WALK_ENTRIES paths or more is
    walked half by a forked child (see _walk_split).
    """
    walker = _Walker(excludes, follow_links, started_ns, previous, on_change)
    try:
        root_st = os.stat(source) if follow_links else os.lstat(source)
    except OSError as exc:
        raise Unsupported("cannot read %s: %s" % (source, exc.strerror)) from None
    walker.add(".", root_st)
    top = ("", source, frozenset({(root_st.st_dev, root_st.st_ino)}))
    if previous is not None and len(previous) >= SPLIT_WALK_ENTRIES and hasattr(os, "fork"):
        pending = walker.scan(*top)
        _walk_split(walker, pending)
        walker.seen_all()
    else:
        walker.run([top])
    return walker.result


class _Walker:
    """The walk's loop and what it has found so far."""

    def __init__(self, excludes, follow_links, started_ns, previous, on_change):
        self.result = Walk()
        self.excludes = excludes if excludes.rules else None
        self.follow_links = follow_links
        self.started_ns = started_ns
        self.settled_ns = started_ns - max(RACY_NS, RACY_COARSE_NS, RACY_DIR_NS)
        self.watching = previous if on_change is not None else None
        self.on_change = on_change
        self.changed = False

    def add(self, path: str, st: os.stat_result) -> None:
        line = self.result.entries[path] = _record(st, self.started_ns, self.settled_ns)
        if self.watching is not None and self.watching.get(path) != line:
            self.seen_change()

    def seen_change(self) -> None:
        if self.watching is not None:
            self.watching = None
            self.changed = True
            self.on_change()

    def seen_all(self) -> None:
        """The entries are complete: a change a child found counts now."""
        watching = self.watching
        if watching is not None and any(
            watching.get(path) != line for path, line in self.result.entries.items()
        ):
            self.seen_change()

    def run(self, pending: list) -> None:
        while pending:
            pending.extend(self.scan(*pending.pop()))

    def scan(self, prefix: str, directory: str, ancestors: frozenset) -> list:
        """Record one directory's entries; the directories in it, to scan next."""
        found = []
        try:
            listing = list(os.scandir(directory))
        except OSError as exc:
            raise Unsupported("cannot list %s: %s" % (directory, exc.strerror)) from None
        for item in listing:
            path = prefix + item.name
            try:
                st = item.stat(follow_symlinks=self.follow_links)
            except FileNotFoundError:
                if self.follow_links and item.is_symlink():
                    raise Unsupported("the symlink %s points nowhere" % path) from None
                continue  # vanished since the listing
            except OSError as exc:
                # A symlink loop, a name too long, a disk error: rsync
                # reports those itself, in a full run.
                raise Unsupported("cannot read %s: %s" % (path, exc.strerror)) from None
            is_dir = stat.S_ISDIR(st.st_mode)
            if self.excludes is not None and self.excludes.excluded(path, item.name, is_dir):
                continue
            self.add(path, st)
            if is_dir:
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    raise Unsupported("the symlink %s loops" % path)
                found.append((path + "/", item.path, ancestors | {key}))
        return found


def _walk_split(walker: _Walker, pending: list) -> None:
    """Walk the top-level directories ``pending`` in two processes: every
    other one in a forked child, which sends its entries back (marshal) on a
    pipe; the rest here. A child that fails makes the walk fail (a full run);
    a child that cannot be started leaves the whole walk to this process."""
    theirs, ours = pending[1::2], pending[0::2]
    if not theirs:
        walker.run(ours)
        return
    try:
        read_end, write_end = os.pipe()
    except OSError:
        walker.run(pending)
        return
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        walker.run(pending)
        return
    if pid == 0:  # the child: walk, send, and leave without running any cleanup
        _walk_child(walker, theirs, read_end, write_end)
    os.close(write_end)
    try:
        walker.run(ours)
    except BaseException:
        # This half failed: the other half's work is of no use.
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        raise
    finally:
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read()
        _pid, status = os.waitpid(pid, 0)
    try:
        entries, failure = marshal.loads(message)
    except (EOFError, ValueError, TypeError) as exc:
        raise Unsupported("the walk's second process failed (status %d)" % status) from exc
    if failure is not None:
        raise Unsupported(failure)
    walker.result.entries.update(entries)


def _walk_child(walker: _Walker, theirs: list, read_end: int, write_end: int) -> None:
    """The forked child's whole life: it never returns into the caller."""
    code = 1
    try:
        os.close(read_end)
        walker.watching = None
        walker.result = Walk()
        try:
            walker.run(theirs)
            message = marshal.dumps((walker.result.entries, None), MARSHAL_VERSION)
        except Unsupported as exc:
            message = marshal.dumps(({}, str(exc)), MARSHAL_VERSION)
        with os.fdopen(write_end, "wb") as out:
            out.write(message)
        code = 0
    finally:
        os._exit(code)


def changes(previous: dict[str, tuple], now: Walk) -> list[tuple[str, str]]:
    """The change list from the last sent record to the walk: parents first."""
    listed = []
    for path, record in now.entries.items():
        if previous.get(path) != record:
            listed.append((KIND_DIR if stat.S_ISDIR(record[MODE]) else KIND_OTHER, path))
    gone = sorted(path for path in previous if path not in now.entries)
    gone_set = set(gone)
    for path in gone:
        parent = path.rpartition("/")[0]
        # Inside a directory that is gone too: it leaves with its parent.
        if parent and parent in gone_set:
            continue
        listed.append((KIND_GONE, path))
    listed.sort(key=lambda entry: entry[1].split("/"))
    return listed


def settings_digest(**settings) -> str:
    """What must not change between the record and a run (else: a full run)."""
    text = json.dumps(dict(settings, format=FORMAT), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass
class Record:
    """What the last finished snapshot holds, as the laptop sent it."""

    snapshot: str
    settings: str
    full_epoch: int
    entries: dict[str, tuple]


def save_record(path: str, record: Record) -> None:
    """One JSON header line, then the entries as one marshal blob (Python's own
    format for plain values: a dict of str -> tuple of ints, read and written
    in C, several times faster than a line per path). The header holds the
    blob's SHA-256: a torn or damaged record is no record (a full run)."""
    body = marshal.dumps(record.entries, MARSHAL_VERSION)
    header = {
        "format": FORMAT,
        "snapshot": record.snapshot,
        "settings": record.settings,
        "full_epoch": record.full_epoch,
        "count": len(record.entries),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    tmp = path + ".tmp"
    with open(tmp, "wb") as out:
        out.write(json.dumps(header, sort_keys=True).encode("ascii") + b"\n")
        out.write(body)
    os.replace(tmp, path)


def load_record(path: str) -> Record | None:
    """The saved record, or None when there is none or it cannot be read.

    The record is the laptop user's own file (in their state folder): the
    checksum guards against a torn or damaged file, not against its owner.
    """
    try:
        with open(path, "rb") as handle:
            header = json.loads(handle.readline(4096))
            body = handle.read()
        if header.get("format") != FORMAT:
            return None
        if hashlib.sha256(body).hexdigest() != header.get("sha256"):
            return None
        entries = marshal.loads(body)
    except (OSError, EOFError, ValueError, TypeError, AttributeError):
        return None
    if not isinstance(entries, dict) or len(entries) != header.get("count"):
        return None
    return Record(header["snapshot"], header["settings"], int(header["full_epoch"]), entries)


def forget_record(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
