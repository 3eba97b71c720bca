# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of retention.py: the thinning rules (tables and properties), the
space guard, and real prunes on tmp_path."""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ansible_collections.linkdest.backup.plugins.module_utils import retention
from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap

UTC = timezone.utc
# A Thursday afternoon, so weeks and days have neighbours on both sides.
NOW = datetime(2026, 11, 26, 15, 0, 0, tzinfo=UTC)
ROLE = Path(__file__).resolve().parents[4] / "roles" / "backup_server"


def at(**ago) -> datetime:
    return NOW - timedelta(**ago)


def snapshot(when: datetime, complete: bool = True) -> snap.Snapshot:
    return snap.parse_snapshot_name(snap.snapshot_name(when, complete))


def name(when: datetime) -> str:
    return snap.snapshot_name(when)


def plan(times, policy=None, current=None, now=NOW):
    decisions = retention.plan_thinning(
        [snapshot(t) for t in times], now, policy or retention.Policy(), current
    )
    return {d.name: d.text for d in decisions}


# --- the defaults are the role's defaults --------------------------------------------


def test_defaults_match_the_backup_server_role():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    for variable, cls in (
        ("backup_server_retention", retention.Policy),
        ("backup_server_space_guard", retention.SpaceGuard),
    ):
        ours = vars(cls())
        assert defaults[variable] == ours, variable
        sub = options[variable]["options"]
        assert {key: spec["default"] for key, spec in sub.items()} == ours, variable
        assert options[variable]["default"] == ours, variable


# --- settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"keep_all": 24}, "unknown Policy setting"),
        ({"min_keep": 0}, "min_keep must be 1 or more"),
        ({"daily_days": -1}, "daily_days must be 0 or more"),
        ({"daily_days": True}, "must be a number"),
        ({"daily_days": "30"}, "must be a number"),
        ({"daily_days": 1.5}, "must be a number"),
        ({"max_age_days": 1, "keep_all_hours": 48}, "shorter than keep_all_hours"),
    ],
    ids=["unknown", "min-keep-0", "negative", "bool", "string", "float", "max-age-too-short"],
)
def test_policy_refuses_bad_settings(data, message):
    with pytest.raises(retention.RetentionError, match=message):
        retention.Policy.from_mapping(data)


def test_policy_fills_missing_settings_with_defaults():
    assert retention.Policy.from_mapping({"daily_days": 7}) == retention.Policy(daily_days=7)
    assert retention.Policy.from_mapping(None) == retention.Policy()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"min_free_percent": 101}, "percentage from 0 to 100"),
        ({"min_free_mib": -1}, "0 or more"),
        ({"floor_free_percent": 20}, "floor_free_percent .* is above min_free_percent"),
        ({"floor_free_mib": 10}, "floor_free_mib .* is above min_free_mib"),
        ({"min_free_inodes_percent": 0}, "floor_free_inodes_percent .* is above"),
        ({"floor": 1}, "unknown SpaceGuard setting"),
    ],
    ids=["percent-over-100", "negative-mib", "floor-above-min", "mib-floor", "inodes", "unknown"],
)
def test_space_guard_refuses_bad_settings(data, message):
    with pytest.raises(retention.RetentionError, match=message):
        retention.SpaceGuard.from_mapping(data)


# --- measuring -----------------------------------------------------------------------


def fake_statvfs(total_mib=100, free_mib=50, files=1000, free_files=500):
    def statvfs(_path):
        return SimpleNamespace(
            f_frsize=4096,
            f_blocks=total_mib * 256,
            f_bavail=free_mib * 256,
            f_files=files,
            f_favail=free_files,
        )

    return statvfs


@pytest.mark.parametrize(
    ("drive", "guard", "prune", "floor"),
    [
        ({}, {}, None, None),
        ({"free_mib": 9}, {}, "9.0 MiB free (9.0%) is below 10%", None),
        ({"free_mib": 1}, {}, "below 10%", "1.0 MiB free (1.0%) is below 2%"),
        ({"free_mib": 30}, {"min_free_mib": 40}, "below 10% and 40 MiB", None),
        ({"free_files": 40}, {}, "40 inodes free (4.0%) is below 5%", None),
        ({"free_files": 5}, {}, "inodes free", "5 inodes free (0.5%) is below 1%"),
        ({"files": 0, "free_files": 0}, {}, None, None),
        (
            {"free_mib": 0},
            {k: 0 for k in vars(retention.SpaceGuard())},
            None,
            None,
        ),
    ],
    ids=["room", "low", "floor", "mib", "inodes", "inode-floor", "no-inode-count", "guard-off"],
)
def test_shortfalls(drive, guard, prune, floor):
    usage = retention.measure("/x", fake_statvfs(**drive))
    guard = retention.SpaceGuard.from_mapping(guard)
    for found, expected in (
        (retention.prune_shortfall(usage, guard), prune),
        (retention.floor_shortfall(usage, guard), floor),
    ):
        if expected is None:
            assert found is None
        else:
            assert expected in found


def test_measure_uses_what_an_unprivileged_writer_may_use():
    usage = retention.measure("/x", fake_statvfs(total_mib=64, free_mib=16))
    assert usage.total_bytes == 64 * retention.MIB
    assert usage.free_bytes == 16 * retention.MIB
    assert usage.free_percent == 25.0
    assert usage.describe() == "16.0 MiB free (25.0%), 500 inodes free (50.0%)"
    assert retention.measure(os.getcwd()).total_bytes > 0


# --- thinning: the rules, one by one ---------------------------------------------------

T_OLD = at(days=3, hours=5)  # 2026-11-23 10:00
T_OLD_LATER = at(days=3, hours=1)  # 2026-11-23 14:00, same day
T_WEEK_A = at(days=45)  # 2026-10-12 15:00, a Monday
T_WEEK_B = at(days=42)  # 2026-10-15 15:00, the same ISO week
T_WEEK_C = at(days=35)  # 2026-10-22, the next week


@pytest.mark.parametrize(
    ("times", "policy", "current", "expected"),
    [
        ([], {}, None, {}),
        ([at(days=400)], {}, None, {name(at(days=400)): "keep: newest"}),
        (
            [at(hours=1), at(hours=5), at(hours=23)],
            {},
            None,
            {
                name(at(hours=1)): "keep: newest",
                name(at(hours=5)): "keep: within 24 h",
                name(at(hours=23)): "keep: within 24 h",
            },
        ),
        (
            [T_OLD, T_OLD_LATER, at(hours=1)],
            {"min_keep": 1},
            None,
            {
                name(T_OLD): "keep: daily 2026-11-23",
                name(T_OLD_LATER): "remove: thinned (daily 2026-11-23 kept by %s)" % name(T_OLD),
                name(at(hours=1)): "keep: newest",
            },
        ),
        (
            [T_WEEK_A, T_WEEK_B, T_WEEK_C, at(hours=1)],
            {"min_keep": 1},
            None,
            {
                name(T_WEEK_A): "keep: weekly 2026-W42",
                name(T_WEEK_B): "remove: thinned (weekly 2026-W42 kept by %s)" % name(T_WEEK_A),
                name(T_WEEK_C): "keep: weekly 2026-W43",
                name(at(hours=1)): "keep: newest",
            },
        ),
        (
            [T_WEEK_A, T_WEEK_C, at(hours=1)],
            {"min_keep": 1, "weekly_weeks": 6},
            None,
            {
                name(T_WEEK_A): "remove: older than weekly_weeks (6)",
                name(T_WEEK_C): "keep: weekly 2026-W43",
                name(at(hours=1)): "keep: newest",
            },
        ),
        (
            [T_WEEK_A, T_OLD, at(hours=1)],
            {"min_keep": 1, "max_age_days": 40},
            None,
            {
                name(T_WEEK_A): "remove: older than max_age_days (40)",
                name(T_OLD): "keep: daily 2026-11-23",
                name(at(hours=1)): "keep: newest",
            },
        ),
        (
            [T_OLD, T_OLD_LATER, at(hours=1)],
            {"min_keep": 1},
            name(T_OLD_LATER),
            {
                name(T_OLD): "keep: daily 2026-11-23",
                name(T_OLD_LATER): "keep: current",
                name(at(hours=1)): "keep: newest",
            },
        ),
        (
            [T_WEEK_A, T_WEEK_B, at(hours=1)],
            {"min_keep": 3, "max_age_days": 30},
            None,
            {
                name(T_WEEK_A): "keep: min_keep",
                name(T_WEEK_B): "keep: min_keep",
                name(at(hours=1)): "keep: newest",
            },
        ),
        (
            [at(days=100), at(days=90), at(days=80), at(days=2)],
            {"min_keep": 2, "max_age_days": 30},
            None,
            {
                name(at(days=100)): "remove: older than max_age_days (30)",
                name(at(days=90)): "remove: older than max_age_days (30)",
                name(at(days=80)): "keep: min_keep",
                name(at(days=2)): "keep: newest",
            },
        ),
        (
            [at(hours=-3), at(days=2)],
            {},
            None,
            {name(at(hours=-3)): "keep: newest", name(at(days=2)): "keep: daily 2026-11-24"},
        ),
        (
            [at(hours=-3), at(hours=-2), T_OLD],
            {"keep_all_hours": 0, "min_keep": 1},
            None,
            {
                name(at(hours=-3)): "keep: newest",
                name(at(hours=-2)): "keep: dated in the future",
                name(T_OLD): "keep: daily 2026-11-23",
            },
        ),
        (
            [at(hours=30), at(hours=26), at(hours=2)],
            {"keep_all_hours": 0, "daily_days": 0, "min_keep": 1},
            None,
            {
                name(at(hours=30)): "keep: weekly 2026-W48",
                name(at(hours=26)): "remove: thinned (weekly 2026-W48 kept by %s)"
                % name(at(hours=30)),
                name(at(hours=2)): "keep: newest",
            },
        ),
    ],
    ids=[
        "empty",
        "one-old-snapshot-is-newest",
        "last-24-hours",
        "daily-keeps-the-first-of-the-day",
        "weekly-keeps-the-first-of-the-week",
        "weekly-limit",
        "max-age",
        "current-is-never-thinned",
        "min-keep-brings-back-the-newest-removed",
        "min-keep-over-max-age",
        "future-newest",
        "future-without-keep-all",
        "no-daily-tier",
    ],
)
def test_thinning_rules(times, policy, current, expected):
    assert plan(times, retention.Policy.from_mapping(policy), current) == expected


def test_incomplete_snapshots_are_neither_counted_nor_decided():
    decisions = retention.plan_thinning(
        [snapshot(at(hours=1), complete=False), snapshot(T_OLD), snapshot(T_OLD_LATER)],
        NOW,
        retention.Policy(min_keep=1),
    )
    assert [(d.name, d.text) for d in decisions] == [
        (name(T_OLD), "keep: daily 2026-11-23"),
        (name(T_OLD_LATER), "keep: newest"),
    ]


def test_now_in_another_time_zone_is_the_same_instant():
    times = [T_OLD, T_OLD_LATER, at(days=1, hours=1), at(hours=1)]
    berlin = NOW.astimezone(timezone(timedelta(hours=9)))
    assert plan(times, now=berlin) == plan(times)


# --- thinning: properties for any snapshots and any policy ---------------------------

policies = st.builds(
    retention.Policy,
    keep_all_hours=st.integers(0, 72),
    daily_days=st.integers(0, 45),
    weekly_weeks=st.integers(0, 30),
    max_age_days=st.one_of(st.just(0), st.integers(3, 400)),
    min_keep=st.integers(1, 8),
)
# Spread over a year and more, and dense in the last weeks, where days and
# weeks hold several snapshots each.
moments = st.one_of(st.integers(-3 * 3600, 400 * 86400), st.integers(0, 40 * 86400)).map(
    lambda s: NOW - timedelta(seconds=s)
)
time_sets = st.sets(moments, max_size=60)


@st.composite
def cases(draw):
    times = sorted(draw(time_sets))
    current = draw(st.one_of(st.none(), st.sampled_from(times))) if times else None
    return times, draw(policies), None if current is None else name(current)


def week_of(when):
    return when.date().isocalendar()[:2]


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(cases())
def test_property_newest_current_and_min_keep_always_stay(case):
    times, policy, current = case
    decisions = retention.plan_thinning([snapshot(t) for t in times], NOW, policy, current)
    kept = [d for d in decisions if d.keep]
    assert len(decisions) == len(times)
    if times:
        assert decisions[-1].name == name(max(times))
        assert decisions[-1].text == "keep: newest"
    if current is not None:
        assert current in {d.name for d in kept}
    assert len(kept) >= min(policy.min_keep, len(times))
    for d in decisions:
        assert d.rule
        match = re.search(r"kept by (\S+)\)$", d.rule)
        if match:
            assert match.group(1) in {k.name for k in kept}


@settings(max_examples=300, deadline=None, database=None)
@given(cases())
def test_property_each_tier_keeps_at_most_what_it_promises(case):
    times, policy, current = case
    decisions = retention.plan_thinning([snapshot(t) for t in times], NOW, policy, current)
    daily = [d for d in decisions if d.keep and d.rule.startswith("daily ")]
    weekly = [d for d in decisions if d.keep and d.rule.startswith("weekly ")]
    assert len({d.time.date() for d in daily}) == len(daily)
    assert len(daily) <= policy.daily_days
    assert len({week_of(d.time) for d in weekly}) == len(weekly)
    if policy.weekly_weeks:
        assert len(weekly) <= policy.weekly_weeks
    for d in decisions:
        if d.keep and d.rule.startswith("within "):
            assert timedelta(0) <= NOW - d.time <= timedelta(hours=policy.keep_all_hours)
        if d.rule.startswith("older than max_age_days") and policy.max_age_days:
            assert NOW - d.time > timedelta(days=policy.max_age_days)
    # Beyond the 'keep everything' rules, only min_keep can keep more.
    extra = [d for d in decisions if d.keep and d.rule == "min_keep"]
    assert len(extra) <= policy.min_keep


@settings(max_examples=300, deadline=None, database=None)
@given(cases(), st.integers(0, 60))
def test_property_the_space_guard_spares_the_protected_days(case, protect_days):
    # Whatever a flood of uploads does to the drive, the guard may only take
    # snapshots from before the protected days, never the newest of those, and
    # never below min_keep: the state before the flood can always be restored.
    times, policy, current = case
    decisions = retention.plan_thinning([snapshot(t) for t in times], NOW, policy, current)
    kept = [d for d in decisions if d.keep]
    may_go = retention.space_candidates(decisions, policy.min_keep, NOW, protect_days)
    assert len(kept) - len(may_go) >= min(policy.min_keep, len(kept))
    assert not [d for d in may_go if d.protected]
    if protect_days:
        cutoff = NOW - timedelta(days=protect_days)
        before = [d for d in kept if d.time <= cutoff]
        assert all(d.time <= cutoff for d in may_go)
        if before:
            assert max(before, key=lambda d: (d.time, d.name)) not in may_go
    assert may_go == sorted(may_go, key=lambda d: (d.time, d.name))


@settings(max_examples=200, deadline=None, database=None)
@given(cases(), st.randoms(use_true_random=False))
def test_property_the_order_of_the_input_does_not_matter(case, rng):
    times, policy, current = case
    shuffled = [snapshot(t) for t in times]
    rng.shuffle(shuffled)
    ordered = retention.plan_thinning([snapshot(t) for t in times], NOW, policy, current)
    assert retention.plan_thinning(shuffled, NOW, policy, current) == ordered
    doubled = shuffled + [snapshot(t) for t in times]
    assert retention.plan_thinning(doubled, NOW, policy, current) == ordered


@settings(max_examples=300, deadline=None, database=None)
@given(cases())
def test_property_applying_the_policy_twice_removes_nothing_more(case):
    times, policy, current = case
    first = retention.plan_thinning([snapshot(t) for t in times], NOW, policy, current)
    kept = [d for d in first if d.keep]
    second = retention.plan_thinning(
        [snap.parse_snapshot_name(d.name) for d in kept], NOW, policy, current
    )
    assert [d.name for d in second] == [d.name for d in kept]
    assert all(d.keep for d in second), [d.text for d in second if not d.keep]


@settings(max_examples=200, deadline=None, database=None)
@given(cases(), st.integers(1, 24 * 60))
def test_property_a_day_or_week_keeps_its_representative_as_time_passes(case, hours):
    times, policy, _current = case
    # Without max_age (its edge cuts a day in two) and without a `current`
    # the administrator may point anywhere: what a later prune decides for
    # what an earlier one kept.
    assume(policy.max_age_days == 0)
    first = retention.plan_thinning([snapshot(t) for t in times], NOW, policy)
    kept = [snap.parse_snapshot_name(d.name) for d in first if d.keep]
    later = {d.name: d for d in retention.plan_thinning(kept, NOW + timedelta(hours=hours), policy)}
    for d in first:
        if d.keep and d.rule.startswith("daily "):
            # A day's first snapshot is never thinned for its own day again.
            assert not later[d.name].rule.startswith("thinned (daily "), later[d.name]
        if d.keep and d.rule.startswith("weekly "):
            assert later[d.name].keep or later[d.name].rule.startswith("older than"), later[d.name]


# --- the space guard's candidates --------------------------------------------------------


def test_space_candidates_are_the_oldest_kept_down_to_min_keep():
    times = [at(days=40), at(days=20), at(days=10), at(days=2), at(hours=1)]
    decisions = retention.plan_thinning(
        [snapshot(t) for t in times], NOW, retention.Policy(min_keep=3), name(at(days=20))
    )
    candidates = retention.space_candidates(decisions, 3)
    # at(days=20) is current and at(hours=1) the newest: neither may go.
    assert [d.name for d in candidates] == [name(at(days=40)), name(at(days=10))]
    assert retention.space_candidates(decisions, 5) == []


# --- disk usage of snapshots ---------------------------------------------------------------


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def make_area(root: Path, client: str = "laptop") -> Path:
    area = root / client
    area.mkdir(parents=True)
    return area


def blocks(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def test_added_usage_counts_what_each_snapshot_alone_holds(tmp_path):
    area = make_area(tmp_path)
    a, b, c = (area / name(t) for t in (at(days=3), at(days=2), at(days=1)))
    shared = write(a / "shared.bin", 64 * 1024)
    only_a = write(a / "only-a.bin", 32 * 1024)
    b.mkdir()
    os.link(shared, b / "shared.bin")
    only_b = write(b / "sub" / "only-b.bin", 16 * 1024)
    os.link(only_b, b / "sub" / "twice-in-b.bin")  # both links inside b
    (b / "link").symlink_to("/etc/passwd")
    c.mkdir()
    os.link(shared, c / "shared.bin")
    incomplete = area / ("incomplete_" + c.name)
    incomplete.mkdir()
    only_c = write(c / "only-c.bin", 8 * 1024)
    os.link(only_c, incomplete / "only-c.bin")  # held by an incomplete run too

    usage = retention.added_usage(str(area), [a.name, b.name, c.name])

    def dirs(*paths):
        return sum(blocks(p) for p in paths)

    assert usage[a.name] == (blocks(only_a) + dirs(a), 2)
    assert usage[b.name] == (blocks(only_b) + blocks(b / "link") + dirs(b, b / "sub"), 4)
    # Shared across snapshots, or with a link outside them: never "added".
    assert usage[c.name] == (dirs(c), 1)


# --- real prunes on tmp_path ---------------------------------------------------------------


class Drive:
    """A fake file system whose free room is what the root's files really use."""

    def __init__(self, root: Path, total: int, inodes: int = 100000):
        self.root = root
        self.total = total
        self.inodes = inodes
        self.calls = 0

    def used(self) -> tuple[int, int]:
        seen, nbytes = set(), 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            for entry in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, entry))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    nbytes += st.st_blocks * 512
        return nbytes, len(seen)

    def statvfs(self, _path):
        self.calls += 1
        nbytes, count = self.used()
        return SimpleNamespace(
            f_frsize=1,
            f_blocks=self.total,
            f_bavail=max(0, self.total - nbytes),
            f_files=self.inodes,
            f_favail=self.inodes - count,
        )


