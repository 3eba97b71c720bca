# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Retention for linkdest.backup: which snapshots a prune keeps (thinning), when
the backup drive is too full (space guard), and carrying a prune out.

The order is fixed (DESIGN.md, issue 4):

1. **Thinning**, a Time Machine-style policy (:class:`Policy`): everything of
   the last ``keep_all_hours``, the first snapshot of each UTC day for
   ``daily_days`` days, the first of each ISO week before that (for
   ``weekly_weeks`` weeks, 0 = no limit), nothing older than ``max_age_days``
   (0 = no limit).
2. **Space pruning**: while the drive has less free space or free inodes than
   the :class:`SpaceGuard` asks, the oldest kept snapshot goes, one at a time,
   measuring again after each, down to ``min_keep``. It never touches the
   last ``protect_days`` days of an area nor the snapshot just before them:
   a laptop that floods the drive (ransomware backing up encrypted files)
   cannot push out the history needed to undo the flood.
3. **Refusal**: below the guard's hard floor the gate refuses new transfers
   (server_cli.py), which the laptop logs and alerts on. A full drive costs
   new backups, never protected history.

Whatever the rules say, the newest finished snapshot and the one ``current``
names are never removed, at least ``min_keep`` finished snapshots stay, and
incomplete snapshots are neither counted nor removed. Every decision carries
the rule that made it, so a dry run explains itself.

Standard library only, like snapshots.py: linkdest-server imports this file on
the server, where Ansible is not installed. Nothing here takes a lock; the
callers hold the areas' locks around :func:`prune`.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import date, datetime, timedelta, timezone

from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap
from ansible_collections.linkdest.backup.plugins.module_utils import subvolumes

MIB = 1024 * 1024


class RetentionError(snap.SnapshotError):
    """A retention or space guard setting is invalid."""


class PruneError(snap.SnapshotError):
    """Removing a snapshot failed; ``report`` says what was removed before."""

    def __init__(self, message: str, report: PruneReport):
        super().__init__(message)
        self.report = report


# --- settings -------------------------------------------------------------------


def _settings(cls, data: Mapping | None, kinds: tuple[type, ...]):
    """Build a settings dataclass from a mapping; missing keys take the defaults."""
    data = dict(data or {})
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise RetentionError(
            "unknown %s setting(s): %s (known: %s)"
            % (cls.__name__, ", ".join(unknown), ", ".join(names))
        )
    for name, value in data.items():
        # bool is an int to Python; a "true" here is a mistake, not a number.
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise RetentionError("%s must be a number, got %r" % (name, value))
    return cls(**data)


@dataclass(frozen=True)
class Policy:
    """The thinning policy; the defaults are the backup_server role's defaults."""

    keep_all_hours: int = 24
    daily_days: int = 30
    weekly_weeks: int = 0  # 0: weekly snapshots are kept without limit
    max_age_days: int = 0  # 0: no maximum age
    min_keep: int = 3

    def __post_init__(self):
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise RetentionError("%s must be 0 or more" % f.name)
        if self.min_keep < 1:
            raise RetentionError("min_keep must be 1 or more: the newest snapshot always stays")
        if self.max_age_days and self.max_age_days * 24 < self.keep_all_hours:
            raise RetentionError(
                "max_age_days (%d) is shorter than keep_all_hours (%d h)"
                % (self.max_age_days, self.keep_all_hours)
            )

    @classmethod
    def from_mapping(cls, data: Mapping | None) -> Policy:
        return _settings(cls, data, (int,))


@dataclass(frozen=True)
class SpaceGuard:
    """Free space the drive must keep.

    ``min_free_*``: below any of these, prune removes the oldest snapshots.
    ``floor_free_*``: below any of these, the gate refuses a new transfer.
    Percent of the drive's size (or inodes); MiB are absolute. 0 turns one off.
    ``protect_days``: the space guard never removes a snapshot of the last
    this many days, nor the newest one before them; 0 lifts the protection.
    """

    min_free_percent: float = 10
    min_free_mib: int = 0
    min_free_inodes_percent: float = 5
    floor_free_percent: float = 2
    floor_free_mib: int = 0
    floor_free_inodes_percent: float = 1
    protect_days: int = 30

    def __post_init__(self):
        if self.protect_days != int(self.protect_days):
            raise RetentionError("protect_days must be a whole number of days")
        # JSON and Jinja may hand over 30.0 for 30.
        object.__setattr__(self, "protect_days", int(self.protect_days))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("percent") and not 0 <= value <= 100:
                raise RetentionError("%s must be a percentage from 0 to 100" % f.name)
            if value < 0:
                raise RetentionError("%s must be 0 or more" % f.name)
        for kind in ("percent", "mib", "inodes_percent"):
            floor, low = getattr(self, "floor_free_" + kind), getattr(self, "min_free_" + kind)
            if floor > low:
                # Transfers would stop before pruning starts: a drive stuck full.
                raise RetentionError(
                    "floor_free_%s (%s) is above min_free_%s (%s)" % (kind, floor, kind, low)
                )

    @classmethod
    def from_mapping(cls, data: Mapping | None) -> SpaceGuard:
        return _settings(cls, data, (int, float))


