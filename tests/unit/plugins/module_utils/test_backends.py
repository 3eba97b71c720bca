# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The storage backend interface, with a fake btrfs: what a laptop's account
asks root for, the receiver's options, the root helper's checks, and parsing
the btrfs command's output. tests/integration/test_btrfs_library.py runs the
same library on a real btrfs file system."""

from __future__ import annotations

import json
import os
import struct
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.linkdest.backup.plugins.module_utils import (
    gate,
    root_helper,
    server_cli,
    subvolumes,
)
from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=timezone.utc)
LAPTOP_ARGV = "rsync --server -logDtpre.iLsfxCIvu --timeout=30 --delete . home/alice/etc"


class FakeRoot:
    """Root's half, faked: records each request and acts like the helper would
    on plain directories (``taken`` names answer 'exists')."""

    def __init__(self, area, taken=()):
        self.area = area
        self.taken = set(taken)
        self.calls = []

    def __call__(self, operation, name):
        self.calls.append((operation, name))
        if operation == "start":
            if name in self.taken:
                raise FileExistsError(17, "exists", name)
            os.mkdir(os.path.join(self.area, name))
        elif operation == "seal":
            # Root seals the run under its final name.
            os.rename(os.path.join(self.area, name), os.path.join(self.area, name[11:]))
        elif operation == "discard":
            os.rmdir(os.path.join(self.area, name))


@pytest.fixture
def account(monkeypatch):
    """This process is a laptop's account (not root), every snapshot a subvolume."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(snap, "is_subvolume_snapshot", lambda area, name: True)


def test_the_account_asks_root_to_start_and_skips_a_taken_second(tmp_path, account):
    root = FakeRoot(str(tmp_path), taken={"incomplete_back-2026-11-26T12_00_00"})

    started = snap.start_incomplete(str(tmp_path), NOW, "btrfs", root)

    assert started.name == "incomplete_back-2026-11-26T12_00_01"
    assert root.calls == [
        ("start", "incomplete_back-2026-11-26T12_00_00"),
        ("start", "incomplete_back-2026-11-26T12_00_01"),
    ]


def test_the_account_asks_root_to_seal_the_run_under_its_final_name(tmp_path, account):
    (tmp_path / "incomplete_back-2026-11-26T12_00_00").mkdir()
    root = FakeRoot(str(tmp_path))

    plan = snap.finalize(str(tmp_path), "incomplete_back-2026-11-26T12_00_00", privileged=root)

    assert root.calls == [("seal", "incomplete_back-2026-11-26T12_00_00")]
    assert plan.final == "back-2026-11-26T12_00_00"
    assert (tmp_path / plan.final).is_dir()
    assert snap.read_current(str(tmp_path)) == plan.final


def test_the_account_asks_root_to_discard_an_incomplete_subvolume(tmp_path, account):
    (tmp_path / "incomplete_back-2026-11-26T12_00_00").mkdir()
    root = FakeRoot(str(tmp_path))

    snap.delete_snapshot(str(tmp_path), "incomplete_back-2026-11-26T12_00_00", privileged=root)

    assert root.calls == [("discard", "incomplete_back-2026-11-26T12_00_00")]
    assert not any(n.startswith(snap.TRASH_PREFIX) for n in os.listdir(tmp_path))


def test_an_account_leaves_interrupted_subvolume_deletions_to_root(tmp_path, account):
    (tmp_path / (snap.TRASH_PREFIX + "back-2026-11-20T12_00_00")).mkdir()
    assert snap.finish_deletions(str(tmp_path)) == []
    assert (tmp_path / (snap.TRASH_PREFIX + "back-2026-11-20T12_00_00")).is_dir()


def test_hardlink_runs_ask_root_for_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    root = FakeRoot(str(tmp_path))
    started = snap.start_incomplete(str(tmp_path), NOW, "hardlink", root)
    snap.finalize(str(tmp_path), started.name, privileged=root)
    assert root.calls == []


