# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of scrub.py: verify, slices, repair from the other drive, state.

Snapshots are made as the server makes them (rsync --fake-super with
--link-dest against the previous snapshot, then snapshots.finalize), the
mirror drive as a hard-link-preserving copy of the first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import linkdest_testlib as lib
import pytest

from ansible_collections.linkdest.backup.plugins.module_utils import manifest as mf
from ansible_collections.linkdest.backup.plugins.module_utils import scrub
from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap

RSYNC = shutil.which("rsync")
CLIENT = "laptop-a"
NOW = datetime(2026, 11, 26, 10, 0, 0, tzinfo=timezone.utc)
XATTR = "user.rsync.%stat"


def fingerprint(root: Path) -> dict:
    out = {}
    for base, _dirs, files in os.walk(root):
        for name in files:
            path = Path(base, name)
            st = path.lstat()
            if path.is_symlink() or name == snap.LOCK_FILE:
                continue
            xattr = os.getxattr(path, XATTR) if XATTR in os.listxattr(path) else None
            out[str(path.relative_to(root))] = (
                path.read_bytes(),
                st.st_mode,
                st.st_mtime_ns,
                st.st_uid,
                xattr,
            )
    return out


class Drives:
    def __init__(self, tmp: Path):
        self.laptop = tmp / "laptop"
        self.one = tmp / "drive1"
        self.two = tmp / "drive2"
        self.state = tmp / "state"
        self.laptop.mkdir()
        (self.one / CLIENT).mkdir(parents=True)
        self.names: list[str] = []

    def write(self, rel: str, data: bytes) -> None:
        path = self.laptop / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (1767225600, 1767225600))

    def backup(self) -> str:
        area = self.one / CLIENT
        name = "back-2026-11-%02dT10_00_00" % (len(self.names) + 1)
        argv = [RSYNC, "-a", "--fake-super"]
        if self.names:
            argv.append("--link-dest=../%s" % self.names[-1])
        subprocess.run(argv + ["%s/" % self.laptop, "incomplete_%s/" % name], cwd=area, check=True)
        snap.finalize(str(area), "incomplete_" + name)
        self.names.append(name)
        assert scrub.make_manifest(str(self.one), CLIENT, name) is not None
        return name

    def mirror(self) -> None:
        """Drive 2 as the mirror leaves it: same snapshots, hard links, manifests."""
        subprocess.run([RSYNC, "-aHX", "--delete", "%s/" % self.one, "%s/" % self.two], check=True)

    def path(self, drive: Path, snapshot: str, rel: str) -> Path:
        return drive / CLIENT / snapshot / rel


@pytest.fixture
def drives(tmp_path):
    d = Drives(tmp_path)
    d.write("docs/a.txt", b"alpha\n" * 1000)
    d.write("docs/b.txt", b"bravo\n" * 1000)
    d.write("c.bin", os.urandom(300000))
    d.backup()
    d.write("docs/d.txt", b"delta\n")
    d.backup()
    d.backup()
    d.mirror()
    return d


def test_clean_drive_verifies_and_reads_each_inode_once(drives):
    report = scrub.verify_drive(str(drives.one), [CLIENT])
    assert report.findings == []
    assert report.manifest_problems == []
    assert report.complete
    assert report.snapshots == ["%s/%s" % (CLIENT, n) for n in drives.names]
    assert report.files == 3 + 4 + 4
    assert report.inodes_read == 4  # a.txt, b.txt, c.bin, d.txt: shared by hard links


