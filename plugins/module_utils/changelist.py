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
import gzip
import hashlib
import json
import os
import re
import select
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

# Bump when the record or the way it is compared changes: a laptop with an
# older record then makes one full run.
FORMAT = 1
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
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.match(path if rule.whole_path else name):
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


@dataclass
class Walk:
    """The folder as it is now: path -> record line (see record_of)."""

    entries: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISLNK(mode):
        return "l"
    return "s"  # fifo, socket, device


def record_of(st: os.stat_result, started_ns: int) -> str:
    """What a path's record holds, as text: equal text means unchanged."""
    ctime = st.st_ctime_ns
    window = RACY_COARSE_NS if ctime % 10**9 == 0 else RACY_NS
    if stat.S_ISDIR(st.st_mode):
        window = max(window, RACY_DIR_NS)
    if max(st.st_mtime_ns, ctime) >= started_ns - window:
        ctime = -1  # changed too recently to trust: never equal, sent again
    return "%s %d %d %d %d %o %d %d" % (
        _kind_of(st.st_mode),
        st.st_size,
        st.st_mtime_ns,
        ctime,
        st.st_ino,
        st.st_mode,
        st.st_uid,
        st.st_gid,
    )


def walk(source: str, excludes: Excludes, follow_links: bool, started_ns: int) -> Walk:
    """Every path of the folder that rsync would send, with its record.

    ``follow_links`` mirrors rsync's --copy-links: symlinks are followed (a
    dangling one, or a loop, raises Unsupported: rsync reports those itself).
    An unreadable directory raises Unsupported too.
    """
    result = Walk()
    try:
        root_st = os.stat(source) if follow_links else os.lstat(source)
    except OSError as exc:
        raise Unsupported("cannot read %s: %s" % (source, exc.strerror)) from None
    result.entries["."] = record_of(root_st, started_ns)
    result.kinds["."] = "d"
    pending = [("", source, {(root_st.st_dev, root_st.st_ino)})]
    while pending:
        prefix, directory, ancestors = pending.pop()
        try:
            listing = list(os.scandir(directory))
        except OSError as exc:
            raise Unsupported("cannot list %s: %s" % (directory, exc.strerror)) from None
        for item in listing:
            path = prefix + item.name
            try:
                st = item.stat(follow_symlinks=follow_links)
            except FileNotFoundError:
                if follow_links and item.is_symlink():
                    raise Unsupported("the symlink %s points nowhere" % path) from None
                continue  # vanished since the listing
            except OSError as exc:
                # A symlink loop, a name too long, a disk error: rsync
                # reports those itself, in a full run.
                raise Unsupported("cannot read %s: %s" % (path, exc.strerror)) from None
            is_dir = stat.S_ISDIR(st.st_mode)
            if excludes.excluded(path, item.name, is_dir):
                continue
            result.entries[path] = record_of(st, started_ns)
            result.kinds[path] = _kind_of(st.st_mode)
            if is_dir:
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    raise Unsupported("the symlink %s loops" % path)
                pending.append((path + "/", item.path, ancestors | {key}))
    return result


def changes(previous: dict[str, str], now: Walk) -> list[tuple[str, str]]:
    """The change list from the last sent record to the walk: parents first."""
    listed = []
    for path, record in now.entries.items():
        if previous.get(path) != record:
            listed.append((KIND_DIR if now.kinds[path] == "d" else KIND_OTHER, path))
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
    entries: dict[str, str]


def save_record(path: str, record: Record) -> None:
    tmp = path + ".tmp"
    header = {
        "format": FORMAT,
        "snapshot": record.snapshot,
        "settings": record.settings,
        "full_epoch": record.full_epoch,
        "count": len(record.entries),
    }
    with gzip.open(tmp, "wt", encoding="utf-8", errors="surrogateescape", compresslevel=1) as out:
        out.write(json.dumps(header, sort_keys=True) + "\n")
        out.writelines(
            "%s %s\n" % (line, json.dumps(name, ensure_ascii=False))
            for name, line in record.entries.items()
        )
    os.replace(tmp, path)


def load_record(path: str) -> Record | None:
    """The saved record, or None when there is none or it cannot be read."""
    try:
        with gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape") as handle:
            header = json.loads(handle.readline())
            if header.get("format") != FORMAT:
                return None
            entries = {}
            for line in handle:
                fields, _sep, name = line[:-1].partition(' "')
                # Most names need no unescaping: skip the JSON parser for those.
                entries[name[:-1] if "\\" not in name else json.loads('"' + name)] = fields
    except (OSError, EOFError, ValueError, UnicodeDecodeError):
        return None
    if len(entries) != header.get("count"):
        return None
    return Record(header["snapshot"], header["settings"], int(header["full_epoch"]), entries)


def forget_record(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