def fill(area: Path, times, size: int, share: bool = True) -> list[str]:
    """One snapshot per time, each with its own file of ``size`` bytes and a
    shared file hard-linked from the first."""
    names, first = [], None
    for when in times:
        snapshot_dir = area / name(when)
        write(snapshot_dir / "own.bin", size)
        if share:
            if first is None:
                first = write(snapshot_dir / "shared.bin", 4096)
            else:
                os.link(first, snapshot_dir / "shared.bin")
        names.append(snapshot_dir.name)
    return names


def test_prune_thins_and_logs_each_removal(tmp_path):
    area = make_area(tmp_path / "root")
    names = fill(area, [T_OLD, T_OLD_LATER, at(hours=1)], 1024)
    (area / "current").symlink_to(names[-1])
    (area / ("incomplete_" + names[0])).mkdir()
    (area / (snap.TRASH_PREFIX + name(at(days=9)))).mkdir()
    seen = []

    report = retention.prune(
        {"laptop": str(area)},
        retention.Policy(min_keep=1),
        NOW,
        on_remove=lambda client, d: seen.append((client, d.text)),
    )

    part = report.areas["laptop"]
    assert part.removed == [names[1]]
    assert part.finished_deletions == [name(at(days=9))]
    assert part.kept == [names[0], names[2]]
    assert report.changed
    assert seen == [("laptop", "remove: thinned (daily 2026-11-23 kept by %s)" % names[0])]
    assert sorted(os.listdir(area)) == sorted(
        [names[0], names[2], "current", "incomplete_" + names[0]]
    )
    # The shared file survived in the snapshots that still hold it.
    assert (area / names[2] / "shared.bin").stat().st_nlink == 2

    again = retention.prune({"laptop": str(area)}, retention.Policy(min_keep=1), NOW)
    assert not again.changed
    assert again.areas["laptop"].removed == []