def test_flipped_byte_same_size_and_mtime_is_found_in_every_snapshot_and_repaired(drives):
    before = fingerprint(drives.one)
    mirror_before = fingerprint(drives.two)
    good = drives.path(drives.two, drives.names[0], "docs/a.txt")
    good_ino = good.stat().st_ino
    bad = drives.path(drives.one, drives.names[1], "docs/a.txt")
    bad_ino = bad.stat().st_ino
    lib.flip_byte(bad, 100)

    report = scrub.verify_drive(str(drives.one), [CLIENT])
    assert sorted((f.snapshot, f.path, f.problem) for f in report.findings) == [
        (name, "docs/a.txt", scrub.CONTENT) for name in drives.names
    ]
    scrub.heal(report, str(drives.two))
    assert all(f.repaired_from == str(drives.two) for f in report.findings)

    after = fingerprint(drives.one)
    # The one addition: the stamp that makes the next manifest distrust inodes.
    assert after.pop(".linkdest-manifests/%s/%s" % (CLIENT, mf.REPAIRED_STAMP))
    assert after == before
    assert fingerprint(drives.two) == mirror_before
    inodes = {drives.path(drives.one, n, "docs/a.txt").stat().st_ino for n in drives.names}
    assert len(inodes) == 1
    assert bad_ino not in inodes
    assert good.stat().st_ino == good_ino  # the good copy was not touched
    assert scrub.verify_drive(str(drives.one), [CLIENT]).findings == []
    assert not [
        n
        for n in os.listdir(drives.path(drives.one, drives.names[0], "docs"))
        if n.startswith(scrub.HEAL_PREFIX)
    ]


def test_damage_on_both_drives_is_reported_not_repaired(drives):
    for drive in (drives.one, drives.two):
        lib.flip_byte(drives.path(drive, drives.names[2], "c.bin"), 5)
    damaged = drives.path(drives.one, drives.names[2], "c.bin").read_bytes()
    report = scrub.verify_drive(str(drives.one), [CLIENT])
    scrub.heal(report, str(drives.two))
    assert len(report.damaged) == 3
    assert {f.unrepaired for f in report.findings} == {"the copy on %s is damaged too" % drives.two}
    assert drives.path(drives.one, drives.names[2], "c.bin").read_bytes() == damaged


def test_drive_two_is_repaired_from_drive_one(drives):
    before = fingerprint(drives.two)
    lib.flip_byte(drives.path(drives.two, drives.names[0], "docs/b.txt"))
    report = scrub.verify_drive(str(drives.two), [CLIENT])
    assert len(report.findings) == 3
    scrub.heal(report, str(drives.one))
    after = fingerprint(drives.two)
    assert after.pop(".linkdest-manifests/%s/%s" % (CLIENT, mf.REPAIRED_STAMP))
    assert after == before


def test_the_manifest_after_a_repair_matches_files_by_lstat_not_by_inode_number(drives):
    lib.flip_byte(drives.path(drives.one, drives.names[1], "docs/a.txt"), 3)
    report = scrub.verify_drive(str(drives.one), [CLIENT])
    scrub.heal(report, str(drives.two))
    assert all(f.repaired_from for f in report.findings)

    after_repair = drives.backup()
    stats = scrub.make_manifest(str(drives.one), CLIENT, after_repair)  # made by backup()
    assert stats is None
    stats = rebuild(drives, after_repair)
    # a.txt is read: its repaired inode is not the one the manifest before names.
    assert (stats.files, stats.read_files, stats.by_listing) == (4, 1, 0)
    stats = rebuild(drives, drives.backup())
    assert (stats.files, stats.read_files, stats.by_listing) == (4, 0, 4)
    assert scrub.verify_drive(str(drives.one), [CLIENT]).findings == []


def rebuild(drives, name: str):
    """Make the manifest of ``name`` again, as its finalize did."""
    os.unlink(mf.manifest_path(str(drives.one), CLIENT, name))
    return scrub.make_manifest(str(drives.one), CLIENT, name)


def test_changed_mtime_or_size_is_reported_never_overwritten(drives):
    path = drives.path(drives.one, drives.names[1], "docs/d.txt")
    path.write_bytes(b"someone wrote here\n")
    report = scrub.verify_drive(str(drives.one), [CLIENT])
    scrub.heal(report, str(drives.two))
    assert {(f.problem, f.unrepaired) for f in report.findings} == {
        (scrub.CHANGED, "not a content error: someone wrote to it")
    }
    assert path.read_bytes() == b"someone wrote here\n"


