# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Change lists end to end: the laptop's `linkdest backup` (client.py) through
real rsync and the real gate (server_cli.py) into a real backup area.

A script stands in for ssh and sshd's forced command: it drops ssh's options
and the host and runs ``linkdest-server gate laptop`` with the rest as
SSH_ORIGINAL_COMMAND, as sshd would. Everything else is real: rsync on both
ends, --fake-super, hard links, the file system.

The property test runs random sequences of changes to the folder; after each,
a snapshot through the change list and then a full one must be identical, and
no older snapshot may change, byte for byte and inode for inode.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import subprocess
import time
import types
from datetime import datetime, timezone
from pathlib import Path

import pytest
from changelist_rig import (
    OPERATIONS,
    RSYNC,
    Rig,
    age_directories,
    check_steps,
    fingerprint,
    inodes,
    no_racy_window,
    write,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.linkdest.backup.plugins.module_utils import changelist, client, codes
from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap


@pytest.fixture
def rig(tmp_path):
    with no_racy_window():
        yield Rig(tmp_path)


# --- the list format and the server's side ---------------------------------------


def test_encode_and_decode_round_trip_odd_names():
    entries = [("d", "."), ("f", "a b"), ("f", "new\nline"), ("-", "-dash"), ("f", "ü/ß")]
    assert list(changelist.decode(io.BytesIO(changelist.encode(entries)))) == entries


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"f ../etc/passwd\0\0", "refused path"),
        (b"f /etc/passwd\0\0", "refused path"),
        (b"f a/../../x\0\0", "refused path"),
        (b"f a//b\0\0", "refused path"),
        (b"f \0\0", "refused path"),
        (b"x a\0\0", "malformed"),
        (b"fa\0\0", "malformed"),
        (b"f a", "before its end mark"),
        (b"f a\0", "before its end mark"),
        (b"f a\0\0f b\0\0", "after its end mark"),
        (b"f " + b"a" * 5000 + b"\0\0", "refused path|too long"),
    ],
    ids=[
        "dotdot",
        "absolute",
        "inner-dotdot",
        "empty-part",
        "empty",
        "kind",
        "no-space",
        "cut",
        "abandoned",
        "after-the-end",
        "long",
    ],
)
def test_decode_refuses_paths_outside_and_malformed_lists(data, reason):
    with pytest.raises(changelist.ChangeListError, match=reason):
        list(changelist.decode(io.BytesIO(data)))


def test_decode_limits_the_number_of_entries():
    with pytest.raises(changelist.ChangeListError, match="more than 3 entries"):
        list(changelist.decode(io.BytesIO(b"f a\0" * 4 + b"\0"), limit=3))


def test_apply_removals_never_follows_a_symlinked_parent(tmp_path):
    clone = tmp_path / "clone"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep me")
    clone.mkdir()
    (clone / "link").symlink_to(outside)
    (clone / "dir").mkdir()
    (clone / "dir" / "file").write_text("x")
    counts = changelist.apply_removals(
        str(clone), [("-", "link/victim"), ("f", "dir/file"), ("d", "dir"), ("-", "missing/x")]
    )
    assert (outside / "victim").read_text() == "keep me"
    assert not (clone / "dir" / "file").exists()
    assert (clone / "dir").is_dir()
    assert counts == {"listed": 4, "removed": 1}


# --- rsync's exclude patterns, mirrored -----------------------------------------------

EXCLUDE_CASES = [
    ("*.tmp", "a/b.tmp", False, True),
    ("*.tmp", "a.tmp/b", False, False),  # the directory a.tmp is excluded by the walk itself
    ("*.tmp", "a.tmp", True, True),
    ("cache/", "x/cache", True, True),
    ("cache/", "x/cache", False, False),
    ("/top", "top", False, True),
    ("/top", "x/top", False, False),
    ("a/b", "x/a/b", False, True),
    ("a/b", "xa/b", False, False),
    ("a/*/c", "a/x/y/c", False, False),
    ("a/**/c", "a/x/y/c", False, True),
    ("**/c", "c", False, True),
    ("a/**/c", "a/c", False, False),
    ("/**/c", "c", False, False),
    ("**c", "c", False, True),
    ("x/**", "x", True, False),
    ("d/***", "d", True, True),
    ("d/***", "d/e/f", False, True),
    ("?.txt", "ab.txt", False, False),
]