def test_dry_run_changes_nothing_and_reports_the_same_plan(tmp_path):
    area = make_area(tmp_path / "root")
    names = fill(area, [T_OLD, T_OLD_LATER, at(hours=1)], 1024)
    (area / (snap.TRASH_PREFIX + name(at(days=9)))).mkdir()
    before = sorted(os.listdir(area))

    report = retention.prune({"laptop": str(area)}, retention.Policy(min_keep=1), NOW, dry_run=True)

    assert sorted(os.listdir(area)) == before
    assert report.dry_run
    assert report.areas["laptop"].removed == [names[1]]
    assert report.areas["laptop"].finished_deletions == [name(at(days=9))]


def unprotected_guard(**settings) -> retention.SpaceGuard:
    """A guard free to remove recent snapshots: the tests below use a few days of
    history to show the oldest-first mechanics; protect_days has tests of its own."""
    return retention.SpaceGuard(protect_days=0, **settings)


def space_setup(tmp_path, count=6, size=100 * 1024, total=1000 * 1024):
    root = tmp_path / "root"
    area = make_area(root)
    # One snapshot a day for `count` days: thinning keeps them all.
    names = fill(area, [at(days=d, hours=1) for d in range(count, 0, -1)], size)
    return root, area, names, Drive(root, total)


