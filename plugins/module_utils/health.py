# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The server's own check: what a laptop cannot report about itself.

A laptop that is off, a dead cron job or a revoked key all look the same from
the server: no new snapshot. ``check()`` turns the areas, the drive's free
room and the mirror's last success into findings; ``metrics_text()`` renders
the same facts as Prometheus text for node_exporter's textfile collector.
Pure functions over their inputs, so the tests need no clock and no drive.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from datetime import datetime

from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap


@dataclass(frozen=True)
class AreaFacts:
    client: str
    newest: datetime | None
    count: int
    # The last check that found the laptop unchanged since the newest snapshot.
    checked: datetime | None = None

    @property
    def last_seen(self) -> datetime | None:
        """The last successful backup: a snapshot, or a check that needed none."""
        if self.newest is None:
            return None
        return max(self.newest, self.checked) if self.checked else self.newest


@dataclass(frozen=True)
class DriveFacts:
    size_bytes: int
    free_bytes: int
    files: int
    free_files: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free_bytes / self.size_bytes if self.size_bytes else 0.0

    @property
    def free_inodes_percent(self) -> float:
        return 100.0 * self.free_files / self.files if self.files else 100.0


@dataclass
class Report:
    findings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def area_facts(root: str, client: str) -> AreaFacts:
    area = os.path.join(root, client)
    try:
        finished = snap.list_snapshots(area)
        checked = snap.last_check(area)
    except snap.LayoutError:
        finished, checked = [], None
    return AreaFacts(
        client=client,
        newest=finished[-1].time if finished else None,
        count=len(finished),
        checked=checked[1] if checked else None,
    )


def drive_facts(root: str) -> DriveFacts:
    st = os.statvfs(root)
    return DriveFacts(
        size_bytes=st.f_blocks * st.f_frsize,
        free_bytes=st.f_bavail * st.f_frsize,
        files=st.f_files,
        free_files=st.f_favail,
    )


def check(
    areas: list[AreaFacts],
    drive: DriveFacts,
    now: datetime,
    stale_after_hours: float,
    mirror_last_success: datetime | None,
    mirror_expected: bool,
    mirror_stale_after_hours: float,
    min_free_percent: float,
) -> Report:
    """Everything that needs a person's attention, as sentences."""
    report = Report()
    for area in areas:
        if area.newest is None:
            report.findings.append("%s has no finished snapshot" % area.client)
            continue
        hours = (now - area.last_seen).total_seconds() / 3600
        if hours > stale_after_hours:
            report.findings.append(
                "%s: newest snapshot is %.1f hours old (more than %g)"
                % (area.client, hours, stale_after_hours)
                if area.last_seen == area.newest
                else "%s: last backup (a check that found nothing new since the newest"
                " snapshot) is %.1f hours old (more than %g)"
                % (area.client, hours, stale_after_hours)
            )
    if mirror_expected:
        if mirror_last_success is None:
            report.findings.append("the drive mirror has never succeeded")
        else:
            hours = (now - mirror_last_success).total_seconds() / 3600
            if hours > mirror_stale_after_hours:
                report.findings.append(
                    "the drive mirror last succeeded %.1f hours ago (more than %g)"
                    % (hours, mirror_stale_after_hours)
                )
    if drive.free_percent < min_free_percent or drive.free_inodes_percent < min_free_percent:
        report.findings.append(
            "the backup drive is nearly full: %.1f%% of its space and %.1f%% of its inodes"
            " free (want %g%%)" % (drive.free_percent, drive.free_inodes_percent, min_free_percent)
        )
    return report


# Beside root's other records (state_dir), on the system disk: when the check
# first found the backup drive missing.
DRIVE_ABSENT_FILE = "drive-absent-since"


def absent_since(state_dir: str, absent: bool, now: datetime) -> datetime | None:
    """When the drive was first found missing (now, the first time), or None
    when it is there (and the record of its absence goes)."""
    path = os.path.join(state_dir, DRIVE_ABSENT_FILE)
    if not absent:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return datetime.fromisoformat(handle.read().strip())
    except (FileNotFoundError, ValueError):
        pass
    os.makedirs(state_dir, exist_ok=True)
    write_atomically(path, now.isoformat(timespec="seconds") + "\n")
    return now