@pytest.mark.parametrize(("pattern", "path", "is_dir", "expected"), EXCLUDE_CASES)
def test_excludes_match_as_rsync_does(pattern, path, is_dir, expected):
    rules = changelist.Excludes([pattern])
    assert rules.excluded(path, path.rsplit("/", 1)[-1], is_dir) is expected


@pytest.mark.parametrize(
    "pattern", ["+ keep", "- drop", "!", "[[:alpha:]]x", "[ab].txt", "\\*.txt", "a\\b", "  "]
)
def test_excludes_rsync_alone_understands_mean_full_runs(pattern):
    with pytest.raises(changelist.Unsupported):
        changelist.Excludes([pattern])


def test_excludes_agree_with_rsync_itself(tmp_path):
    """Every case above against rsync's own --exclude, on real files."""
    src = tmp_path / "src"
    for pattern, path, is_dir, _expected in EXCLUDE_CASES:
        case = src / hashlib.sha256(repr((pattern, path, is_dir)).encode()).hexdigest()[:12]
        target = case / path
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("x")
        dest = tmp_path / "dest" / case.name
        dest.mkdir(parents=True)
        subprocess.run(
            [RSYNC, "-a", "--exclude=" + pattern, str(case) + "/", str(dest) + "/"], check=True
        )
        walked = changelist.walk(str(case), changelist.Excludes([pattern]), False, 0)
        copied = {
            os.path.relpath(os.path.join(d, n), dest)
            for d, ds, fs in os.walk(dest)
            for n in ds + fs
        }
        assert set(walked.entries) - {"."} == copied, (pattern, path)


# --- end to end --------------------------------------------------------------------


def test_first_run_is_full_then_changes_only_send_what_changed(rig):
    write(rig, "docs/a.txt", "a")
    write(rig, "docs/b.txt", "b")
    first, kind = rig.backup()
    assert kind == "full"
    write(rig, "docs/a.txt", "a, edited")
    second, kind = rig.backup()
    assert kind == "changes"
    status = client.StatusFile(rig.settings.status_file).read()
    # docs/a.txt alone, rewritten in place: docs itself did not change.
    assert status["last_paths"] == "1"
    a1, a2 = (rig.area / name / "docs" / "a.txt" for name in (first, second))
    b1, b2 = (rig.area / name / "docs" / "b.txt" for name in (first, second))
    assert a2.read_text() == "a, edited"
    assert a1.read_text() == "a"
    assert b1.stat().st_ino == b2.stat().st_ino
    assert a1.stat().st_ino != a2.stat().st_ino


def test_a_metadata_only_change_never_touches_the_old_inode(rig):
    write(rig, "f", "same bytes", mode=0o644)
    first, _kind = rig.backup()
    before = inodes(rig.area / first)
    os.chmod(rig.source / "f", 0o600)
    second, kind = rig.backup()
    assert kind == "changes"
    assert inodes(rig.area / first) == before
    _type, real_mode, fake, *_rest = fingerprint(rig.area / second)["f"]
    # --fake-super keeps a mode in an xattr only when the real one cannot say it.
    assert fake.startswith("100600 ") if fake else real_mode == 0o600
    assert (rig.area / second / "f").stat().st_ino != (rig.area / first / "f").stat().st_ino