def test_an_unknown_backend_is_refused_before_anything_is_made(tmp_path):
    with pytest.raises(snap.LayoutError, match="unknown storage backend 'zfs'"):
        snap.start_incomplete(str(tmp_path), NOW, "zfs")
    with pytest.raises(snap.LayoutError, match="backend must be one of hardlink, btrfs"):
        server_cli.Config({"root": "/srv", "backend": "zfs"})
    assert os.listdir(tmp_path) == []


# --- the receiver ------------------------------------------------------------------


def test_on_btrfs_the_receiver_rewrites_blocks_in_place_and_links_nothing(tmp_path):
    config = server_cli.Config({"root": "/srv/backup", "backend": "btrfs", "rsync_timeout": 600})
    (tmp_path / "back-2026-11-25T12_00_00").mkdir()
    (tmp_path / "current").symlink_to("back-2026-11-25T12_00_00")
    assert server_cli.link_dests_for(config, str(tmp_path)) == []

    argv = server_cli.receiver_argv(config, gate.parse_request(LAPTOP_ARGV), [], "incomplete_T")

    assert argv[argv.index("--fake-super") :] == [
        "--fake-super",
        "--timeout=600",
        "--inplace",
        "--no-whole-file",
        "--delete",
        ".",
        "incomplete_T/",
    ]


def test_a_laptop_still_may_not_ask_for_inplace_itself():
    with pytest.raises(gate.GateRefused, match="--inplace"):
        gate.parse_request("rsync --server -logDtpre.iLsfxCIvu --inplace . x")


# --- root's helper -----------------------------------------------------------------


@pytest.fixture
def helper(tmp_path, monkeypatch):
    """cmd_subvolume as root through sudo for the account of 'laptop'."""
    me = os.getuid()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("SUDO_UID", str(me))
    import pwd

    account = pwd.getpwuid(me).pw_name
    (tmp_path / "laptop").mkdir()
    config = server_cli.Config(
        {
            "root": str(tmp_path),
            "backend": "btrfs",
            "clients": {"laptop": account},
            "state_dir": str(tmp_path / "state"),
        }
    )
    done = []

    def act(what, result=None):
        def fake(area, name, *args, **kwargs):
            done.append((what, area))
            return result

        return fake

    monkeypatch.setattr(snap, "start_subvolume", act("start", "empty"))
    monkeypatch.setattr(snap, "seal_subvolume", act("seal", "back-T"))
    monkeypatch.setattr(snap, "discard_subvolume", act("drop"))
    monkeypatch.setattr(snap, "subvolume_id_of", lambda area, name: 300)
    monkeypatch.setattr(root_helper, "_log", lambda *args, **kwargs: None)
    return config, done


def now_name(**offset) -> str:
    return snap.snapshot_name(datetime.now(timezone.utc) + timedelta(**offset), complete=False)


def test_the_helper_acts_on_the_callers_own_area(helper, tmp_path):
    config, done = helper
    name = now_name()
    for operation in ("start", "seal", "discard"):
        assert root_helper.cmd_subvolume(config, operation, name) == 0
    area = str(tmp_path / "laptop")
    assert done == [("start", area), ("seal", area), ("drop", area)]


def test_the_helper_starts_only_runs_named_for_now(helper):
    # An old name would let the account date a sealed snapshot as it likes
    # (and make thinning keep it over real history).
    config, done = helper
    for name in (now_name(days=-3), now_name(hours=2)):
        with pytest.raises(gate.GateRefused, match="is not named for now"):
            root_helper.cmd_subvolume(config, "start", name)
    assert done == []


def test_the_helper_seals_only_runs_it_started(helper, tmp_path):
    config, done = helper
    with pytest.raises(gate.GateRefused, match="root did not start"):
        root_helper.cmd_subvolume(config, "seal", now_name())
    name = now_name()
    assert root_helper.cmd_subvolume(config, "start", name) == 0
    assert root_helper.cmd_subvolume(config, "seal", name) == 0
    # Once sealed, never again.
    with pytest.raises(gate.GateRefused, match="root did not start"):
        root_helper.cmd_subvolume(config, "seal", name)
    state = tmp_path / "state"
    assert oct(state.stat().st_mode & 0o777) == "0o700"