def describe_since(since: datetime, now: datetime) -> str:
    """``2026-12-04 05:00 UTC, 3.2 hours ago``"""
    hours = max(0.0, (now - since).total_seconds() / 3600)
    return "%s, %.1f hours ago" % (since.strftime("%Y-%m-%d %H:%M UTC"), hours)


def drive_missing_metrics(since: datetime) -> str:
    """The metrics while the drive is missing: that, and since when (the
    snapshot counts and free space of an empty mount point would lie)."""
    return (
        "# HELP linkdest_drive_mounted Whether the backup drive is there (1) or not (0).\n"
        "# TYPE linkdest_drive_mounted gauge\n"
        "linkdest_drive_mounted 0\n"
        "# HELP linkdest_drive_missing_since_timestamp_seconds"
        " When the check first found it missing.\n"
        "# TYPE linkdest_drive_missing_since_timestamp_seconds gauge\n"
        "linkdest_drive_missing_since_timestamp_seconds %d\n" % since.timestamp()
    )


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(
    areas: list[AreaFacts], drive: DriveFacts, mirror_last_success: datetime | None
) -> str:
    """Prometheus text exposition of the check's facts."""
    lines = [
        "# HELP linkdest_last_success_timestamp_seconds Time of the last successful backup:"
        " the newest snapshot, or a later check that found nothing new.",
        "# TYPE linkdest_last_success_timestamp_seconds gauge",
    ]
    for area in areas:
        if area.last_seen is not None:
            lines.append(
                'linkdest_last_success_timestamp_seconds{client="%s"} %d'
                % (_escape(area.client), area.last_seen.timestamp())
            )
    lines += [
        "# HELP linkdest_newest_snapshot_timestamp_seconds Time of the newest finished snapshot.",
        "# TYPE linkdest_newest_snapshot_timestamp_seconds gauge",
    ]
    for area in areas:
        if area.newest is not None:
            lines.append(
                'linkdest_newest_snapshot_timestamp_seconds{client="%s"} %d'
                % (_escape(area.client), area.newest.timestamp())
            )
    lines += [
        "# HELP linkdest_snapshots Finished snapshots kept.",
        "# TYPE linkdest_snapshots gauge",
    ]
    lines += ['linkdest_snapshots{client="%s"} %d' % (_escape(a.client), a.count) for a in areas]
    lines += [
        "# HELP linkdest_drive_mounted Whether the backup drive is there (1) or not (0).",
        "# TYPE linkdest_drive_mounted gauge",
        "linkdest_drive_mounted 1",
        "# HELP linkdest_drive_size_bytes Size of the backup drive.",
        "# TYPE linkdest_drive_size_bytes gauge",
        "linkdest_drive_size_bytes %d" % drive.size_bytes,
        "# HELP linkdest_drive_used_bytes Bytes used on the backup drive.",
        "# TYPE linkdest_drive_used_bytes gauge",
        "linkdest_drive_used_bytes %d" % (drive.size_bytes - drive.free_bytes),
        "# HELP linkdest_drive_free_bytes Bytes free on the backup drive.",
        "# TYPE linkdest_drive_free_bytes gauge",
        "linkdest_drive_free_bytes %d" % drive.free_bytes,
        "# HELP linkdest_drive_free_inodes Inodes free on the backup drive.",
        "# TYPE linkdest_drive_free_inodes gauge",
        "linkdest_drive_free_inodes %d" % drive.free_files,
    ]
    if mirror_last_success is not None:
        lines += [
            "# HELP linkdest_mirror_last_success_timestamp_seconds"
            " Time of the drive mirror's last success.",
            "# TYPE linkdest_mirror_last_success_timestamp_seconds gauge",
            "linkdest_mirror_last_success_timestamp_seconds %d" % mirror_last_success.timestamp(),
        ]
    return "\n".join(lines) + "\n"


def write_atomically(path: str, text: str) -> None:
    """node_exporter must never read a half-written file: write, then rename."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