def test_an_mtime_preserving_edit_is_caught_by_ctime(rig):
    write(rig, "f", "12345")
    first, _kind = rig.backup()
    stamp = os.stat(rig.source / "f")
    (rig.source / "f").write_text("54321")
    os.utime(rig.source / "f", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    second, kind = rig.backup()
    assert kind == "changes"
    assert (rig.area / second / "f").read_text() == "54321"
    assert (rig.area / first / "f").read_text() == "12345"


def test_recent_changes_are_sent_again(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    st_ = os.stat(path)
    fine = st_.st_ctime_ns % 10**9 != 0
    # Stamped a moment before the walk: the ctime is not trusted, the record
    # can never equal the next walk's, so the file is sent again.
    assert changelist.record_of(st_, st_.st_ctime_ns + 10**6)[changelist.CTIME] == -1
    later = st_.st_ctime_ns + (10**9 if fine else 3 * 10**9)
    assert changelist.record_of(st_, later)[changelist.CTIME] == st_.st_ctime_ns
    # Whole-second times (FAT, HFS+): two seconds of doubt.
    coarse = types.SimpleNamespace(
        st_mode=st_.st_mode,
        st_size=1,
        st_ino=st_.st_ino,
        st_uid=0,
        st_gid=0,
        st_mtime_ns=5 * 10**9,
        st_ctime_ns=5 * 10**9,
    )
    assert changelist.record_of(coarse, 6 * 10**9)[changelist.CTIME] == -1
    assert changelist.record_of(coarse, 8 * 10**9)[changelist.CTIME] == 5 * 10**9


def test_fallbacks_to_a_full_run(rig):
    write(rig, "a", "a")
    assert rig.backup()[1] == "full"  # the first run
    assert rig.backup()[1] == "unchanged"  # nothing changed: no snapshot
    write(rig, "b", "b")
    assert rig.backup()[1] == "changes"
    assert rig.backup(full=True)[1] == "full"
    assert rig.backup(excludes=["*.tmp"])[1] == "full"  # the excludes changed
    assert rig.backup()[1] == "unchanged"
    # A record made against a snapshot that is not current (here: an older one).
    record_file = os.path.join(rig.settings.state_dir, client.RECORD_FILE)
    record = changelist.load_record(record_file)
    record.snapshot = rig.finished()[0]
    changelist.save_record(record_file, record)
    name, kind = rig.backup()
    assert kind == "full"
    status = client.StatusFile(rig.settings.status_file).read()
    assert "not current" in status["last_full_reason"]
    assert rig.backup(full_every_hours=0)[1] == "full"
    (rig.source / "l").symlink_to("a")
    assert rig.backup(full_every_hours=24)[1] == "full"  # a new symlink
    write(rig, "a", "a, again")
    assert rig.backup()[1] == "changes"


def test_an_unplugged_drive_fails_the_run_without_a_full_run_first(rig, tmp_path):
    """A change list refused because the drive is not mounted is reported as
    that: no "sending everything" that the server would refuse all the same."""
    write(rig, "a", "a")
    rig.backup()
    config = tmp_path / "server.json"
    config.write_text(
        config.read_text().replace('"backend"', '"root_must_be_mount": true, "backend"')
    )
    write(rig, "a", "a, edited")
    command = client.Linkdest(rig.settings, quiet=True)
    command.ssh_program = rig.fake_ssh
    assert command.backup() == codes.EXIT_NOT_MOUNTED
    status = command.status.read()
    assert status["last_result"] == "failed"
    assert "the server refused the backup" in status["last_error"]
    assert "is not mounted" in status["last_error"]
    log = Path(rig.settings.log_file).read_text()
    assert "sending everything" not in log.split("backup of")[-1]
    assert len(rig.finished()) == 1


# --- a half hour with nothing new: no snapshot, a check ----------------------------


def test_an_unchanged_run_makes_no_snapshot_and_the_server_records_a_check(rig, capsys):
    write(rig, "a", "a")
    first, _kind = rig.backup()
    area_before = sorted(os.listdir(rig.area))
    record_before = Path(rig.settings.state_dir, client.RECORD_FILE).read_bytes()
    name, kind = rig.backup()
    assert (name, kind) == (first, "unchanged")
    # No clone was started (nothing to abandon) and nothing new in the area
    # but the record of the check.
    assert sorted(os.listdir(rig.area)) == sorted([*area_before, snap.CHECKED_FILE])
    assert rig.finished() == [first]
    assert Path(rig.settings.state_dir, client.RECORD_FILE).read_bytes() == record_before
    checked = snap.last_check(str(rig.area))
    assert checked is not None
    assert checked[0] == first
    status = client.StatusFile(rig.settings.status_file).read()
    assert status["last_result"] == "success"
    assert status["last_checked"] == checked[1].isoformat(timespec="seconds")
    log = Path(rig.settings.log_file).read_text()
    assert "nothing changed since %s: no new snapshot" % first in log
    command = client.Linkdest(rig.settings, quiet=True)
    command.ssh_program = rig.fake_ssh
    capsys.readouterr()
    command.status_report()
    shown = capsys.readouterr().out
    assert "Last backup:   up to date as of %s (snapshot %s)" % (status["last_checked"], first) in (
        shown
    )
    assert "On the server: 1 snapshots" in shown
    # list shows the check; the names a command takes from it are snapshots only.
    command.list_snapshots()
    assert "checked %s: nothing changed since %s" % (status["last_checked"], first) in (
        capsys.readouterr().out
    )
    assert command.snapshots() == [first]
    # A restore at the time of the check reads the snapshot it vouched for.
    assert command.locate(".", status["last_checked"]) == first
    # Something changes: the next run is a change-list snapshot again, and the
    # check (which named the old snapshot) no longer counts.
    write(rig, "b", "b")
    second, kind = rig.backup()
    assert kind == "changes"
    assert second != first
    assert snap.last_check(str(rig.area)) is None
    assert client.StatusFile(rig.settings.status_file).read()["last_checked"] == ""


def test_a_snapshot_every_run_when_asked(rig):
    write(rig, "a", "a")
    first, _kind = rig.backup()
    second, kind = rig.backup(snapshot_unchanged=True)
    assert kind == "changes"
    assert second != first
    assert rig.finished() == [first, second]


def test_full_runs_still_make_their_snapshot_when_nothing_changed(rig):
    write(rig, "a", "a")
    first, _kind = rig.backup()
    record_file = os.path.join(rig.settings.state_dir, client.RECORD_FILE)
    record = changelist.load_record(record_file)
    record.full_epoch -= 25 * 3600
    changelist.save_record(record_file, record)
    name, kind = rig.backup()
    assert kind == "full"
    assert name != first
    assert rig.backup(full=True)[1] == "full"
    assert len(rig.finished()) == 3


def test_only_a_removal_is_a_change(rig):
    """A path the record holds and the folder does not is found only when the
    walk has ended (no path the walk meets differs): still a snapshot."""
    write(rig, "a", "a")
    age_directories(rig.source)
    first, _kind = rig.backup()
    record_file = os.path.join(rig.settings.state_dir, client.RECORD_FILE)
    record = changelist.load_record(record_file)
    record.entries["gone"] = record.entries["a"]
    changelist.save_record(record_file, record)
    name, kind = rig.backup()
    assert kind == "changes"
    assert name != first
    assert sorted(os.listdir(rig.area / name)) == ["a"]


def test_an_unchanged_laptop_with_an_interrupted_run_waiting_makes_a_full_run(rig):
    write(rig, "a", "a")
    rig.backup()
    os.mkdir(rig.area / "incomplete_back-2099-01-01T00_00_00")
    name, kind = rig.backup()
    assert kind == "full"
    status = client.StatusFile(rig.settings.status_file).read()
    assert "an interrupted run waits" in status["last_full_reason"]
    assert snap.list_incomplete(str(rig.area)) == []
    assert rig.backup()[1] == "unchanged"


def test_a_server_that_records_no_checks_gets_a_snapshot(rig, monkeypatch):
    """An older server's gate refuses the word: the run makes its snapshot as before."""
    write(rig, "a", "a")
    first, _kind = rig.backup()
    monkeypatch.setattr(codes, "VERB_UNCHANGED", "no-such-word")
    name, kind = rig.backup()
    assert kind == "changes"
    assert name != first


def test_an_unplugged_drive_fails_an_unchanged_run(rig, tmp_path):
    write(rig, "a", "a")
    rig.backup()
    config = tmp_path / "server.json"
    config.write_text(
        config.read_text().replace('"backend"', '"root_must_be_mount": true, "backend"')
    )
    command = client.Linkdest(rig.settings, quiet=True)
    command.ssh_program = rig.fake_ssh
    assert command.backup() == codes.EXIT_NOT_MOUNTED
    assert command.status.read()["last_result"] == "failed"
    assert snap.last_check(str(rig.area)) is None


@pytest.mark.parametrize(
    ("said", "code", "result"),
    [
        ("ssh: Could not resolve hostname server: Name or service not known", 69, "skipped"),
        ("ssh: connect to host server port 22: No route to host", 69, "skipped"),
        ("Host key verification failed.", 255, "failed"),
    ],
    ids=["unresolvable", "no-route", "host-key"],
)
def test_an_unchanged_run_away_from_home_is_skipped_and_a_bad_host_key_fails(
    rig, tmp_path, said, code, result
):
    write(rig, "a", "a")
    rig.backup()
    unreachable = tmp_path / "unreachable-ssh"
    unreachable.write_text("#!/bin/sh\necho %s >&2\nexit 255\n" % shlex.quote(said))
    unreachable.chmod(0o755)
    command = client.Linkdest(rig.settings, quiet=True)
    command.ssh_program = str(unreachable)
    assert command.backup() == code
    assert command.status.read()["last_result"] == result
    assert snap.last_check(str(rig.area)) is None


def test_a_check_never_vouches_for_an_older_snapshot(tmp_path):
    area = tmp_path / "area"
    for name in ("back-2026-01-01T00_00_00", "back-2026-01-02T00_00_00"):
        (area / name).mkdir(parents=True)
    when = datetime(2026, 1, 3, tzinfo=timezone.utc)
    snap.record_check(str(area), "back-2026-01-01T00_00_00", when)
    assert snap.last_check(str(area)) is None
    snap.record_check(str(area), "back-2026-01-02T00_00_00", when)
    assert snap.last_check(str(area)) == ("back-2026-01-02T00_00_00", when)
    (area / snap.CHECKED_FILE).write_text("{torn")
    assert snap.last_check(str(area)) is None
    # What the laptop's account writes is not believed beyond the real time,
    # and root never waits on a planted FIFO (the daily check reads this).
    snap.record_check(
        str(area), "back-2026-01-02T00_00_00", datetime(2099, 1, 1, tzinfo=timezone.utc)
    )
    assert snap.last_check(str(area)) is None
    assert snap.last_check(str(area), now=datetime(2099, 1, 1, tzinfo=timezone.utc)) is not None
    (area / snap.CHECKED_FILE).unlink()
    os.mkfifo(area / snap.CHECKED_FILE)
    assert snap.last_check(str(area)) is None


def test_an_interrupted_run_is_resumed_by_a_full_run(rig):
    write(rig, "a", "a")
    rig.backup()
    # A prepared clone whose upload never came.
    os.mkdir(rig.area / "incomplete_back-2099-01-01T00_00_00")
    name, kind = rig.backup()
    assert kind == "full"
    assert snap.list_incomplete(str(rig.area)) == []


# --- the property: a change list makes what a full run makes ---------------------


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(st.lists(OPERATIONS, min_size=0, max_size=4), min_size=1, max_size=4))
def test_a_change_list_makes_what_a_full_run_makes(tmp_path_factory, steps):
    with no_racy_window():
        check_steps(Rig(tmp_path_factory.mktemp("prop")), steps)


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(st.lists(OPERATIONS, min_size=0, max_size=4), min_size=1, max_size=3))
def test_a_change_list_from_a_split_walk_makes_what_a_full_run_makes(
    tmp_path_factory, monkeypatch, steps
):
    """The same property with the walk always split across two processes."""
    monkeypatch.setattr(changelist, "SPLIT_WALK_ENTRIES", 0)
    with no_racy_window():
        check_steps(Rig(tmp_path_factory.mktemp("split")), steps)