# --- measuring the drive ----------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Size and free room of a file system, as an unprivileged writer sees it."""

    total_bytes: int
    free_bytes: int
    total_inodes: int
    free_inodes: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 100.0

    @property
    def free_inodes_percent(self) -> float:
        return 100.0 * self.free_inodes / self.total_inodes if self.total_inodes else 100.0

    def freed(self, nbytes: int, inodes: int) -> Usage:
        """This usage after ``nbytes`` and ``inodes`` were freed (for dry runs)."""
        return replace(
            self,
            free_bytes=min(self.total_bytes, self.free_bytes + nbytes),
            free_inodes=min(self.total_inodes, self.free_inodes + inodes),
        )

    def describe(self) -> str:
        text = "%s free (%.1f%%)" % (format_bytes(self.free_bytes), self.free_percent)
        if self.total_inodes:
            text += ", %d inodes free (%.1f%%)" % (self.free_inodes, self.free_inodes_percent)
        return text

    def as_dict(self) -> dict:
        return dict(
            total_bytes=self.total_bytes,
            free_bytes=self.free_bytes,
            total_inodes=self.total_inodes,
            free_inodes=self.free_inodes,
        )


def measure(path: str, statvfs: Callable | None = None) -> Usage:
    """Measure the file system holding ``path`` (``statvfs`` is injectable).

    Free means available to an unprivileged writer (f_bavail, f_favail): the
    laptops' accounts write the snapshots. A file system that reports no
    inode count (btrfs) never falls short of inodes. On btrfs the free bytes
    are what btrfs itself estimates (statvfs counts unallocated space as if
    all of it could hold data), the lower of the two when they differ.
    """
    st = (statvfs or os.statvfs)(path)
    usage = _usage(st)
    if statvfs in (None, os.statvfs) and subvolumes.filesystem_type(path) == "btrfs":
        estimated = subvolumes.free_bytes(path)
        if estimated is not None and estimated < usage.free_bytes:
            usage = replace(usage, free_bytes=estimated)
    return usage


def _usage(st) -> Usage:
    return Usage(
        total_bytes=st.f_blocks * st.f_frsize,
        free_bytes=st.f_bavail * st.f_frsize,
        total_inodes=st.f_files,
        free_inodes=st.f_favail,
    )