def test_missing_file_and_untrusted_manifest_are_reported(drives):
    drives.path(drives.one, drives.names[2], "docs/d.txt").unlink()
    os.chown(mf.manifest_path(str(drives.one), CLIENT, drives.names[0]), 1000, 1000)
    report = scrub.verify_drive(str(drives.one), [CLIENT])
    assert [(f.snapshot, f.problem) for f in report.findings] == [(drives.names[2], scrub.MISSING)]
    assert len(report.manifest_problems) == 1
    assert "not trusted" in report.manifest_problems[0]


def test_slices_resume_from_the_cursor_and_cover_everything(drives):
    lib.flip_byte(drives.path(drives.one, drives.names[0], "c.bin"))
    seen, cursor, runs = [], None, 0
    while True:
        report = scrub.verify_drive(str(drives.one), [CLIENT], budget_bytes=1, cursor=cursor)
        runs += 1
        seen += [(f.snapshot, f.path) for f in report.findings]
        if report.complete:
            break
        cursor = report.cursor
        assert runs < 50
    assert runs > 3
    assert sorted(seen) == sorted((n, "c.bin") for n in drives.names)


def test_a_run_killed_midway_resumes_after_its_last_checkpoint(drives, monkeypatch):
    # Damage in the first snapshot; the run is killed while it checks the
    # third. What it saved at its checkpoints holds: the next run starts at
    # the third snapshot and the damage found before the kill stays open.
    lib.flip_byte(drives.path(drives.one, drives.names[0], "docs/b.txt"))
    monkeypatch.setattr(scrub, "CHECKPOINT_SECONDS", 0.0)
    checked = []
    real = scrub._verify_snapshot

    def killed_at_the_third(where, manifest, start, reading, over):
        checked.append(where[3])
        if len(checked) == 3:
            raise KeyboardInterrupt  # what SIGINT or a reboot does to the run
        return real(where, manifest, start, reading, over)

    monkeypatch.setattr(scrub, "_verify_snapshot", killed_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        scrub.run_verify(str(drives.one), [CLIENT], None, str(drives.state))

    saved = scrub.read_state(str(drives.state))["drives"][str(drives.one)]
    assert saved["cursor"] == [CLIENT, drives.names[1], 4]
    assert [d["snapshot"] for d in saved["damage"]] == drives.names[:2]
    monkeypatch.setattr(scrub, "_verify_snapshot", real)
    checked.clear()
    monkeypatch.setattr(scrub, "_verify_snapshot", lambda *a: checked.append(a[0][3]) or real(*a))
    run = scrub.run_verify(str(drives.one), [CLIENT], None, str(drives.state), repair=False)
    assert checked == drives.names[1:]  # the second only to see it is done
    assert run.reports[0].complete
    assert {d["snapshot"] for d in run.damaged} == set(drives.names)


def test_state_keeps_damage_open_until_a_later_run_finds_it_intact(drives, tmp_path):
    state = {}
    lib.flip_byte(drives.path(drives.one, drives.names[0], "docs/a.txt"))
    report = scrub.verify_drive(str(drives.one), [CLIENT])
    scrub.heal(report, None)
    scrub.record(state, report, NOW)
    assert len(scrub.open_damage(state)) == 3
    scrub.write_state(str(drives.state), state)
    state = scrub.read_state(str(drives.state))

    report = scrub.verify_drive(str(drives.one), [CLIENT])
    scrub.heal(report, str(drives.two))
    scrub.record(state, report, NOW)
    assert scrub.open_damage(state) == []
    assert len(state["drives"][str(drives.one)]["repaired"]) == 3
    assert state["drives"][str(drives.one)]["last_complete"] == "2026-11-26T10:00:00+00:00"

    scrub.forget_gone(state, {str(drives.one): {"%s/%s" % (CLIENT, drives.names[2])}})
    assert list(state["drives"][str(drives.one)]["snapshots"]) == [
        "%s/%s" % (CLIENT, drives.names[2])
    ]


def test_catch_up_makes_missing_manifests_and_drops_orphans(drives):
    root = str(drives.one)
    os.unlink(mf.manifest_path(root, CLIENT, drives.names[2]))
    shutil.copy(
        mf.manifest_path(root, CLIENT, drives.names[0]),
        mf.manifest_path(root, CLIENT, "back-2020-01-01T00_00_00"),
    )
    assert scrub.catch_up(root, [CLIENT]) == 1
    assert mf.listed(root, CLIENT) == drives.names
    mf.load(root, CLIENT, drives.names[2])


def test_a_trusted_manifest_is_never_remade(drives):
    root = str(drives.one)
    path = drives.path(drives.one, drives.names[1], "docs/a.txt")
    lib.flip_byte(path)
    assert scrub.make_manifest(root, CLIENT, drives.names[1]) is None
    assert (
        scrub.verify_drive(root, [CLIENT], snapshots={"%s/%s" % (CLIENT, drives.names[1])})
        .findings[0]
        .problem
        == scrub.CONTENT
    )


def test_a_snapshot_pruned_while_it_is_read_is_no_damage(drives, monkeypatch):
    real = scrub._Reading.check
    pruned = drives.one / CLIENT / drives.names[0]

    def prune_midway(self, *args):
        if pruned.exists():
            shutil.rmtree(pruned)
        return real(self, *args)

    monkeypatch.setattr(scrub._Reading, "check", prune_midway)
    report = scrub.verify_drive(str(drives.one), [CLIENT])
    assert report.findings == []
    assert report.snapshots == ["%s/%s" % (CLIENT, n) for n in drives.names[1:]]


def test_damage_found_by_one_slice_stays_open_when_the_next_slice_finishes(drives):
    """The next slice resumes after the damaged entry: it must not close it."""
    lib.flip_byte(drives.path(drives.one, drives.names[2], "c.bin"))
    state = {}
    cursor = None
    for _slice in range(30):
        report = scrub.verify_drive(
            str(drives.one),
            [CLIENT],
            budget_bytes=1,
            cursor=cursor,
            snapshots={"%s/%s" % (CLIENT, drives.names[2])},
        )
        scrub.record(state, report, NOW)
        cursor = report.cursor
        if report.complete:
            break
    assert report.complete
    assert [d["path"] for d in scrub.open_damage(state)] == ["c.bin"]


def test_a_file_missing_on_the_mirror_is_put_back_from_the_backup_drive(drives):
    before = fingerprint(drives.two)
    for name in drives.names[1:]:
        drives.path(drives.two, name, "docs/d.txt").unlink()
    report = scrub.verify_drive(str(drives.two), [CLIENT])
    assert [(f.snapshot, f.problem) for f in report.findings] == [
        (name, scrub.MISSING) for name in drives.names[1:]
    ]
    scrub.heal(report, str(drives.one))
    assert all(f.repaired_from == str(drives.one) for f in report.findings)
    assert fingerprint(drives.two) == before
    assert os.listdir(drives.two / scrub.HEAL_DIR) == []


def test_btrfs_scrub_error_counters_are_reported():
    clean = "UUID: x\nScrub started: today\nStatus: finished\n\tread_errors: 0\n\tcsum_errors: 0\n"
    assert scrub.parse_scrub_status("/drive", clean) == []
    assert scrub.parse_scrub_status("/drive", "no stats available\n") == []
    damaged = clean.replace("csum_errors: 0", "csum_errors: 3") + "\tuncorrectable_errors: 1\n"
    assert scrub.parse_scrub_status("/drive", damaged) == [
        "btrfs scrub of /drive found csum_errors 3, uncorrectable_errors 1"
    ]