def _tree(top: Path) -> None:
    for branch in ("a", "b", "c", "d", "e"):
        for sub in ("x", "y z"):
            (top / branch / sub).mkdir(parents=True)
            (top / branch / sub / "f").write_text(branch + sub)
    (top / "top.txt").write_text("top")


def test_a_split_walk_finds_what_one_process_finds(tmp_path, monkeypatch):
    _tree(tmp_path)
    excludes = changelist.Excludes(["*.tmp", "/b/x/"])
    (tmp_path / "c" / "x" / "skip.tmp").write_text("-")
    started = time.time_ns()
    one = changelist.walk(str(tmp_path), excludes, False, started)
    monkeypatch.setattr(changelist, "SPLIT_WALK_ENTRIES", 0)
    changed = []
    split = changelist.walk(
        str(tmp_path),
        excludes,
        False,
        started,
        previous={},
        on_change=lambda: changed.append(1),
    )
    assert split.entries == one.entries
    assert "b/x" not in split.entries
    assert "c/x/skip.tmp" not in split.entries
    # No last record: every path is new, and on_change comes once.
    assert changed == [1]


def test_a_split_walk_reports_a_change_only_the_child_saw(tmp_path, monkeypatch):
    _tree(tmp_path)
    settled = time.time_ns() + 10 * 10**9
    monkeypatch.setattr(changelist, "RACY_NS", 0)
    monkeypatch.setattr(changelist, "RACY_COARSE_NS", 0)
    monkeypatch.setattr(changelist, "RACY_DIR_NS", 0)
    before = changelist.walk(str(tmp_path), changelist.Excludes([]), False, settled)
    monkeypatch.setattr(changelist, "SPLIT_WALK_ENTRIES", 0)
    changed = []

    def walk_again():
        return changelist.walk(
            str(tmp_path), changelist.Excludes([]), False, settled, before.entries,
            lambda: changed.append(1),
        )  # fmt: skip

    again = walk_again()
    assert (again.entries, changed) == (before.entries, [])
    # The top's listing order decides which half the child walks: change a
    # file in every branch but one at a time, and each must be seen.
    for branch in ("a", "b", "c", "d", "e"):
        os.chmod(tmp_path / branch / "x" / "f", 0o600)
        changed.clear()
        walked = walk_again()
        assert changed == [1], branch
        assert walked.entries["%s/x/f" % branch] != before.entries["%s/x/f" % branch]
        os.chmod(tmp_path / branch / "x" / "f", 0o644)