def test_space_guard_removes_the_oldest_first_until_there_is_room(tmp_path):
    root, area, names, drive = space_setup(tmp_path)
    guard = unprotected_guard(min_free_percent=60, floor_free_percent=2)
    used_before = drive.used()[0]
    assert 100 - 100 * used_before / drive.total < 60

    report = retention.prune(
        {"laptop": str(area)},
        retention.Policy(min_keep=2),
        NOW,
        guard=guard,
        root=str(root),
        statvfs=drive.statvfs,
    )

    part = report.areas["laptop"]
    assert part.removed == names[: len(part.removed)]
    assert part.removed, "the guard removed nothing"
    assert report.usage_after.free_percent >= 60
    assert report.still_short is None
    assert sorted(n for n in os.listdir(area) if n.startswith("back-")) == part.kept
    for d in part.decisions:
        if d.name in part.removed:
            assert d.text.startswith("remove: space guard (")
            assert "is below 60%" in d.text
    # Measured again after each removal, not estimated.
    assert drive.calls == len(part.removed) + 1


def test_space_guard_stops_at_min_keep_and_says_the_drive_is_still_short(tmp_path):
    root, area, names, drive = space_setup(tmp_path)
    guard = unprotected_guard(min_free_percent=99, floor_free_percent=2)

    report = retention.prune(
        {"laptop": str(area)},
        retention.Policy(min_keep=3),
        NOW,
        guard=guard,
        root=str(root),
        statvfs=drive.statvfs,
    )

    assert report.areas["laptop"].removed == names[:3]
    assert report.areas["laptop"].kept == names[3:]
    assert "is below 99%" in report.still_short