def format_bytes(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return "%d bytes" % count if unit == "bytes" else "%.1f %s" % (value, unit)
        value /= 1024
    raise AssertionError("unreachable")


def _shortfall(usage: Usage, percent: float, mib: int, inodes_percent: float) -> str | None:
    need = max(usage.total_bytes * percent / 100.0, mib * MIB)
    if usage.free_bytes < need:
        wanted = []
        if percent:
            wanted.append("%g%%" % percent)
        if mib:
            wanted.append("%d MiB" % mib)
        return "%s free (%.1f%%) is below %s" % (
            format_bytes(usage.free_bytes),
            usage.free_percent,
            " and ".join(wanted),
        )
    if usage.total_inodes and usage.free_inodes < usage.total_inodes * inodes_percent / 100.0:
        return "%d inodes free (%.1f%%) is below %g%%" % (
            usage.free_inodes,
            usage.free_inodes_percent,
            inodes_percent,
        )
    return None


def prune_shortfall(usage: Usage, guard: SpaceGuard) -> str | None:
    """Why the space guard must prune now, or None when there is room."""
    return _shortfall(
        usage, guard.min_free_percent, guard.min_free_mib, guard.min_free_inodes_percent
    )


def floor_shortfall(usage: Usage, guard: SpaceGuard) -> str | None:
    """Why a new transfer must be refused, or None when it may start."""
    return _shortfall(
        usage, guard.floor_free_percent, guard.floor_free_mib, guard.floor_free_inodes_percent
    )


# --- thinning ---------------------------------------------------------------------

KEEP_RULES_NEVER_REMOVED = ("newest", "current")


@dataclass(frozen=True)
class Decision:
    """Keep or remove one finished snapshot, and the rule that decided."""

    name: str
    time: datetime
    keep: bool
    rule: str

    @property
    def action(self) -> str:
        return "keep" if self.keep else "remove"

    @property
    def text(self) -> str:
        return "%s: %s" % (self.action, self.rule)

    @property
    def protected(self) -> bool:
        """Never removed, not even by the space guard."""
        return self.keep and self.rule in KEEP_RULES_NEVER_REMOVED

    def as_dict(self) -> dict:
        return dict(name=self.name, time=self.time.isoformat(), action=self.action, rule=self.rule)


def _week_label(day: date) -> str:
    iso = day.isocalendar()
    return "%d-W%02d" % (iso[0], iso[1])


def plan_thinning(
    snapshots: Iterable[snap.Snapshot],
    now: datetime,
    policy: Policy,
    current: str | None = None,
) -> list[Decision]:
    """Decide, for each finished snapshot, keep or remove; oldest first.

    Pure: the same snapshots, ``now``, policy and ``current`` give the same
    decisions in any input order, and applying them leaves a set the policy
    keeps entirely. Incomplete snapshots in the input are ignored.

    A day (UTC date) or an ISO week is represented by its *oldest* snapshot
    (among those not past ``max_age_days``): it stays the representative as
    newer snapshots arrive, and a week's representative is the one of its
    first day, so what the weekly tier keeps is what the daily tier kept.
    """
    finished = sorted({s for s in snapshots if s.complete}, key=lambda s: (s.time, s.name))
    if not finished:
        return []
    now = now.astimezone(timezone.utc)
    newest = finished[-1].name
    keep_all = timedelta(hours=policy.keep_all_hours)
    max_age = timedelta(days=policy.max_age_days)
    today = now.date()
    this_monday = today - timedelta(days=today.weekday())

    def too_old(s: snap.Snapshot) -> bool:
        return bool(policy.max_age_days) and now - s.time > max_age

    # The representative of each day and week: its oldest eligible snapshot.
    first_of_day: dict[date, str] = {}
    first_of_week: dict[date, str] = {}
    for s in finished:
        if too_old(s):
            continue
        day = s.time.date()
        first_of_day.setdefault(day, s.name)
        first_of_week.setdefault(day - timedelta(days=day.weekday()), s.name)

    decisions = []
    for s in finished:
        age = now - s.time
        day = s.time.date()
        monday = day - timedelta(days=day.weekday())
        if s.name == newest:
            keep, rule = True, "newest"
        elif s.name == current:
            keep, rule = True, "current"
        elif age < timedelta(0):
            keep, rule = True, "dated in the future"
        elif policy.keep_all_hours and age <= keep_all:
            keep, rule = True, "within %d h" % policy.keep_all_hours
        elif too_old(s):
            keep, rule = False, "older than max_age_days (%d)" % policy.max_age_days
        elif (today - day).days < policy.daily_days:
            label = "daily %s" % day.isoformat()
            keep = first_of_day[day] == s.name
            rule = label if keep else "thinned (%s kept by %s)" % (label, first_of_day[day])
        elif not policy.weekly_weeks or (this_monday - monday).days // 7 < policy.weekly_weeks:
            label = "weekly %s" % _week_label(day)
            keep = first_of_week[monday] == s.name
            rule = label if keep else "thinned (%s kept by %s)" % (label, first_of_week[monday])
        else:
            keep, rule = False, "older than weekly_weeks (%d)" % policy.weekly_weeks
        decisions.append(Decision(name=s.name, time=s.time, keep=keep, rule=rule))

    # Never an empty history: the newest of the removed come back up to min_keep.
    missing = policy.min_keep - sum(d.keep for d in decisions)
    for index in range(len(decisions) - 1, -1, -1):
        if missing <= 0:
            break
        if not decisions[index].keep:
            decisions[index] = replace(decisions[index], keep=True, rule="min_keep")
            missing -= 1
    return decisions


def space_candidates(
    decisions: list[Decision],
    min_keep: int,
    now: datetime | None = None,
    protect_days: int = 0,
) -> list[Decision]:
    """What the space guard may remove from one area, oldest first.

    Kept snapshots other than the newest and ``current``, as many as can go
    while at least ``min_keep`` finished snapshots stay. With ``protect_days``
    also none made after ``now - protect_days`` nor the newest one made before
    (the state the protected days start from): however fast uploads fill the
    drive, the snapshots from before they began stay.
    """
    kept = [d for d in decisions if d.keep]
    room = max(0, len(kept) - min_keep)
    candidates = [d for d in kept if not d.protected]
    if protect_days:
        if now is None:
            raise ValueError("protect_days needs now")
        cutoff = now.astimezone(timezone.utc) - timedelta(days=protect_days)
        older = [d for d in candidates if d.time <= cutoff]
        anchor = max(
            (d for d in kept if d.time <= cutoff), key=lambda d: (d.time, d.name), default=None
        )
        candidates = [d for d in older if anchor is None or d.name != anchor.name]
    return candidates[:room]


# --- what each snapshot costs on disk -----------------------------------------------


def _entries(path: str) -> Iterator[os.stat_result]:
    """lstat of ``path`` and of everything below it; no symlink is followed."""
    yield os.lstat(path)
    stack = [path]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                yield entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)