@pytest.mark.parametrize("branch", ["a", "b", "c", "d", "e"])
def test_a_split_walk_fails_as_one_process_does(tmp_path, monkeypatch, branch):
    """A loop in one top-level folder at a time: whichever process walks it,
    the walk fails with its reason."""
    _tree(tmp_path)
    os.symlink("..", tmp_path / branch / "x" / "up")
    monkeypatch.setattr(changelist, "SPLIT_WALK_ENTRIES", 0)
    with pytest.raises(changelist.Unsupported, match="the symlink %s/x/up loops" % branch):
        changelist.walk(str(tmp_path), changelist.Excludes([]), True, time.time_ns(), {}, None)


def test_a_split_walk_whose_child_dies_fails(tmp_path, monkeypatch):
    _tree(tmp_path)
    monkeypatch.setattr(changelist, "SPLIT_WALK_ENTRIES", 0)

    def dies(*_args):
        os._exit(3)

    monkeypatch.setattr(changelist, "_walk_child", dies)
    with pytest.raises(changelist.Unsupported, match="second process failed"):
        changelist.walk(str(tmp_path), changelist.Excludes([]), False, time.time_ns(), {}, None)


def test_a_split_walk_that_cannot_fork_walks_alone(tmp_path, monkeypatch):
    _tree(tmp_path)
    alone = changelist.walk(str(tmp_path), changelist.Excludes([]), False, time.time_ns())
    monkeypatch.setattr(changelist, "SPLIT_WALK_ENTRIES", 0)

    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(changelist.os, "fork", no_fork)
    walked = changelist.walk(
        str(tmp_path), changelist.Excludes([]), False, time.time_ns(), {}, None
    )
    assert walked.entries.keys() == alone.entries.keys()