def test_space_guard_counts_inodes_like_bytes(tmp_path):
    root, area, names, drive = space_setup(tmp_path, size=10)
    drive.inodes = 22  # each snapshot holds 2 inodes of its own, the shared file 1
    guard = unprotected_guard(min_free_percent=0, min_free_inodes_percent=50, floor_free_percent=0)

    report = retention.prune(
        {"laptop": str(area)},
        retention.Policy(min_keep=1),
        NOW,
        guard=guard,
        root=str(root),
        statvfs=drive.statvfs,
    )

    assert report.areas["laptop"].removed == names[:2]
    assert "inodes free" in report.areas["laptop"].decisions[0].rule
    assert report.usage_after.free_inodes_percent >= 50


def test_space_guard_never_removes_current_or_the_newest(tmp_path):
    root, area, names, drive = space_setup(tmp_path)
    (area / "current").symlink_to(names[0])
    report = retention.prune(
        {"laptop": str(area)},
        retention.Policy(min_keep=1),
        NOW,
        guard=unprotected_guard(min_free_percent=100, floor_free_percent=0),
        root=str(root),
        statvfs=drive.statvfs,
    )
    assert report.areas["laptop"].kept == [names[0], names[-1]]
    assert report.still_short


def test_dry_run_estimates_the_space_guard_without_removing(tmp_path):
    root, area, names, drive = space_setup(tmp_path)
    guard = unprotected_guard(min_free_percent=60, floor_free_percent=2)
    before = sorted(os.listdir(area))

    dry = retention.prune(
        {"laptop": str(area)},
        retention.Policy(min_keep=2),
        NOW,
        guard=guard,
        root=str(root),
        dry_run=True,
        statvfs=drive.statvfs,
    )
    assert sorted(os.listdir(area)) == before
    assert drive.calls == 1

    real = retention.prune(
        {"laptop": str(area)},
        retention.Policy(min_keep=2),
        NOW,
        guard=guard,
        root=str(root),
        statvfs=drive.statvfs,
    )
    assert dry.areas["laptop"].removed == real.areas["laptop"].removed
    assert [d.text for d in dry.areas["laptop"].decisions] == [
        d.text for d in real.areas["laptop"].decisions
    ]