@pytest.mark.parametrize(
    ("operation", "name"),
    [
        ("discard", "back-2026-11-26T12_00_00"),  # a finished snapshot
        ("seal", "../c10/incomplete_back-2026-11-26T12_00_00"),
        ("start", "current"),
        ("delete", "incomplete_back-2026-11-26T12_00_00"),
    ],
    ids=["finished", "other-area", "not-a-snapshot", "unknown-operation"],
)
def test_the_helper_refuses_anything_else(helper, operation, name):
    config, done = helper
    with pytest.raises(gate.GateRefused, match="refused"):
        root_helper.cmd_subvolume(config, operation, name)
    assert done == []


def test_the_helper_takes_the_caller_from_sudo_only(helper, monkeypatch):
    config, done = helper
    monkeypatch.delenv("SUDO_UID")
    with pytest.raises(gate.GateRefused, match="not called through sudo"):
        root_helper.cmd_subvolume(config, "start", "incomplete_back-2026-11-26T12_00_00")
    monkeypatch.setenv("SUDO_UID", "65534")  # nobody: an account of no laptop
    with pytest.raises(gate.GateRefused, match="is no laptop's account"):
        root_helper.cmd_subvolume(config, "start", "incomplete_back-2026-11-26T12_00_00")
    assert done == []


def test_the_helper_does_nothing_for_a_laptop_on_hard_links(helper):
    config, done = helper
    config.backends = {"laptop": "hardlink"}  # the server's default stays btrfs
    with pytest.raises(gate.GateRefused, match="the backend of laptop is hardlink"):
        root_helper.cmd_subvolume(config, "start", "incomplete_back-2026-11-26T12_00_00")
    assert done == []


def test_a_laptop_may_use_another_backend_than_the_server():
    config = server_cli.Config(
        {"root": "/srv", "backend": "hardlink", "backends": {"studio": "btrfs"}}
    )
    assert (config.backend_of("studio"), config.backend_of("laptop")) == ("btrfs", "hardlink")
    with pytest.raises(snap.LayoutError, match="not 'zfs'"):
        server_cli.Config({"root": "/srv", "backends": {"studio": "zfs"}})


# --- the btrfs command and ioctls ----------------------------------------------------


USAGE = """Overall:
    Device size:\t\t   2147483648
    Device allocated:\t\t    228589568
    Used:\t\t\t    103612416
    Free (estimated):\t\t   1935151104\t(min: 1043906560)
    Free (statfs, df):\t\t   1934102528
"""


def test_free_bytes_takes_the_lower_btrfs_estimate(monkeypatch):
    monkeypatch.setattr(subvolumes, "_run", lambda *args: USAGE)
    assert subvolumes.free_bytes("/srv") == 1043906560
    monkeypatch.setattr(subvolumes, "_run", lambda *args: "Overall:\n")
    assert subvolumes.free_bytes("/srv") is None


def test_exclusive_bytes_reads_btrfs_filesystem_du(monkeypatch):
    out = (
        "     Total   Exclusive  Set shared  Filename\n"
        " 104857600        8192   104849408  /srv/a/back-1\n"
        "         0           0           0  /srv/a/back 2\n"
    )
    monkeypatch.setattr(subvolumes, "_run", lambda *args: out)
    assert subvolumes.exclusive_bytes(["/srv/a/back-1", "/srv/a/back 2"]) == {
        "/srv/a/back-1": 8192,
        "/srv/a/back 2": 0,
    }