def test_copy_links_follows_symlinks_and_sees_their_targets_change(rig, tmp_path):
    """The article's --copy-links: a symlink's target is what is stored, and a
    change to the target (outside the folder) shows in the walk."""
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "file").write_text("v1")
    (outside / "dir" / "inner").write_text("i1")
    (rig.source / "file-link").symlink_to(outside / "file")
    (rig.source / "dir-link").symlink_to(outside / "dir")
    rig.settings.copy_links = True
    # Directory times a second old at least (see age_directories).
    age_directories(outside)
    age_directories(rig.source)
    first, kind = rig.backup()
    assert kind == "full"
    (outside / "file").write_text("v2")
    (outside / "dir" / "inner").write_text("i2, longer")
    second, kind = rig.backup()
    assert kind == "changes"
    assert (rig.area / second / "file-link").read_text() == "v2"
    assert (rig.area / second / "dir-link" / "inner").read_text() == "i2, longer"
    assert (rig.area / first / "file-link").read_text() == "v1"
    third, kind = rig.backup(full=True)
    assert fingerprint(rig.area / second) == fingerprint(rig.area / third)
    # A dangling symlink is rsync's to report (exit 23, a partial snapshot):
    # a full run.
    (outside / "file").unlink()
    _name, kind = rig.backup()
    status = client.StatusFile(rig.settings.status_file).read()
    assert kind == "full"
    assert "points nowhere" in status["last_full_reason"]
    assert status["last_exit"] == "23"


