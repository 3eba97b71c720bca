# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The drive mirror: ``linkdest-server mirror`` copies the backup drive to a
second drive, snapshot by snapshot, and can never wipe either drive.

Run by cron (the backup_mirror role writes /etc/linkdest/mirror.json and
/etc/cron.d/linkdest-mirror); ``linkdest-server mirror ARGS`` calls main(ARGS).

What a run does, in this order, and why:

1. Takes the mirror's own kernel lock (one run at a time).
2. Checks both drives before it writes anything anywhere: each must exist, be
   a mount point of its own (not on the root file system's device) unless
   configured otherwise, and carry the marker file written at setup that names
   its role; the destination's identity must be the one recorded at setup (a
   different disk was plugged in otherwise); the source must hold at least one
   finished snapshot. Any failure refuses the whole run.
3. Per client area, under the source area's lock (the lock finalize, prune and
   the gate take, so the mirror never sees a half-done finalize or prune):
   copies each finished ``back-*`` snapshot the mirror lacks, oldest first,
   into a fresh hidden directory: files the source shares with the previous
   snapshot (the same inode) are hard-linked to that snapshot's copy on the
   mirror (prelink), and rsync -aHXX copies the rest, with ``--link-dest``
   against the nearest snapshots already on the mirror. Then it renames the
   directory into place without replacing anything. A snapshot therefore
   appears on the mirror under its final name only when it is complete there.
   ``incomplete_back-*`` is never copied. Then points the mirror's ``current``
   where the source's points, and removes from the mirror the snapshots the
   source no longer has, unless the source suddenly holds far fewer snapshots
   than the mirror (the deletion guard): then nothing is removed, an alert runs
   and the run exits non-zero.

The cost of a run grows with what changed since the last one (one pass over
each new snapshot), not with the number of snapshots kept, unlike one
``rsync -aH --delete`` over the whole drive.