def _is_subvolume(path: str) -> bool:
    return snap.is_subvolume_snapshot(os.path.dirname(path), os.path.basename(path))


class DiskIndex:
    """Which snapshots hold which inodes, to tell what removing some would free.

    An inode belongs to a snapshot alone when every one of its links was found
    in that snapshot (a plain file: ``st_nlink == 1``); directories always do.
    Links outside the walked snapshots (an incomplete one, another tree) keep
    an inode alive, so it never counts as freed.
    """

    def __init__(self):
        self._own: dict[object, list[int]] = {}  # key -> [bytes, inodes]
        # (dev, ino) -> [nlink, bytes, links seen, keys holding it]
        self._shared: dict[tuple[int, int], list] = {}
        self._removed: set = set()
        self._deletions_waited = False

    @classmethod
    def of_area(cls, area: str, names: Iterable[str]) -> DiskIndex:
        index = cls()
        for name in names:
            index.add(name, os.path.join(area, name))
        return index

    def add(self, key, path: str) -> None:
        own = self._own.setdefault(key, [0, 0])
        if _is_subvolume(path):
            # btrfs: every snapshot has inodes of its own that share extents;
            # what it alone holds is what btrfs counts as its exclusive bytes,
            # once deleted subvolumes (a sealed run's) no longer share them.
            if not self._deletions_waited:
                with contextlib.suppress(subvolumes.SubvolumeError):
                    subvolumes.wait_for_deletions(path)
                self._deletions_waited = True
            own[0] += subvolumes.exclusive_bytes([path])[path]
            return
        for st in _entries(path):
            size = st.st_blocks * 512
            if st.st_nlink <= 1 or stat.S_ISDIR(st.st_mode):
                own[0] += size
                own[1] += 1
                continue
            record = self._shared.setdefault((st.st_dev, st.st_ino), [st.st_nlink, size, 0, set()])
            record[2] += 1
            record[3].add(key)

    def _freeable(self, record) -> bool:
        return record[2] >= record[0]

    def added(self) -> dict[object, tuple[int, int]]:
        """For each key, the bytes and inodes it alone holds: what removing it alone frees."""
        totals = {key: list(own) for key, own in self._own.items()}
        for record in self._shared.values():
            if len(record[3]) == 1 and self._freeable(record):
                total = totals[next(iter(record[3]))]
                total[0] += record[1]
                total[1] += 1
        return {key: (total[0], total[1]) for key, total in totals.items()}

    def remove(self, key) -> tuple[int, int]:
        """Pretend ``key`` is removed; return the bytes and inodes that frees."""
        self._removed.add(key)
        nbytes, inodes = self._own.get(key, (0, 0))
        for record in self._shared.values():
            holders = record[3]
            if key in holders and holders <= self._removed and self._freeable(record):
                nbytes += record[1]
                inodes += 1
        return nbytes, inodes