def test_a_top_level_change_keeps_the_folders_own_time(rig):
    """Replacing a top-level file changes the server's top directory; the
    folder's own time must come back though the folder did not change."""
    write(rig, "top.txt", "one")
    write(rig, "other.txt", "other")
    os.utime(rig.source, (1_700_000_000, 1_700_000_000))
    rig.backup()
    (rig.source / "top.txt").write_text("two")  # in place: the folder keeps its time
    second, kind = rig.backup()
    assert kind == "changes"
    assert os.stat(rig.area / second).st_mtime_ns == 1_700_000_000 * 10**9
    # ... and only the listed top-level name was sent, not its neighbours.
    assert (rig.area / second / "other.txt").stat().st_ino == (
        rig.area / rig.finished()[0] / "other.txt"
    ).stat().st_ino


def test_a_directory_changed_within_the_second_is_listed_again(tmp_path):
    (tmp_path / "d").mkdir()
    st_ = os.stat(tmp_path / "d")
    assert changelist.record_of(st_, st_.st_ctime_ns + 5 * 10**8)[changelist.CTIME] == -1
    assert changelist.record_of(st_, st_.st_ctime_ns + 2 * 10**9)[changelist.CTIME] != -1


def test_a_path_the_walk_cannot_read_means_a_full_run_not_a_crash(rig):
    write(rig, "a", "a")
    rig.settings.copy_links = True
    (rig.source / "loop").symlink_to("loop")  # ELOOP when followed
    command = client.Linkdest(rig.settings, quiet=True)
    command.ssh_program = rig.fake_ssh
    # rsync reports the loop itself (exit 23): a partial snapshot, as before.
    assert command.backup() == 0
    status = command.status.read()
    assert status["last_kind"] == "full"
    assert "cannot read loop" in status["last_full_reason"]
    assert status["last_exit"] == "23"


def test_an_unexpected_error_fails_loudly(rig, monkeypatch):
    write(rig, "a", "a")
    alerts = rig.source.parent / "alerts"
    rig.settings.alert_command = 'echo "$1|$2" >> %s' % alerts

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(changelist, "walk", broken)
    command = client.Linkdest(rig.settings, quiet=True)
    command.ssh_program = rig.fake_ssh
    assert command.backup() == 1
    assert command.status.read()["last_result"] == "failed"
    assert "RuntimeError('boom')" in alerts.read_text()
    assert "Traceback" in Path(rig.settings.log_file).read_text()


def test_a_list_that_never_comes_frees_the_lock(tmp_path):
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb", buffering=0) as stream:
        try:
            reader = changelist.TimedReader(stream, 0.2)
            with pytest.raises(changelist.ChangeListError, match="no change list data for 0 s"):
                list(changelist.decode(reader))
        finally:
            os.close(write_end)


def test_a_listed_directory_gets_its_exact_time_back(rig):
    """rsync 3.2 takes directory times within one second as equal: a clone
    directory a fraction of a second off must still get the laptop's time
    (rsync 3.5, here, compares nanoseconds: this guards the 1970 reset on
    the servers that run 3.2, where molecule caught it)."""
    (rig.source / "d").mkdir()
    write(rig, "d/f", "x")
    os.utime(rig.source / "d", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    first, _kind = rig.backup()
    # An earlier run left the time a fraction off (as rsync can, writing into
    # a directory within the second of its mtime).
    os.utime(rig.area / first / "d", ns=(1_700_000_000_500_000_000,) * 2)
    write(rig, "d/g", "new")
    os.utime(rig.source / "d", ns=(1_700_000_000_100_000_000,) * 2)
    second, kind = rig.backup()
    assert kind == "changes"
    assert os.stat(rig.area / second / "d").st_mtime_ns == 1_700_000_000_100_000_000
