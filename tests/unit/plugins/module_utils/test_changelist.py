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
import subprocess
import types
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
    assert changelist.record_of(st_, st_.st_ctime_ns + 10**6).split()[3] == "-1"
    later = st_.st_ctime_ns + (10**9 if fine else 3 * 10**9)
    assert changelist.record_of(st_, later).split()[3] == str(st_.st_ctime_ns)
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
    assert changelist.record_of(coarse, 6 * 10**9).split()[3] == "-1"
    assert changelist.record_of(coarse, 8 * 10**9).split()[3] == str(5 * 10**9)


def test_fallbacks_to_a_full_run(rig):
    write(rig, "a", "a")
    assert rig.backup()[1] == "full"  # the first run
    assert rig.backup()[1] == "changes"
    assert rig.backup(full=True)[1] == "full"
    assert rig.backup(excludes=["*.tmp"])[1] == "full"  # the excludes changed
    assert rig.backup()[1] == "changes"
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
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(st.lists(OPERATIONS, min_size=1, max_size=4), min_size=1, max_size=4))
def test_a_change_list_makes_what_a_full_run_makes(tmp_path_factory, steps):
    with no_racy_window():
        check_steps(Rig(tmp_path_factory.mktemp("prop")), steps)


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
    assert changelist.record_of(st_, st_.st_ctime_ns + 5 * 10**8).split()[3] == "-1"
    assert changelist.record_of(st_, st_.st_ctime_ns + 2 * 10**9).split()[3] != "-1"


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

    def broken(*_args):
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