def added_usage(area: str, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """For each named snapshot of ``area``: the bytes and inodes it alone holds."""
    return DiskIndex.of_area(area, names).added()


# --- carrying a prune out -----------------------------------------------------------


@dataclass
class AreaPrune:
    """One client's part of a prune."""

    client: str
    area: str
    decisions: list[Decision] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    finished_deletions: list[str] = field(default_factory=list)

    @property
    def kept(self) -> list[str]:
        return [d.name for d in self.decisions if d.keep]

    @property
    def changed(self) -> bool:
        return bool(self.removed or self.finished_deletions)


@dataclass
class PruneReport:
    areas: dict[str, AreaPrune]
    dry_run: bool
    # The drive after thinning, before and after the space guard (None
    # without a guard). A dry run's figures are estimates.
    usage_before: Usage | None = None
    usage_after: Usage | None = None
    # Set when the drive is still short of room after the space guard went
    # down to min_keep everywhere: the reason, for a warning.
    still_short: str | None = None

    @property
    def changed(self) -> bool:
        return any(a.changed for a in self.areas.values())


def pending_deletions(area: str) -> list[str]:
    """Names of snapshots whose deletion a crash interrupted (read only)."""
    return sorted(
        entry.name[len(snap.TRASH_PREFIX) :]
        for entry in os.scandir(area)
        if entry.name.startswith(snap.TRASH_PREFIX) and entry.is_dir(follow_symlinks=False)
    )


def _finished_for_pruning(area: str) -> list[snap.Snapshot]:
    """The finished snapshots a prune weighs and may remove.

    In a btrfs area only the snapshots root sealed count: the laptop's account
    can make directories with any ``back-T`` name in its own area, and such
    fakes must not make root thin real history away (nor count for min_keep).
    """
    finished = snap.list_snapshots(area)
    sealed = [s for s in finished if snap.is_sealed_snapshot(area, s.name)]
    return sealed if sealed else finished


def prune(
    areas: Mapping[str, str],
    policy: Policy,
    now: datetime,
    *,
    guard: SpaceGuard | None = None,
    root: str | None = None,
    dry_run: bool = False,
    statvfs: Callable | None = None,
    on_remove: Callable[[str, Decision], None] | None = None,
) -> PruneReport:
    """Thin each area, then prune the drive's oldest snapshots for space.

    ``areas`` maps client names to their areas; the caller holds their locks
    (not needed for a dry run, which changes nothing). The space guard, when
    given, measures ``root`` and removes the oldest kept snapshot of all the
    areas, one at a time, measuring again after each, until the drive has
    room or every area is down to ``policy.min_keep``. A dry run estimates
    what each removal would free from the snapshots' inodes instead.

    ``on_remove(client, decision)`` is called after each removal (logging).
    On a failed removal :class:`PruneError` carries the report so far.
    """
    report = PruneReport(areas={}, dry_run=dry_run)
    for client, area in sorted(areas.items()):
        part = AreaPrune(client=client, area=area)
        if dry_run:
            part.finished_deletions = pending_deletions(area)
        else:
            part.finished_deletions = snap.finish_deletions(area)
        part.decisions = plan_thinning(
            _finished_for_pruning(area), now, policy, snap.read_current(area)
        )
        report.areas[client] = part

    def remove(part: AreaPrune, decision: Decision, rule: str | None = None) -> None:
        if rule is not None:
            position = part.decisions.index(decision)
            decision = replace(decision, keep=False, rule=rule)
            part.decisions[position] = decision
        if not dry_run:
            try:
                snap.delete_snapshot(part.area, decision.name)
            except (snap.SnapshotError, OSError) as exc:
                raise PruneError(
                    "removing %s from %s failed: %s" % (decision.name, part.area, exc), report
                ) from exc
        part.removed.append(decision.name)
        if on_remove is not None and not dry_run:
            on_remove(part.client, decision)

    # 1. Thinning, oldest first.
    for part in report.areas.values():
        for decision in [d for d in part.decisions if not d.keep]:
            remove(part, decision)

    if guard is None or root is None:
        return report

    # 2. Space: the oldest kept snapshot of the drive goes first.
    usage = measure(root, statvfs)
    short = prune_shortfall(usage, guard)
    index = None
    if short and dry_run:
        # Nothing was removed: estimate what thinning and each removal would free.
        index = DiskIndex()
        for client, part in report.areas.items():
            for decision in part.decisions:
                index.add((client, decision.name), os.path.join(part.area, decision.name))
            for name in part.removed:
                usage = usage.freed(*index.remove((client, name)))
        short = prune_shortfall(usage, guard)
    report.usage_before = usage
    candidates = sorted(
        (
            (d.time, client, d)
            for client, part in report.areas.items()
            for d in space_candidates(part.decisions, policy.min_keep, now, guard.protect_days)
        ),
        key=lambda item: (item[0], item[1], item[2].name),
    )
    for _time, client, decision in candidates:
        if short is None:
            break
        remove(report.areas[client], decision, "space guard (%s)" % short)
        if index is not None:
            usage = usage.freed(*index.remove((client, decision.name)))
        else:
            if statvfs in (None, os.statvfs) and subvolumes.filesystem_type(root) == "btrfs":
                subvolumes.wait_for_deletions(root)
            usage = measure(root, statvfs)
        short = prune_shortfall(usage, guard)
    report.usage_after = usage
    report.still_short = short
    return report