def test_dry_run_counts_what_thinning_frees_before_the_space_guard(tmp_path):
    root = tmp_path / "root"
    area = make_area(root)
    names = fill(area, [T_OLD, T_OLD_LATER, at(hours=1)], 300 * 1024, share=False)
    drive = Drive(root, 1000 * 1024)
    # Thinning frees T_OLD_LATER's 300 KiB; that is room enough.
    guard = unprotected_guard(min_free_percent=30, floor_free_percent=2)
    dry = retention.prune(
        {"laptop": str(area)},
        retention.Policy(min_keep=1),
        NOW,
        guard=guard,
        root=str(root),
        dry_run=True,
        statvfs=drive.statvfs,
    )
    assert dry.areas["laptop"].removed == [names[1]]
    assert dry.still_short is None


def test_space_guard_across_areas_takes_the_drives_oldest_first(tmp_path):
    root = tmp_path / "root"
    a = make_area(root, "laptop-a")
    b = make_area(root, "laptop-b")
    names_a = fill(a, [at(days=6), at(days=4), at(days=2)], 100 * 1024)
    names_b = fill(b, [at(days=5), at(days=3), at(days=1)], 100 * 1024)
    drive = Drive(root, 1000 * 1024)

    report = retention.prune(
        {"laptop-a": str(a), "laptop-b": str(b)},
        retention.Policy(min_keep=1),
        NOW,
        guard=unprotected_guard(min_free_percent=65, floor_free_percent=2),
        root=str(root),
        statvfs=drive.statvfs,
    )

    # Free goes from ~38% up by ~10% a snapshot: the three oldest of the drive go.
    assert report.areas["laptop-a"].removed == names_a[:2]
    assert report.areas["laptop-b"].removed == names_b[:1]


def test_a_failed_removal_reports_what_was_removed_before(tmp_path, monkeypatch):
    root, area, names, drive = space_setup(tmp_path)
    real_delete = snap.delete_snapshot
    calls = []

    def flaky_delete(where, what):
        calls.append(what)
        if len(calls) == 2:
            raise OSError(13, "Permission denied", what)
        return real_delete(where, what)

    monkeypatch.setattr(snap, "delete_snapshot", flaky_delete)
    with pytest.raises(retention.PruneError, match="Permission denied") as caught:
        retention.prune(
            {"laptop": str(area)},
            retention.Policy(min_keep=1),
            NOW,
            guard=unprotected_guard(min_free_percent=90, floor_free_percent=2),
            root=str(root),
            statvfs=drive.statvfs,
        )
    assert caught.value.report.areas["laptop"].removed == names[:1]
    assert not (area / names[0]).exists()
    assert (area / names[1]).exists()