The source drive is only read. The one exception is an area's lock file,
created (owned by the area's owner, as the gate would) when it is missing.

Standard library only, like snapshots.py: this file runs on the server.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import stat
import subprocess
import sys
import syslog
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from ansible_collections.linkdest.backup.plugins.module_utils import manifest as mf
from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap
from ansible_collections.linkdest.backup.plugins.module_utils import subvolumes

CONFIG_PATH = "/etc/linkdest/mirror.json"
STATE_DIR = "/var/lib/linkdest-mirror"
STATE_FILE = "state.json"
LAST_SUCCESS_FILE = "last-success"
LOCK_FILE = "mirror.lock"
LOG_FILE = "/var/log/linkdest-mirror.log"
MARKER_NAME = ".linkdest-drive.json"
SOURCE = "source"
DESTINATION = "destination"
# A copy in progress; renamed to the snapshot's name only once complete.
COPY_PREFIX = ".mirroring-"
# What an interrupted copy left, kept as a --link-dest for the next attempt.
RESUME_PREFIX = ".mirror-resume-"
JOURNAL = ".linkdest-journal"
# Area names are client names (the backup_server role's rule); anything else
# under the root (lost+found, hidden directories) is not an area.
AREA_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*\Z")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
MARKER_MAX_BYTES = 65536
ALERT_TIMEOUT = 120
STDERR_TAIL_LINES = 15
# rsync accepts at most 20 --link-dest directories.
MAX_LINK_DESTS = 20
# After each snapshot copy the source area's lock is let go this long, so a
# laptop waiting at the gate (it retries every 0.2 s) gets its turn.
LOCK_PAUSE = 0.3

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 64
EXIT_GUARD = 65
EXIT_NOT_MOUNTED = 72
EXIT_BUSY = 75
EXIT_REFUSED = 77
EXIT_CONFIG = 78


class MirrorError(Exception):
    """An error that refuses the run; ``code`` is the exit code."""

    code = EXIT_FAILED


class ConfigError(MirrorError):
    code = EXIT_CONFIG


class DriveError(MirrorError):
    """A drive is missing, not mounted, or on the root file system."""

    code = EXIT_NOT_MOUNTED


class RefusedError(MirrorError):
    """A marker is missing or wrong, or the source holds no snapshot."""

    code = EXIT_REFUSED


class BusyError(MirrorError):
    code = EXIT_BUSY


# --- configuration ------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    source: str
    destination: str
    source_must_be_mount: bool = True
    destination_must_be_mount: bool = True
    max_removed_percent: int = 50
    bwlimit: int = 0
    lock_timeout: float = 1800.0
    log_file: str = LOG_FILE
    alert_command: str = ""
    state_dir: str = STATE_DIR
    rsync: str = "/usr/bin/rsync"


_CONFIG_TYPES = {
    "source": str,
    "destination": str,
    "source_must_be_mount": bool,
    "destination_must_be_mount": bool,
    "max_removed_percent": int,
    "bwlimit": int,
    "lock_timeout": (int, float),
    "log_file": str,
    "alert_command": str,
    "state_dir": str,
    "rsync": str,
}


def _clean_path(path: str) -> str:
    return path.rstrip("/") or "/"


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def config_from_dict(data: dict) -> Config:
    """Validate a configuration mapping; raise ConfigError naming every problem."""
    if not isinstance(data, dict):
        raise ConfigError("the mirror configuration must be a JSON object")
    problems = []
    for key in sorted(set(data) - set(_CONFIG_TYPES)):
        problems.append("unknown setting %r" % key)
    for key, kind in _CONFIG_TYPES.items():
        if key not in data:
            continue
        value = data[key]
        # bool is an int in Python: do not accept true as a percentage.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            problems.append("%s has the wrong type (%r)" % (key, value))
    for key in ("source", "destination"):
        if not data.get(key):
            problems.append("%s is required" % key)
    if problems:
        raise ConfigError("bad mirror configuration: " + "; ".join(problems))
    config = Config(**data)
    config = replace(
        config, source=_clean_path(config.source), destination=_clean_path(config.destination)
    )
    for key in ("source", "destination", "log_file", "state_dir", "rsync"):
        value = getattr(config, key)
        parts = value.split("/")
        if not value.startswith("/") or value == "/" or "." in parts or ".." in parts:
            problems.append("%s must be an absolute path other than / (got %r)" % (key, value))
    if _inside(config.source, config.destination) or _inside(config.destination, config.source):
        problems.append(
            "source %s and destination %s must be separate trees"
            % (config.source, config.destination)
        )
    if not 0 <= config.max_removed_percent <= 100:
        problems.append("max_removed_percent must be between 0 and 100")
    if config.bwlimit < 0:
        problems.append("bwlimit must be 0 (unlimited) or more")
    if config.lock_timeout < 0:
        problems.append("lock_timeout must be 0 or more")
    if problems:
        raise ConfigError("bad mirror configuration: " + "; ".join(problems))
    return config


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            "no mirror configuration at %s (the backup_mirror role writes it when "
            "backup_mirror_dest is set)" % path
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError("cannot read the mirror configuration %s: %s" % (path, exc)) from None
    return config_from_dict(data)


# --- drives and markers -------------------------------------------------------


def check_drive(path: str, role: str, must_be_mount: bool, root_dev: int | None = None) -> None:
    """Refuse a drive that is missing, or not a mount point of its own.

    With ``must_be_mount``, the directory must be a mount point and must not
    sit on the root file system's device (a bind mount of a directory of the
    system disk is a mount point too). ``root_dev`` defaults to that of ``/``.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise DriveError("%s drive %s does not exist" % (role, path)) from None
    if stat.S_ISLNK(st.st_mode):
        raise DriveError(
            "%s drive %s is a symlink; configure the mount point itself" % (role, path)
        )
    if not stat.S_ISDIR(st.st_mode):
        raise DriveError("%s drive %s is not a directory" % (role, path))
    if not must_be_mount:
        return
    if not os.path.ismount(path):
        raise DriveError(
            "%s drive %s is not a mount point: is the drive plugged in and mounted?" % (role, path)
        )
    if root_dev is None:
        root_dev = os.stat("/").st_dev
    if st.st_dev == root_dev:
        raise DriveError(
            "%s drive %s is on the root file system's device, not a drive of its own" % (role, path)
        )


@dataclass(frozen=True)
class Marker:
    role: str
    id: str


def marker_path(drive: str) -> str:
    return os.path.join(drive, MARKER_NAME)


def read_marker(drive: str) -> Marker | None:
    """The drive's marker, None when there is none; RefusedError when unreadable."""
    path = marker_path(drive)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RefusedError("cannot read the drive marker %s: %s" % (path, exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RefusedError("drive marker %s is not a regular file" % path)
        raw = os.read(fd, MARKER_MAX_BYTES)
    finally:
        os.close(fd)
    try:
        data = json.loads(raw.decode("utf-8"))
        marker = Marker(role=data["role"], id=data["id"])
    except (ValueError, KeyError, TypeError):
        raise RefusedError("drive marker %s is damaged" % path) from None
    if marker.role not in (SOURCE, DESTINATION) or not isinstance(marker.id, str):
        raise RefusedError("drive marker %s is damaged" % path)
    if not UUID_RE.match(marker.id):
        raise RefusedError("drive marker %s holds no valid identity" % path)
    return marker


def _write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write a small file whole: temporary file, fsync, rename over."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_marker(drive: str, role: str, identity: str, now: datetime) -> Marker:
    data = {
        "role": role,
        "id": identity,
        "created": now.astimezone(timezone.utc).isoformat(timespec="seconds"),
        "note": "linkdest.backup drive marker, written once by 'linkdest-server mirror setup'. "
        "Do not copy it to another drive.",
    }
    _write_atomic(marker_path(drive), json.dumps(data, indent=2, sort_keys=True) + "\n")
    return Marker(role=role, id=identity)


# --- state --------------------------------------------------------------------


def read_state(state_dir: str) -> dict:
    try:
        with open(os.path.join(state_dir, STATE_FILE), encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise RefusedError("cannot read the mirror state %s: %s" % (state_dir, exc)) from None
    return data if isinstance(data, dict) else {}


def write_state(state_dir: str, state: dict) -> None:
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    _write_atomic(
        os.path.join(state_dir, STATE_FILE), json.dumps(state, indent=2, sort_keys=True) + "\n"
    )


@contextlib.contextmanager
def mirror_lock(state_dir: str):
    """The mirror's own kernel lock: one run (or setup) at a time."""
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    path = os.path.join(state_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError("another mirror run is in progress") from None
        yield
    finally:
        os.close(fd)


# --- setup --------------------------------------------------------------------


@dataclass
class SetupResult:
    source_id: str
    destination_id: str
    actions: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.actions)


def setup(
    config: Config,
    now: datetime,
    new_destination: bool = False,
    dry_run: bool = False,
    root_dev: int | None = None,
    new_id=None,
) -> SetupResult:
    """Write each drive's marker once and record the destination's identity.

    Idempotent: an existing marker is never rewritten, so its identity stays.
    A destination whose marker is missing or differs from the recorded one is
    refused unless ``new_destination`` says the drive was replaced on purpose.
    """
    new_id = new_id or (lambda: str(uuid.uuid4()))
    check_drive(config.source, SOURCE, config.source_must_be_mount, root_dev)
    check_drive(config.destination, DESTINATION, config.destination_must_be_mount, root_dev)
    state = read_state(config.state_dir)
    recorded = state.get("destination_id")
    actions = []

    source_marker = read_marker(config.source)
    if source_marker is not None and source_marker.role != SOURCE:
        raise RefusedError(
            "the drive at %s is marked as the mirror's %s, not its source: are the drives "
            "mounted the wrong way round?" % (config.source, source_marker.role)
        )
    dest_marker = read_marker(config.destination)
    if dest_marker is not None and dest_marker.role != DESTINATION:
        raise RefusedError(
            "the drive at %s is marked as the mirror's %s, not its destination: are the drives "
            "mounted the wrong way round?" % (config.destination, dest_marker.role)
        )
    if recorded and not new_destination:
        if dest_marker is None:
            raise RefusedError(
                "the mirror drive at %s has no marker, but the mirror was set up with drive %s. "
                "If this is a new mirror drive, run 'linkdest-server mirror setup "
                "--new-destination' once." % (config.destination, recorded)
            )
        if dest_marker.id != recorded:
            raise RefusedError(
                "the drive at %s is %s, not the mirror drive %s that was set up: a different "
                "disk is plugged in. If it replaces the old one on purpose, run "
                "'linkdest-server mirror setup --new-destination' once."
                % (config.destination, dest_marker.id, recorded)
            )

    if source_marker is None:
        source_marker = Marker(SOURCE, new_id())
        actions.append("wrote the source marker %s" % marker_path(config.source))
        if not dry_run:
            write_marker(config.source, SOURCE, source_marker.id, now)
    if dest_marker is None:
        dest_marker = Marker(DESTINATION, new_id())
        actions.append("wrote the destination marker %s" % marker_path(config.destination))
        if not dry_run:
            write_marker(config.destination, DESTINATION, dest_marker.id, now)
    if recorded != dest_marker.id:
        actions.append("recorded the mirror drive's identity %s" % dest_marker.id)
    if state.get("source_id") != source_marker.id:
        actions.append("recorded the source drive's identity %s" % source_marker.id)
    if actions and not dry_run:
        state.update(destination_id=dest_marker.id, source_id=source_marker.id)
        write_state(config.state_dir, state)
    return SetupResult(source_marker.id, dest_marker.id, actions)


# --- areas and plans -----------------------------------------------------------


def list_areas(root: str) -> list[str]:
    """Client areas directly under ``root``: real directories named like clients."""
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    return sorted(
        e.name for e in entries if AREA_RE.match(e.name) and e.is_dir(follow_symlinks=False)
    )


def _is_real_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def finished_names(area: str) -> list[str]:
    """Names of the finished snapshots of ``area``, oldest first; [] without one."""
    if not _is_real_dir(area):
        return []
    return [s.name for s in snap.list_snapshots(area)]


def removal_refusal(
    mirror_names: list[str], source_names: list[str], max_removed_percent: int
) -> str | None:
    """Why the snapshots the source lost must stay on the mirror, or None.

    The guard: a wiped or wrong source must not wipe the mirror. Removal is
    refused when the source holds none of the mirror's snapshots (empty,
    vanished or replaced area), or when it holds far fewer snapshots than the
    mirror: the count fell by more than ``max_removed_percent`` of the mirror's
    count since the last mirror. Thinning removes old snapshots while new ones
    arrive, so its net loss stays small.
    """
    gone = set(mirror_names) - set(source_names)
    if not gone:
        return None
    if not set(mirror_names) & set(source_names):
        return "the source holds none of the mirror's %d snapshots" % len(mirror_names)
    loss = len(mirror_names) - len(source_names)
    if loss > 0 and loss * 100 > max_removed_percent * len(mirror_names):
        return "the source holds %d snapshots where the mirror holds %d (%d%% fewer, over %d%%)" % (
            len(source_names),
            len(mirror_names),
            loss * 100 // len(mirror_names),
            max_removed_percent,
        )
    return None


def link_dests_for(name: str, mirror_names: list[str]) -> list[str]:
    """Snapshots on the mirror a new copy of ``name`` links against.

    The nearest older one (normally the previous snapshot, which shares most
    files) and, when copying out of order, the nearest newer one.
    """
    key = snap.stamp_of(name)
    older = [n for n in mirror_names if snap.stamp_of(n) < key]
    newer = [n for n in mirror_names if snap.stamp_of(n) > key]
    return ([older[-1]] if older else []) + ([newer[0]] if newer else [])


@dataclass
class AreaPlan:
    area: str
    to_copy: list[str]
    to_remove: list[str]
    withheld: list[str]  # gone from the source, kept on the mirror by the guard
    refusal: str | None
    current: str | None


def plan_area(
    source_area: str, dest_area: str, max_removed_percent: int, allow_removals: bool = False
) -> AreaPlan:
    """What mirroring one area does; reads both sides, changes nothing."""
    source_names = finished_names(source_area)
    mirror_names = finished_names(dest_area)
    on_mirror = set(mirror_names)
    to_copy = [n for n in source_names if n not in on_mirror]
    gone = [n for n in mirror_names if n not in set(source_names)]
    refusal = None
    if gone and not allow_removals:
        refusal = removal_refusal(mirror_names, source_names, max_removed_percent)
    current = None
    if source_names:
        found = snap.current_snapshot(source_area)
        current = found.name if found is not None else None
    return AreaPlan(
        area=os.path.basename(source_area),
        to_copy=to_copy,
        to_remove=[] if refusal else gone,
        withheld=gone if refusal else [],
        refusal=refusal,
        current=current,
    )


# --- copying ------------------------------------------------------------------


def rsync_argv(config: Config, source_dir: str, dest_name: str, link_dests: list[str]) -> list[str]:
    """The rsync command that copies one snapshot; run from inside the mirror area.

    -a keeps times, modes, owners (numeric: the mirror may be read on another
    machine) and symlinks as symlinks; -H keeps hard links inside the snapshot;
    -XX keeps every xattr including rsync's own user.rsync.%stat, where the
    server's --fake-super keeps the laptop's owners and modes (a single -X
    drops those). Nothing is followed: no -L, -K or -k. Relative --link-dest
    names keep the per-file path resolution short. --ignore-existing: what
    prelink() already hard-linked into the fresh directory is never touched
    (not even its attributes, which the finished snapshots share).
    """
    argv = [config.rsync, "-aHXX", "--numeric-ids", "--ignore-existing", "--stats"]
    if config.bwlimit:
        argv.append("--bwlimit=%d" % config.bwlimit)
    argv += ["--link-dest=../%s" % name for name in link_dests[:MAX_LINK_DESTS]]
    return argv + ["--", source_dir.rstrip("/") + "/", dest_name + "/"]


_STATS_FILES_RE = re.compile(r"^Number of regular files transferred:\s*([\d,.]+)", re.M)
_STATS_BYTES_RE = re.compile(r"^Total transferred file size:\s*([\d,.]+)", re.M)


def parse_rsync_stats(text: str) -> tuple[int, int]:
    """(files, bytes) rsync --stats says it transferred; (0, 0) if it says nothing."""

    def number(regex) -> int:
        found = regex.search(text)
        return int(re.sub(r"[,.]", "", found.group(1))) if found else 0

    return number(_STATS_FILES_RE), number(_STATS_BYTES_RE)


def _discard(area: str, name: str) -> None:
    """Remove ``area/name`` crash-safely, without following links inside it."""
    trash = snap.TRASH_PREFIX + name
    if os.path.lexists(os.path.join(area, trash)):
        snap.finish_deletions(area)
    snap.rename_noreplace(os.path.join(area, name), os.path.join(area, trash))
    snap.finish_deletions(area)


def tidy_mirror_area(dest_area: str, wanted: set[str]) -> None:
    """Finish crashed deletions; keep what interrupted copies left for resuming.

    A leftover ``.mirroring-NAME`` becomes ``.mirror-resume-NAME``, a
    --link-dest of the next copy of NAME (never written into: its files are
    hard links to finished snapshots). Leftovers of snapshots no longer
    wanted are removed.
    """
    snap.finish_deletions(dest_area)
    for entry in sorted(os.listdir(dest_area)):
        path = os.path.join(dest_area, entry)
        if not _is_real_dir(path):
            continue
        if entry.startswith(COPY_PREFIX):
            name = entry[len(COPY_PREFIX) :]
            resume = RESUME_PREFIX + name
            if name not in wanted:
                _discard(dest_area, entry)
                continue
            if _is_real_dir(os.path.join(dest_area, resume)):
                _discard(dest_area, resume)
            snap.rename_noreplace(path, os.path.join(dest_area, resume))
        elif entry.startswith(RESUME_PREFIX) and entry[len(RESUME_PREFIX) :] not in wanted:
            _discard(dest_area, entry)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Deeper directories are left to rsync (and keep the open descriptors bounded).
PRELINK_MAX_DEPTH = 100


def _open_dir(name: str, dir_fd: int | None) -> int | None:
    """A directory opened without following a symlink; None if it is not one."""
    if dir_fd is None:
        return None
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None


def _same_file(mirrored: os.stat_result, source: os.stat_result) -> bool:
    return stat.S_ISREG(mirrored.st_mode) and (
        mirrored.st_size,
        int(mirrored.st_mtime),
        mirrored.st_mode,
        mirrored.st_uid,
        mirrored.st_gid,
    ) == (source.st_size, int(source.st_mtime), source.st_mode, source.st_uid, source.st_gid)


def prelink(new: str, previous: str, mirrored_previous: str, dest: str) -> int:
    """Hard-link into ``dest`` each file the source proves unchanged; return how many.

    A file of the new snapshot ``new`` that is the very same inode as the file
    at its path in ``previous`` (the server linked it with --link-dest, so
    data, owner, mode, times and xattrs are the same) is linked to the copy of
    that file in ``mirrored_previous`` once that copy's size, mtime, mode and
    owner match. Every other name of the same source inode in ``new`` gets the
    same link, so hard links inside the snapshot stay whole. Directories are
    created empty; rsync then fills in what is left and sets their attributes.

    This is what rsync --link-dest would conclude, for two lstat calls per file
    instead of rsync 3.5's component-by-component lookup in the link-dest tree.
    Directories are opened with O_NOFOLLOW relative to their parent: no
    symlink on either drive is ever followed. A link that fails (a file
    already at the file system's link limit) is left to rsync.
    """
    linked_at: dict[int, str] = {}  # source inode -> its first linked path in dest
    waiting: dict[int, list[str]] = {}  # source inode -> paths seen before it was linked
    count = 0
    fds: list = []

    def link(src: str, dst: str, src_fd: int, dst_fd: int) -> bool:
        nonlocal count
        try:
            os.link(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
        except OSError:
            return False
        count += 1
        return True

    def unchanged(name: str, now: os.stat_result, prev_fd, mirror_fd) -> bool:
        if prev_fd is None or mirror_fd is None:
            return False
        try:
            before = os.lstat(name, dir_fd=prev_fd)
            same = (before.st_ino, before.st_dev) == (now.st_ino, now.st_dev)
            return same and _same_file(os.lstat(name, dir_fd=mirror_fd), before)
        except OSError:
            return False

    def walk(rel: str, depth: int, new_fd: int, prev_fd, mirror_fd, dest_fd: int) -> None:
        with os.scandir(new_fd) as found:
            entries = sorted(found, key=lambda e: e.name)
        for entry in entries:
            path = os.path.join(rel, entry.name) if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                os.mkdir(entry.name, 0o700, dir_fd=dest_fd)
                if depth >= PRELINK_MAX_DEPTH:
                    continue
                sub = [_open_dir(entry.name, fd) for fd in (new_fd, prev_fd, mirror_fd, dest_fd)]
                try:
                    if sub[0] is not None and sub[3] is not None:
                        walk(path, depth + 1, *sub)
                finally:
                    for fd in sub:
                        if fd is not None:
                            os.close(fd)
            elif entry.is_file(follow_symlinks=False):
                # st_ino, not the directory entry's d_ino, which some file
                # systems (overlayfs) number differently.
                now = entry.stat(follow_symlinks=False)
                ino = now.st_ino
                if ino in linked_at:
                    link(linked_at[ino], path, dest_root, dest_root)
                elif unchanged(entry.name, now, prev_fd, mirror_fd) and link(
                    entry.name, entry.name, mirror_fd, dest_fd
                ):
                    linked_at[ino] = path
                    for other in waiting.pop(ino, []):
                        link(path, other, dest_root, dest_root)
                else:
                    waiting.setdefault(ino, []).append(path)
            # Symlinks, devices and fifos: rsync makes them.

    try:
        for top in (new, previous, mirrored_previous, dest):
            fds.append(os.open(top, _DIR_FLAGS))
        dest_root = fds[3]
        walk("", 0, *fds)
    finally:
        for fd in fds:
            os.close(fd)
    return count


def prelink_base(name: str, source_names: list[str], mirror_names: list[str]) -> str | None:
    """The snapshot to pre-link against: the nearest older one on both drives."""
    key = snap.stamp_of(name)
    both = set(source_names) & set(mirror_names)
    older = [n for n in both if snap.stamp_of(n) < key]
    return max(older, key=snap.stamp_of) if older else None


@dataclass
class CopyResult:
    name: str
    ok: bool
    files: int = 0
    bytes: int = 0
    message: str = ""
    # Files left out because they fail the snapshot's manifest (damaged on
    # the source drive): never copied over a good drive.
    withheld: list[str] = field(default_factory=list)


def damaged_new_files(source_root: str, area: str, name: str, copy_dir: str) -> list[str]:
    """Files of snapshot ``name`` the copy would read that fail its manifest.

    Every file prelink() has not already linked into ``copy_dir`` from the
    mirror's own copy is read (a file the mirror lacks, even one the source
    shares with the snapshot before, is read: it may be one withheld last
    time). With no trusted manifest there is nothing to check against:
    nothing is withheld (verify reports the missing manifest).
    """
    try:
        manifest = mf.load(source_root, area, name)
    except mf.ManifestError:
        return []
    snapshot_dir = os.path.join(source_root, area, name)
    damaged = []
    for entry in manifest.entries:
        if os.path.lexists(os.path.join(copy_dir, entry.path)):
            continue  # prelinked: the mirror's own copy, nothing is read
        path = os.path.join(snapshot_dir, entry.path)
        try:
            st = os.lstat(path)
        except OSError:
            continue  # rsync reports what it cannot read
        try:
            # Opened without following symlinks in any parent: the snapshot's
            # directories are the laptop account's.
            good = _digest_in(snapshot_dir, entry.path) == entry.sha256
        except (OSError, snap.SnapshotError):
            good = False
        if not good or (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
            damaged.append(entry.path)
    return damaged


def _digest_in(top: str, relpath: str) -> str:
    parts = snap.split_relpath(relpath)
    fd = mf.open_dir_at(top)
    try:
        for part in parts[:-1]:
            child = mf.open_dir_at(part, fd)
            os.close(fd)
            fd = child
        return mf.digest_at(parts[-1], fd)
    finally:
        os.close(fd)


def exclude_pattern(relpath: str) -> str:
    """An rsync filter pattern that matches exactly this one path.

    rsync reads a backslash as an escape only in a pattern with a wildcard,
    so a name with ``*``, ``?`` or ``[`` gets every special character escaped
    and any other name is used as it is; the leading ``/`` anchors it.
    """
    if any(char in relpath for char in "*?["):
        relpath = "".join("\\" + c if c in "*?[\\" else c for c in relpath)
    return "/" + relpath


def can_send(config: Config, source_area: str, name: str) -> bool:
    """True when ``name`` can go by ``btrfs send``: a read-only subvolume on a
    btrfs source, and a btrfs destination."""
    if not snap.is_subvolume_snapshot(source_area, name):
        return False
    try:
        if not subvolumes.is_readonly(os.path.join(source_area, name)):
            return False
        return subvolumes.is_btrfs(config.destination)
    except (OSError, subvolumes.SubvolumeError):
        return False


def send_parent(name: str, source_area: str, dest_area: str) -> str | None:
    """The newest snapshot before ``name`` that both drives hold as subvolumes:
    ``btrfs send -p`` then sends only the blocks that differ from it."""
    for candidate in reversed([n for n in finished_names(dest_area) if n < name]):
        if snap.is_subvolume_snapshot(dest_area, candidate) and snap.is_subvolume_snapshot(
            source_area, candidate
        ):
            return candidate
    return None


def is_partial_receive(dest_area: str, name: str) -> bool:
    """A writable subvolume under a snapshot's name on the mirror: what an
    interrupted ``btrfs receive`` leaves (it sets read-only only at the end)."""
    if not snap.is_subvolume_snapshot(dest_area, name):
        return False
    return not subvolumes.is_readonly(os.path.join(dest_area, name))


def discard_partial_receives(dest_area: str) -> list[str]:
    """Remove what interrupted receives left; return their names."""
    gone = []
    for name in finished_names(dest_area):
        if is_partial_receive(dest_area, name):
            snap.delete_snapshot(dest_area, name)
            gone.append(name)
    return gone


def send_snapshot(
    config: Config, source_area: str, dest_area: str, name: str, parent: str | None
) -> CopyResult:
    """Copy one read-only subvolume with ``btrfs send | btrfs receive``.

    ``btrfs receive`` names the subvolume after the source's and a read-only
    subvolume cannot move to another directory, so it is received under its
    final name; it is complete only once read-only, which the receiver sets
    last. What a failed or interrupted receive leaves is writable and removed
    (here, or by the next run before it plans).
    """
    btrfs = subvolumes.btrfs_command()
    send_argv = [btrfs, "send", "-q"]
    if parent is not None:
        send_argv += ["-p", os.path.join(source_area, parent)]
    send_argv.append(os.path.join(source_area, name))
    # Errors go to files, not pipes: a full stderr pipe would stall either side.
    with tempfile.TemporaryFile() as send_errors, tempfile.TemporaryFile() as receive_errors:
        sender = subprocess.Popen(send_argv, stdout=subprocess.PIPE, stderr=send_errors)
        receiver = subprocess.Popen(
            [btrfs, "receive", "-q", dest_area], stdin=subprocess.PIPE, stderr=receive_errors
        )
        sent = 0
        try:
            while True:
                chunk = sender.stdout.read(1 << 20)
                if not chunk:
                    break
                sent += len(chunk)
                receiver.stdin.write(chunk)
            receiver.stdin.close()
        except BrokenPipeError:
            # The receiver gave up: stop the sender too, or it blocks forever
            # on a pipe nobody reads (with the area's lock held).
            sender.kill()
        finally:
            sender.stdout.close()
            with contextlib.suppress(BrokenPipeError):
                receiver.stdin.close()
        codes = (sender.wait(), receiver.wait())
        send_errors.seek(0)
        receive_errors.seek(0)
        errors = (send_errors.read() + receive_errors.read()).decode(errors="replace")
    complete = snap.is_subvolume_snapshot(dest_area, name) and not is_partial_receive(
        dest_area, name
    )
    if codes != (0, 0) or not complete:
        if is_partial_receive(dest_area, name):
            snap.delete_snapshot(dest_area, name)
        tail = " | ".join(errors.strip().splitlines()[-STDERR_TAIL_LINES:])
        return CopyResult(name, False, 0, sent, "btrfs send/receive exit %s: %s" % (codes, tail))
    snap.sync_filesystem(dest_area)
    return CopyResult(name, True, 0, sent)


def copy_snapshot(config: Config, source_area: str, dest_area: str, name: str) -> CopyResult:
    """Copy one finished snapshot; it gets its final name only when complete.

    Between two btrfs drives a read-only snapshot goes by ``btrfs send``
    (incremental against the newest snapshot both hold); otherwise by rsync.
    """
    if can_send(config, source_area, name):
        return send_snapshot(
            config, source_area, dest_area, name, send_parent(name, source_area, dest_area)
        )
    temp = COPY_PREFIX + name
    resume = RESUME_PREFIX + name
    link_dests = link_dests_for(name, finished_names(dest_area))
    if _is_real_dir(os.path.join(dest_area, resume)):
        link_dests.append(resume)
    # A fresh directory: nothing is ever written into one that holds hard
    # links to history except new names (prelink, then rsync --ignore-existing).
    os.mkdir(os.path.join(dest_area, temp), 0o700)
    base = prelink_base(name, finished_names(source_area), finished_names(dest_area))
    if base is not None:
        prelink(
            os.path.join(source_area, name),
            os.path.join(source_area, base),
            os.path.join(dest_area, base),
            os.path.join(dest_area, temp),
        )
    withheld = damaged_new_files(
        os.path.dirname(source_area),
        os.path.basename(source_area),
        name,
        os.path.join(dest_area, temp),
    )
    argv = rsync_argv(config, os.path.join(source_area, name), temp, link_dests)
    with tempfile.NamedTemporaryFile(prefix="linkdest-withheld-") as excludes:
        if withheld:
            excludes.write(b"".join(os.fsencode(exclude_pattern(p)) + b"\0" for p in withheld))
            excludes.flush()
            argv[1:1] = ["--from0", "--exclude-from=%s" % excludes.name]
        proc = subprocess.run(
            argv, cwd=dest_area, capture_output=True, text=True, errors="replace", check=False
        )
    files, size = parse_rsync_stats(proc.stdout)
    if proc.returncode != 0:
        # Finished snapshots never change, and the area lock keeps prune out:
        # any non-zero exit, even 24 (vanished files), is an incomplete copy.
        meaning = snap.RSYNC_EXIT_CODES.get(proc.returncode, ("failed", "rsync failed"))[1]
        tail = " | ".join(proc.stderr.strip().splitlines()[-STDERR_TAIL_LINES:])
        return CopyResult(
            name, False, files, size, "rsync exit %d (%s): %s" % (proc.returncode, meaning, tail)
        )
    snap.sync_filesystem(dest_area)
    snap.rename_noreplace(os.path.join(dest_area, temp), os.path.join(dest_area, name))
    if _is_real_dir(os.path.join(dest_area, resume)):
        _discard(dest_area, resume)
    return CopyResult(name, True, files, size, withheld=withheld)


def copy_manifests(config: Config, area: str, names: list[str]) -> int:
    """Give the mirror the manifests of its snapshots (verify checks it against
    them too, and repairs from it); drop those of snapshots it no longer has.

    Only a manifest the mirror lacks is copied, and only a trusted one.
    """
    copied = 0
    for name in names:
        if mf.has_manifest(config.destination, area, name):
            continue
        try:
            manifest = mf.load(config.source, area, name)
        except mf.ManifestError:
            continue
        mf.write_manifest(config.destination, manifest)
        copied += 1
    mf.remove_orphans(
        config.destination, area, set(finished_names(os.path.join(config.destination, area)))
    )
    return copied


def _ensure_area(source_area: str, dest_area: str) -> None:
    """Create the mirror area like the source's: same owner, group and mode."""
    st = os.lstat(source_area)
    if _is_real_dir(dest_area):
        return
    if os.path.lexists(dest_area):
        raise snap.LayoutError("%s exists and is not a directory" % dest_area)
    os.mkdir(dest_area, 0o700)
    os.chown(dest_area, st.st_uid, st.st_gid, follow_symlinks=False)
    os.chmod(dest_area, stat.S_IMODE(st.st_mode))


@contextlib.contextmanager
def source_area_lock(area: str, wait: float, dry_run: bool = False):
    """Hold the source area's lock, waiting up to ``wait`` seconds.

    A dry run creates no lock file: without one, it reads unlocked.
    """
    if dry_run and not os.path.lexists(os.path.join(area, snap.LOCK_FILE)):
        yield None
        return
    # area_lock() creates a missing lock file owned like the area, so the
    # laptop's own account (which runs the gate) can still lock it.
    try:
        with snap.area_lock(area, wait=wait) as fd:
            yield fd
    except snap.LockBusyError as exc:
        raise BusyError(str(exc)) from None


def _copy_journal(config: Config, source_area: str, dest_area: str) -> None:
    """The area's journal (which snapshots were partial) goes along, whole."""
    path = os.path.join(source_area, JOURNAL)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    subprocess.run(
        [config.rsync, "-aXX", "--numeric-ids", "--", path, os.path.join(dest_area, JOURNAL)],
        capture_output=True,
        check=False,
    )


# --- a run --------------------------------------------------------------------


@dataclass
class RunResult:
    areas: int = 0
    copied: int = 0
    removed: int = 0
    withheld: int = 0
    failed: int = 0
    busy: int = 0
    damaged: int = 0  # files withheld because they fail their manifest
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    recovered: bool = False  # the first success after failed or refused runs
    messages: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def code(self) -> int:
        if self.failed or self.damaged:
            return EXIT_FAILED
        if self.withheld:
            return EXIT_GUARD
        if self.busy:
            return EXIT_BUSY
        return EXIT_OK

    @property
    def outcome(self) -> str:
        return {
            EXIT_OK: "ok",
            EXIT_FAILED: "failed",
            EXIT_GUARD: "removals-refused",
            EXIT_BUSY: "busy",
        }[self.code]


def format_summary(result: RunResult) -> str:
    """The one line a run logs; key=value so scripts and people can read it."""
    return (
        "mirror %s%s: areas=%d copied=%d removed=%d withheld=%d failed=%d busy=%d "
        "damaged=%d files=%d bytes=%d seconds=%.1f"
        % (
            result.outcome,
            " (dry run)" if result.dry_run else "",
            result.areas,
            result.copied,
            result.removed,
            result.withheld,
            result.failed,
            result.busy,
            result.damaged,
            result.files,
            result.bytes,
            result.seconds,
        )
    )


def preflight(config: Config, root_dev: int | None = None) -> dict:
    """Every check that must pass before the mirror writes anything; the state."""
    check_drive(config.source, SOURCE, config.source_must_be_mount, root_dev)
    check_drive(config.destination, DESTINATION, config.destination_must_be_mount, root_dev)
    state = read_state(config.state_dir)
    source_marker = read_marker(config.source)
    if source_marker is None or source_marker.role != SOURCE:
        raise RefusedError(
            "%s carries no source marker (%s): not the backup drive, or never set up "
            "(rerun site.yml)" % (config.source, MARKER_NAME)
        )
    dest_marker = read_marker(config.destination)
    if dest_marker is None or dest_marker.role != DESTINATION:
        raise RefusedError(
            "%s carries no mirror drive marker (%s): not the mirror drive, or never set up "
            "(rerun site.yml)" % (config.destination, MARKER_NAME)
        )
    recorded = state.get("destination_id")
    if not recorded:
        raise RefusedError(
            "no mirror drive identity recorded in %s; run 'linkdest-server mirror setup'"
            % os.path.join(config.state_dir, STATE_FILE)
        )
    if dest_marker.id != recorded:
        raise RefusedError(
            "the drive at %s is %s, not the mirror drive %s that was set up: a different disk "
            "is plugged in (if it replaces the old one, run 'linkdest-server mirror setup "
            "--new-destination')" % (config.destination, dest_marker.id, recorded)
        )
    if not any(finished_names(os.path.join(config.source, a)) for a in list_areas(config.source)):
        raise RefusedError(
            "%s holds no finished snapshot in any area: an empty or wrong drive; refusing"
            % config.source
        )
    return state


def _no_log(message: str, priority: int = syslog.LOG_INFO) -> None:
    """The default logger of the library functions: says nothing."""


def mirror_area(
    config: Config,
    area: str,
    result: RunResult,
    dry_run: bool = False,
    allow_removals: bool = False,
    log=_no_log,
) -> None:
    """Mirror one client area; record what happened in ``result``.

    Every step that reads the source runs under the source area's lock; the
    lock is let go between two snapshot copies. The plan, and with it the
    deletion guard's verdict, is made first, against the mirror as the last
    run left it.
    """
    source_area = os.path.join(config.source, area)
    dest_area = os.path.join(config.destination, area)
    source_exists = _is_real_dir(source_area)

    def locked():
        if not source_exists:
            return contextlib.nullcontext()
        return source_area_lock(source_area, config.lock_timeout, dry_run)

    with locked():
        # Under the lock: verify's repair of a snapshot on the mirror drive
        # (which holds it too) unseals a subvolume for a moment.
        if not dry_run and _is_real_dir(dest_area):
            for name in discard_partial_receives(dest_area):
                log("removed %s/%s (an interrupted btrfs receive)" % (area, name))
        plan = plan_area(source_area, dest_area, config.max_removed_percent, allow_removals)
    if dry_run:
        result.copied += len(plan.to_copy)
        result.removed += len(plan.to_remove)
        result.messages += ["would copy %s/%s" % (area, name) for name in plan.to_copy]
        result.messages += ["would remove %s/%s" % (area, name) for name in plan.to_remove]
        if plan.current and plan.current != snap.read_current(dest_area):
            result.messages.append("would point %s/current at %s" % (area, plan.current))
        _note_refusal(result, area, plan, log)
        return

    if plan.to_copy:
        _ensure_area(source_area, dest_area)
    if _is_real_dir(dest_area):
        tidy_mirror_area(dest_area, set(plan.to_copy))
    for index, name in enumerate(plan.to_copy):
        if index:
            time.sleep(LOCK_PAUSE)
        with locked():
            if not _is_real_dir(os.path.join(source_area, name)):
                continue  # pruned meanwhile: nothing to copy
            copied = copy_snapshot(config, source_area, dest_area, name)
        result.files += copied.files
        result.bytes += copied.bytes
        if not copied.ok:
            result.failed += 1
            result.problems.append("copying %s/%s failed: %s" % (area, name, copied.message))
            log(result.problems[-1], syslog.LOG_ERR)
            # Later snapshots would link against the wrong neighbour: next run.
            break
        result.copied += 1
        log("copied %s/%s (%d files, %d bytes sent)" % (area, name, copied.files, copied.bytes))
        if copied.withheld:
            result.damaged += len(copied.withheld)
            result.problems.append(
                "copied %s/%s without %d file(s) that fail its manifest on the backup drive"
                " (damaged; run linkdest-server verify): %s"
                % (area, name, len(copied.withheld), ", ".join(copied.withheld[:10]))
            )
            log(result.problems[-1], syslog.LOG_ERR)

    if not _is_real_dir(dest_area):
        return
    with locked():
        # Read the source again: it may have changed while the lock was free.
        # The guard's verdict stays the one taken before the copies, which
        # compared the source with the mirror as the last run left it.
        source_names = set(finished_names(source_area))
        on_mirror = set(finished_names(dest_area))
        current = None
        if source_names:
            found = snap.current_snapshot(source_area)
            current = found.name if found is not None else None
        # current first, so it never names a snapshot being removed.
        if current in on_mirror and snap.read_current(dest_area) != current:
            snap.swap_current(dest_area, current)
        for name in plan.to_remove:
            if name in on_mirror and name not in source_names:
                snap.delete_snapshot(dest_area, name)
                result.removed += 1
                log("removed %s/%s (no longer on the source)" % (area, name))
        link = os.path.join(dest_area, snap.CURRENT_LINK)
        if os.path.islink(link) and snap.read_current(dest_area) is None:
            os.unlink(link)  # every snapshot it could name is gone
        if source_exists:
            _copy_journal(config, source_area, dest_area)
            copy_manifests(config, area, sorted(on_mirror - set(plan.to_remove)))
    _note_refusal(result, area, plan, log)


def _note_refusal(result: RunResult, area: str, plan: AreaPlan, log) -> None:
    if not plan.refusal:
        return
    kept = len(plan.withheld)
    result.withheld += kept
    result.problems.append(
        "area %s: kept %d snapshots on the mirror that the source no longer has, because %s; "
        "if they were removed on purpose, run 'linkdest-server mirror --allow-removals' once"
        % (area, kept, plan.refusal)
    )
    log(result.problems[-1], syslog.LOG_ERR)


def _record_run(state_dir: str, state: dict, when: datetime, outcome: str, summary: str) -> bool:
    """Record a run in the state; True when it ends a series of failed runs."""
    stamp = when.astimezone(timezone.utc).isoformat(timespec="seconds")
    recovered = outcome == "ok" and bool(state.get("failing"))
    state["last_run"] = {"time": stamp, "outcome": outcome, "summary": summary}
    state["failing"] = outcome != "ok"
    if outcome == "ok":
        state["last_success"] = stamp
        _write_atomic(os.path.join(state_dir, LAST_SUCCESS_FILE), stamp + "\n")
    write_state(state_dir, state)
    return recovered


def run(
    config: Config,
    dry_run: bool = False,
    allow_removals: bool = False,
    now: datetime | None = None,
    root_dev: int | None = None,
    log=_no_log,
) -> RunResult:
    """One mirror run. Raises MirrorError when a check refuses it before any change.

    The state directory (on the system disk, not on a drive) records every
    run but a dry one, refused runs included.
    """
    started = time.monotonic()
    when = now or datetime.now(timezone.utc)
    with mirror_lock(config.state_dir):
        try:
            state = preflight(config, root_dev)
        except MirrorError as exc:
            if not dry_run:
                with contextlib.suppress(MirrorError, OSError):
                    state = read_state(config.state_dir)
                    _record_run(config.state_dir, state, when, "refused", str(exc))
            raise
        result = RunResult(dry_run=dry_run)
        areas = sorted(set(list_areas(config.source)) | set(list_areas(config.destination)))
        for area in areas:
            source_area = os.path.join(config.source, area)
            dest_area = os.path.join(config.destination, area)
            if not finished_names(source_area) and not finished_names(dest_area):
                continue
            result.areas += 1
            try:
                mirror_area(config, area, result, dry_run, allow_removals, log)
            except BusyError as exc:
                result.busy += 1
                result.problems.append("area %s skipped: %s" % (area, exc))
                log(result.problems[-1], syslog.LOG_WARNING)
            except (snap.SnapshotError, OSError) as exc:
                result.failed += 1
                result.problems.append("area %s failed: %s" % (area, exc))
                log(result.problems[-1], syslog.LOG_ERR)
        result.seconds = time.monotonic() - started
        if not dry_run:
            result.recovered = _record_run(
                config.state_dir, state, when, result.outcome, format_summary(result)
            )
        return result


# --- logging and alerts -------------------------------------------------------


class Logger:
    """Lines to syslog (daemon facility) and the log file; never raises."""

    def __init__(self, log_file: str | None, quiet: bool = False):
        self.log_file = log_file
        self.quiet = quiet
        syslog.openlog("linkdest-mirror", syslog.LOG_PID, syslog.LOG_DAEMON)

    def __call__(self, message: str, priority: int = syslog.LOG_INFO) -> None:
        with contextlib.suppress(OSError):
            syslog.syslog(priority, message)
        if self.log_file:
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            try:
                with open(self.log_file, "a", encoding="utf-8") as handle:
                    handle.write("%s linkdest-mirror[%d]: %s\n" % (stamp, os.getpid(), message))
            except OSError as exc:
                sys.stderr.write("linkdest-mirror: cannot write %s: %s\n" % (self.log_file, exc))
        if priority <= syslog.LOG_WARNING:
            sys.stderr.write("linkdest-mirror: %s\n" % message)
        elif not self.quiet:
            sys.stdout.write(message + "\n")


def run_alert(command: str, event: str, message: str, log) -> None:
    """Run the alert hook as the laptops do: ``/bin/sh -c COMMAND`` with the
    event (failure or recovery) as $1 and the message as $2, also in
    $LINKDEST_EVENT and $LINKDEST_MESSAGE, and the message on stdin (for
    mail). Its failure is logged, never raised."""
    if not command:
        return
    log("alert (%s): %s" % (event, message))
    env = dict(os.environ, LINKDEST_EVENT=event, LINKDEST_MESSAGE=message)
    try:
        proc = subprocess.run(
            ["/bin/sh", "-c", command, "linkdest-alert", event, message],
            input=message + "\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=ALERT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log("the alert command failed: %s" % exc, syslog.LOG_ERR)
        return
    if proc.returncode != 0:
        log(
            "the alert command exited %d: %s" % (proc.returncode, proc.stderr.strip()[-500:]),
            syslog.LOG_ERR,
        )


# --- the command ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linkdest-server mirror",
        description="Mirror the backup drive to the second drive, snapshot by snapshot.",
    )
    parser.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=["run", "setup", "status"],
        help="run (default): one mirror run; setup: write the drive markers and record the "
        "mirror drive's identity; status: print the mirror's state",
    )
    parser.add_argument(
        "--config", default=CONFIG_PATH, help="configuration file (default %(default)s)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check and print what would happen; change nothing"
    )
    parser.add_argument(
        "--allow-removals",
        action="store_true",
        help="run: remove what the source no longer has even beyond the deletion guard (once)",
    )
    parser.add_argument(
        "--new-destination",
        action="store_true",
        help="setup: accept the drive now at the destination as the new mirror drive",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing unless it fails")
    return parser


def _cmd_setup(config: Config, args) -> int:
    with mirror_lock(config.state_dir):
        result = setup(
            config,
            datetime.now(timezone.utc),
            new_destination=args.new_destination,
            dry_run=args.dry_run,
        )
    if result.changed and not args.dry_run:
        Logger(config.log_file, quiet=True)("setup: " + "; ".join(result.actions))
    sys.stdout.write(
        json.dumps(
            {
                "changed": result.changed,
                "actions": result.actions,
                "source_id": result.source_id,
                "destination_id": result.destination_id,
            },
            sort_keys=True,
        )
        + "\n"
    )
    return EXIT_OK


def _cmd_status(config: Config) -> int:
    state = read_state(config.state_dir)
    state["source"] = config.source
    state["destination"] = config.destination
    sys.stdout.write(json.dumps(state, indent=2, sort_keys=True) + "\n")
    return EXIT_OK


def _cmd_run(config: Config, args) -> int:
    log = Logger(None if args.dry_run else config.log_file, quiet=args.quiet and not args.dry_run)
    try:
        result = run(config, dry_run=args.dry_run, allow_removals=args.allow_removals, log=log)
    except BusyError as exc:
        # The previous run is still copying: not a failure of this one.
        log("mirror skipped: %s" % exc, syslog.LOG_WARNING)
        return exc.code
    except MirrorError as exc:
        message = "mirror refused: %s" % exc
        log(message, syslog.LOG_ERR)
        if not args.dry_run:
            run_alert(config.alert_command, "failure", message, log)
        return exc.code
    for line in result.messages:
        log(line)
    summary = format_summary(result)
    if result.code == EXIT_OK:
        log(summary)
        if result.recovered:
            run_alert(config.alert_command, "recovery", "the mirror works again: " + summary, log)
        return EXIT_OK
    log(summary, syslog.LOG_ERR)
    if not args.dry_run:
        run_alert(
            config.alert_command, "failure", summary + ": " + " / ".join(result.problems), log
        )
    return result.code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.allow_removals and args.action != "run":
        sys.stderr.write("linkdest-mirror: --allow-removals only applies to a run\n")
        return EXIT_USAGE
    if args.new_destination and args.action != "setup":
        sys.stderr.write("linkdest-mirror: --new-destination only applies to setup\n")
        return EXIT_USAGE
    try:
        config = load_config(args.config)
        if args.action == "setup":
            return _cmd_setup(config, args)
        if args.action == "status":
            return _cmd_status(config)
        return _cmd_run(config, args)
    except MirrorError as exc:
        sys.stderr.write("linkdest-mirror: %s\n" % exc)
        return exc.code
    except (snap.SnapshotError, OSError) as exc:
        sys.stderr.write("linkdest-mirror: %s\n" % exc)
        return EXIT_FAILED