def test_the_ioctl_arguments_carry_one_plain_name():
    args = subvolumes._vol_args_v2("incomplete_back-T", source_fd=7, flags=2)
    assert len(args) == 4096
    assert struct.unpack_from("=qQQ", args) == (7, 0, 2)
    assert bytes(args[56:73]) == b"incomplete_back-T"
    assert args[73] == 0
    for bad in ("", ".", "..", "a/b", "x" * 4040):
        with pytest.raises(subvolumes.SubvolumeError):
            subvolumes._vol_args_v2(bad)


MOUNTS = (
    "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
    "30 22 0:40 / /srv rw shared:1 - tmpfs tmpfs rw\n"
    "31 30 0:41 / /srv/backup\\040drive rw - btrfs /dev/loop0 rw\n"
    "32 30 0:42 / /srv/backup rw - xfs /dev/sdb1 rw\n"
    "33 32 0:43 / /srv/backup rw - btrfs /dev/loop1 rw\n"
)


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/", "ext4"),
        ("/srv", "tmpfs"),
        ("/srv/backup drive/laptop", "btrfs"),
        # The later mount at the same point is the one on top.
        ("/srv/backup", "btrfs"),
        # A common prefix of names is not a parent.
        ("/srv/backupx", "tmpfs"),
    ],
)
def test_the_file_system_comes_from_the_mount_table(tmp_path, monkeypatch, path, kind):
    table = tmp_path / "mountinfo"
    table.write_text(MOUNTS)
    monkeypatch.setattr(subvolumes, "MOUNTINFO", str(table))
    monkeypatch.setattr(os.path, "realpath", lambda p: p)
    monkeypatch.setattr(os, "stat", lambda p: None)
    assert subvolumes.filesystem_type(path) == kind


def test_a_missing_path_has_no_file_system(tmp_path):
    with pytest.raises(subvolumes.SubvolumeError, match="cannot read the file system"):
        subvolumes.filesystem_type(str(tmp_path / "missing"))


def test_the_helper_seals_no_run_recorded_without_its_subvolume_id(helper, tmp_path):
    # A run started by an older version: its name alone is trusted for nothing.
    config, done = helper
    name = now_name()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "started-laptop.json").write_text(json.dumps([name]))
    with pytest.raises(gate.GateRefused, match="recorded no subvolume id"):
        root_helper.cmd_subvolume(config, "seal", name)
    assert done == []


def test_a_subvolume_that_is_not_the_one_root_started_is_refused_and_alerted(helper, monkeypatch):
    config, done = helper
    alerts = []
    monkeypatch.setattr(root_helper, "run_alert", lambda c, event, text: alerts.append(event))

    def swapped(area, name, expected_id):
        raise snap.IdentityError("%s is subvolume 301, not the run 300 root started" % name)

    monkeypatch.setattr(snap, "seal_subvolume", swapped)
    name = now_name()
    assert root_helper.cmd_subvolume(config, "start", name) == 0
    with pytest.raises(gate.GateRefused, match="not the run 300 root started"):
        root_helper.cmd_subvolume(config, "seal", name)
    assert alerts == ["tamper"]
    # Still recorded: the next run resumes it, nothing was sealed.
    assert root_helper.StartedRuns(config.state_dir, "laptop").ids() == {name: 300}


def test_the_helper_acts_only_in_an_area_whose_names_are_roots(helper, tmp_path):
    # An area of the old layout (the account's own directory): the id check
    # is made on the descriptor, but the name is removed by name afterwards.
    config, done = helper
    os.chown(tmp_path / "laptop", 65534, 65534)
    for operation in ("start", "seal", "discard"):
        with pytest.raises(gate.GateRefused, match="is not root's yet"):
            root_helper.cmd_subvolume(config, operation, now_name())
    assert done == []


def test_a_fifo_planted_as_the_lock_is_refused_not_waited_on(tmp_path):
    area = tmp_path / "area"
    area.mkdir()
    os.mkfifo(area / snap.LOCK_FILE)
    with pytest.raises(snap.LayoutError, match="not a plain file"), snap.area_lock(str(area)):
        pass
