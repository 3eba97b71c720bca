# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of server_cli.py, including real rsync transfers through the gate.

The end-to-end tests stand a small script in for ssh and sshd's forced command:
rsync runs it as ``FAKE_SSH HOST rsync --server ...``, and it runs
``linkdest-server gate laptop`` with SSH_ORIGINAL_COMMAND set to the rest, as
sshd would.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import linkdest_testlib as lib
import pytest

from ansible_collections.linkdest.backup.plugins.module_utils import gate, mirror, server_cli
from ansible_collections.linkdest.backup.plugins.module_utils import manifest as mf
from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap

RSYNC = shutil.which("rsync")
ME = pwd.getpwuid(os.getuid()).pw_name
# .../ansible_collections/linkdest/backup/plugins/module_utils/server_cli.py
COLLECTIONS_PATH = str(Path(server_cli.__file__).parents[5])
LAPTOP_ARGV = "rsync --server -logDtpre.iLsfxCIvu --timeout=30 --delete . home/alice/etc"


# --- the receiver's command line ----------------------------------------------


@pytest.mark.parametrize(
    ("link_dests", "tail"),
    [
        (["back-2026-11-26T11_40_37"], ["--link-dest=../back-2026-11-26T11_40_37"]),
        (
            ["back-2026-11-26T11_40_37", "incomplete_back-2026-11-26T12_10_00"],
            [
                "--link-dest=../back-2026-11-26T11_40_37",
                "--link-dest=../incomplete_back-2026-11-26T12_10_00",
            ],
        ),
        ([], []),
    ],
    ids=["with-link-dest", "resuming", "first-backup"],
)
def test_receiver_argv_uses_only_server_paths(link_dests, tail):
    config = server_cli.Config(
        {"root": "/srv/backup", "rsync": "/usr/bin/rsync", "rsync_timeout": 600}
    )
    request = gate.parse_request(LAPTOP_ARGV)
    argv = server_cli.receiver_argv(config, request, link_dests, "incomplete_back-T")

    assert argv == [
        "/usr/bin/rsync",
        "--server",
        "-logDtpre.iLsfxCIvu",
        "--timeout=30",
        "--delete",
        "--fake-super",
        "--timeout=600",
        *tail,
        ".",
        "incomplete_back-T/",
    ]
    assert not any("alice" in word or "etc" in word for word in argv)
    # rsync takes the last of repeated options: the server's timeout wins, and
    # the server's --link-dest comes after everything the laptop sent.
    laptop_end = argv.index("--delete")
    assert argv.index("--timeout=600") > argv.index("--timeout=30")
    assert argv.index("--timeout=600") > laptop_end
    for name in link_dests:
        assert argv.index("--link-dest=../" + name) > laptop_end


# --- end to end through the gate ------------------------------------------------


class Server:
    """A backup root with one client whose account is the user running the tests."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.root = tmp_path / "root"
        self.area = self.root / "laptop"
        self.area.mkdir(parents=True)
        self.config = tmp_path / "server.json"
        self.write_config(ME)
        self.src = tmp_path / "src"
        self.src.mkdir()
        self.fake_ssh = tmp_path / "fake-ssh"
        gate_main = (
            "import sys; "
            "from ansible_collections.linkdest.backup.plugins.module_utils import server_cli; "
            "sys.exit(server_cli.main(sys.argv[1:]))"
        )
        self.fake_ssh.write_text(
            "#!/bin/sh\n"
            "# ssh HOST COMMAND...: drop the host; the rest is what sshd would put in\n"
            "# SSH_ORIGINAL_COMMAND before running the key's forced command.\n"
            "shift\n"
            'SSH_ORIGINAL_COMMAND="$*"\n'
            "export SSH_ORIGINAL_COMMAND\n"
            "PYTHONPATH=%s\n"
            "export PYTHONPATH\n"
            "exec %s -c %s --config %s gate laptop\n"
            % (
                shlex.quote(COLLECTIONS_PATH),
                shlex.quote(sys.executable),
                shlex.quote(gate_main),
                shlex.quote(str(self.config)),
            )
        )
        self.fake_ssh.chmod(0o755)

    def write_config(self, account: str) -> None:
        self.config.write_text(
            json.dumps(
                {
                    "root": str(self.root),
                    "rsync": RSYNC,
                    "rsync_timeout": 60,
                    "clients": {"laptop": account},
                }
            )
        )

    def backup(self, *extra: str) -> subprocess.CompletedProcess:
        """What the laptop runs: its rsync, through our stand-in for ssh."""
        return subprocess.run(
            [RSYNC, "-a", "--delete", *extra, "-e", str(self.fake_ssh)]
            + [str(self.src) + "/", "server:ignored"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def gate(self, monkeypatch, command: str | None) -> int:
        """The forced command, in this process, as sshd would run it."""
        if command is None:
            monkeypatch.delenv("SSH_ORIGINAL_COMMAND", raising=False)
        else:
            monkeypatch.setenv("SSH_ORIGINAL_COMMAND", command)
        return server_cli.main(["--config", str(self.config), "gate", "laptop"])

    def tree(self) -> dict[str, list[str]]:
        """Every entry of the root, with the target of each symlink."""
        found = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in sorted(dirnames + filenames):
                path = os.path.join(dirpath, name)
                found[os.path.relpath(path, self.root)] = (
                    os.readlink(path) if os.path.islink(path) else None
                )
        return found


@pytest.fixture
def server(tmp_path):
    return Server(tmp_path)


def finished(area: Path) -> list[str]:
    return [s.name for s in snap.list_snapshots(str(area))]


def incomplete(area: Path) -> list[str]:
    return [s.name for s in snap.list_incomplete(str(area))]


def test_two_backups_share_unchanged_files(server, monkeypatch, capsys):
    (server.src / "sub").mkdir()
    (server.src / "sub" / "unchanged").write_text("the same bytes in both snapshots")
    (server.src / "changed").write_text("first")
    (server.src / "link").symlink_to("/etc/passwd")

    first = server.backup()
    assert first.returncode == 0, first.stderr
    assert incomplete(server.area) != []
    assert finished(server.area) == []
    assert server.gate(monkeypatch, "finalize 0") == 0
    name1 = capsys.readouterr().out.strip()
    assert finished(server.area) == [name1]
    assert incomplete(server.area) == []
    assert os.readlink(server.area / "current") == name1
    snap1 = server.area / name1
    assert (snap1 / "sub" / "unchanged").read_text() == "the same bytes in both snapshots"
    # --fake-super keeps the symlink as a plain file holding its target, with
    # the real type in an xattr: nothing on the server can follow it.
    assert not (snap1 / "link").is_symlink()
    assert (snap1 / "link").read_text() == "/etc/passwd"
    assert os.getxattr(snap1 / "link", "user.rsync.%stat").startswith(b"120777 ")

    (server.src / "changed").write_text("second, longer")
    second = server.backup()
    assert second.returncode == 0, second.stderr
    assert server.gate(monkeypatch, "finalize 0") == 0
    name2 = capsys.readouterr().out.strip()

    assert finished(server.area) == [name1, name2]
    assert os.readlink(server.area / "current") == name2
    snap2 = server.area / name2
    assert (snap2 / "sub" / "unchanged").stat().st_ino == (
        snap1 / "sub" / "unchanged"
    ).stat().st_ino
    assert (snap2 / "changed").stat().st_ino != (snap1 / "changed").stat().st_ino
    assert (snap1 / "changed").read_text() == "first"
    assert (snap2 / "changed").read_text() == "second, longer"

    assert server.gate(monkeypatch, "list") == 0
    assert capsys.readouterr().out.splitlines() == [name1, name2 + " current"]


@pytest.mark.parametrize(
    "command",
    [
        "rsync --server --inplace -logDtpre.iLsfxCIvu . x",
        "rsync --server -logDtpre.iLsfxCIvu --link-dest=/ . x",
        "rsync --server --sender -logDtpre.iLsfxCIvu . x",
        "bash",
        "finalize",
        "",
        None,
    ],
    ids=["inplace", "link-dest", "sender", "bash", "finalize-no-code", "empty", "interactive"],
)
def test_refused_commands_change_nothing(server, monkeypatch, capsys, command):
    (server.area / ("back-" + "2026-11-26T11_40_37")).mkdir()
    (server.area / "current").symlink_to("back-2026-11-26T11_40_37")
    before = server.tree()
    assert server.gate(monkeypatch, command) == server_cli.EXIT_REFUSED
    assert server.tree() == before
    out = capsys.readouterr()
    assert out.out == ""
    assert "refused" in out.err


def test_gate_refuses_another_account(server, monkeypatch):
    server.write_config("somebody-else")
    before = server.tree()
    assert server.gate(monkeypatch, "list") == server_cli.EXIT_REFUSED
    assert server.tree() == before


def test_gate_refuses_an_unknown_client(server, monkeypatch):
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "list")
    code = server_cli.main(["--config", str(server.config), "gate", "../laptop"])
    assert code == server_cli.EXIT_REFUSED


def test_refused_rsync_option_over_the_wire_changes_nothing(server):
    (server.src / "file").write_text("data")
    before = server.tree()
    result = server.backup("--inplace")
    assert result.returncode != 0
    assert "refused" in result.stderr
    assert server.tree() == before


def test_failed_transfer_stays_incomplete_and_current_stays(server, monkeypatch, capsys):
    (server.src / "file").write_text("data")
    assert server.backup().returncode == 0
    assert server.gate(monkeypatch, "finalize 0") == 0
    name1 = capsys.readouterr().out.strip()

    (server.src / "file").write_text("more data")
    assert server.backup().returncode == 0
    pending = incomplete(server.area)
    assert len(pending) == 1

    assert server.gate(monkeypatch, "finalize 12") == server_cli.EXIT_NOT_FINALIZED
    assert incomplete(server.area) == pending
    assert finished(server.area) == [name1]
    assert os.readlink(server.area / "current") == name1
    assert "kept" in capsys.readouterr().err


def test_finalize_without_a_transfer(server, monkeypatch):
    assert server.gate(monkeypatch, "finalize 0") == server_cli.EXIT_NOT_FINALIZED
    assert finished(server.area) == []


def test_an_interrupted_transfer_is_resumed_not_sent_again(server, monkeypatch, capsys):
    (server.src / "big.bin").write_bytes(os.urandom(512 * 1024))
    (server.src / "small.txt").write_text("small\n")
    assert server.backup().returncode == 0
    # The laptop saw a failure (say a dropped connection): the run stays incomplete.
    assert server.gate(monkeypatch, "finalize 12") == server_cli.EXIT_NOT_FINALIZED
    interrupted = incomplete(server.area)
    assert len(interrupted) == 1
    capsys.readouterr()

    second = server.backup("--stats")
    assert second.returncode == 0, second.stderr
    # Everything had arrived: nothing is sent again, it is linked.
    assert "Number of regular files transferred: 0" in second.stdout
    inodes = {
        name: os.stat(server.area / interrupted[0] / name).st_ino
        for name in ("big.bin", "small.txt")
    }
    assert server.gate(monkeypatch, "finalize 0") == 0
    name = capsys.readouterr().out.strip()
    for rel, ino in inodes.items():
        assert os.stat(server.area / name / rel).st_ino == ino
    # The resumed run superseded the interrupted one, which is gone now.
    assert incomplete(server.area) == []
    assert finished(server.area) == [name]


# --- the snapshot lifecycle: prune, space guard, adoption -------------------------

DAY_OLD = "2026-01-10T08_00_00"  # two snapshots of one day, long ago:
DAY_OLD_LATER = "2026-01-10T09_00_00"  # thinning keeps the first only
WEEK_OLD = "2026-01-03T08_00_00"


def configure(server: Server, **settings) -> None:
    data = json.loads(server.config.read_text())
    data.update(settings)
    server.config.write_text(json.dumps(data))


def make_old_snapshots(area: Path, *stamps: str) -> None:
    for stamp in stamps:
        (area / ("back-" + stamp)).mkdir()
        (area / ("back-" + stamp) / "file").write_text(stamp)


def journal(area: Path) -> list[dict]:
    path = area / server_cli.JOURNAL
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class FakeDrive:
    """statvfs of a 100 MiB drive with ``free`` MiB and ``free_inodes`` free."""

    def __init__(self, free: int = 50, free_inodes: int = 500):
        self.free = free
        self.free_inodes = free_inodes

    def __call__(self, _path):
        from types import SimpleNamespace

        return SimpleNamespace(
            f_frsize=1024 * 1024,
            f_blocks=100,
            f_bavail=self.free,
            f_files=1000,
            f_favail=self.free_inodes,
        )


@pytest.fixture
def drive(monkeypatch):
    fake = FakeDrive()
    monkeypatch.setattr(server_cli, "STATVFS", fake)
    return fake


def test_finalize_prunes_the_area_and_journals_why(server, monkeypatch, capsys, drive):
    make_old_snapshots(server.area, WEEK_OLD, DAY_OLD, DAY_OLD_LATER)
    configure(server, retention={"min_keep": 1, "daily_days": 0})
    (server.src / "file").write_text("new")
    assert server.backup().returncode == 0

    assert server.gate(monkeypatch, "finalize 0") == 0

    out = capsys.readouterr()
    name = out.out.strip()
    assert out.out == name + "\n"  # the laptop reads the snapshot's name from stdout
    assert finished(server.area) == ["back-" + WEEK_OLD, "back-" + DAY_OLD, name]
    assert "pruned 1 snapshot(s): back-%s" % DAY_OLD_LATER in out.err
    pruned = {e["pruned"]: e["rule"] for e in journal(server.area) if "pruned" in e}
    assert pruned == {
        "back-" + DAY_OLD_LATER: "thinned (weekly 2026-W02 kept by back-%s)" % DAY_OLD,
    }


def test_a_failed_backup_prunes_nothing(server, monkeypatch, capsys, drive):
    make_old_snapshots(server.area, DAY_OLD, DAY_OLD_LATER)
    configure(server, retention={"min_keep": 1})
    (server.src / "file").write_text("new")
    assert server.backup().returncode == 0
    assert server.gate(monkeypatch, "finalize 12") == server_cli.EXIT_NOT_FINALIZED
    assert finished(server.area) == ["back-" + DAY_OLD, "back-" + DAY_OLD_LATER]
    assert "pruned" not in capsys.readouterr().err


def test_finalize_never_runs_the_space_guard_only_warns(server, monkeypatch, capsys, drive):
    # A laptop must not be able to trigger deletions by uploading junk: even
    # with the protection window off, its finalize only thins its own area.
    make_old_snapshots(server.area, WEEK_OLD, DAY_OLD)
    configure(server, retention={"min_keep": 1}, space_guard={"protect_days": 0})
    drive.free = 5  # 5% free: below the default 10%, above the 2% floor
    (server.src / "file").write_text("new")
    assert server.backup().returncode == 0

    assert server.gate(monkeypatch, "finalize 0") == 0

    out = capsys.readouterr()
    name = out.out.strip()
    assert finished(server.area) == ["back-" + WEEK_OLD, "back-" + DAY_OLD, name]
    assert not [e for e in journal(server.area) if "pruned" in e]
    assert (
        "warning: backup drive short of room: 5.0 MiB free (5.0%) is below 10%"
        " (the daily prune makes room)" in out.err
    )


def test_daily_prune_space_guard_spares_the_protected_days(server, capsys, drive):
    # Two snapshots long ago and two of the last days, as after a flood: the
    # guard may remove only the older of the old ones; the newest before the
    # protected days stays, so the state before the flood can be restored.
    recent = [
        (datetime.now(timezone.utc) - timedelta(days=days)).strftime("%Y-%m-%dT%H_%M_%S")
        for days in (3, 2)
    ]
    make_old_snapshots(server.area, WEEK_OLD, DAY_OLD, *recent)
    configure(server, retention={"min_keep": 1})
    drive.free = 5

    assert prune_cli(server, "--all") == 0

    out = capsys.readouterr()
    assert finished(server.area) == ["back-" + DAY_OLD] + ["back-" + r for r in recent]
    assert "laptop: 3 kept, 1 removed" in out.out
    assert (
        "still short of room after the space guard removed all it may (min_keep 1 per laptop,"
        " the last 30 days and the snapshot before them stay): 5.0 MiB free (5.0%) is below 10%"
        in out.err
    )


def test_a_prune_failure_never_undoes_the_finalize(server, monkeypatch, capsys, drive):
    make_old_snapshots(server.area, DAY_OLD, DAY_OLD_LATER)
    configure(server, retention={"min_keep": 1})

    def broken(*_args, **_kwargs):
        raise OSError(5, "Input/output error")

    (server.src / "file").write_text("new")
    assert server.backup().returncode == 0
    monkeypatch.setattr(snap, "delete_snapshot", broken)
    assert server.gate(monkeypatch, "finalize 0") == 0
    out = capsys.readouterr()
    assert out.out.strip() in finished(server.area)
    assert "warning: prune after finalize failed" in out.err


@pytest.mark.parametrize(
    ("free", "free_inodes", "message"),
    [
        (1, 500, "1.0 MiB free (1.0%) is below 2%"),
        (50, 5, "5 inodes free (0.5%) is below 1%"),
    ],
    ids=["bytes", "inodes"],
)
def test_receive_is_refused_below_the_hard_floor(
    server, monkeypatch, capsys, drive, free, free_inodes, message
):
    make_old_snapshots(server.area, DAY_OLD)
    drive.free, drive.free_inodes = free, free_inodes
    before = server.tree()

    code = server.gate(monkeypatch, LAPTOP_ARGV)

    assert code == server_cli.EXIT_NO_SPACE
    err = capsys.readouterr().err
    assert err.startswith("linkdest-server: refused: backup drive %s is nearly full" % server.root)
    assert message in err
    assert server.tree() == before  # no incomplete snapshot, not even the lock file


def test_refusal_over_the_wire_reaches_the_laptops_rsync(server, tmp_path):
    # A config floor above what any real drive has free: the gate refuses.
    configure(
        server,
        space_guard={"min_free_percent": 100, "floor_free_percent": 100},
    )
    (server.src / "file").write_text("data")
    before = server.tree()
    result = server.backup()
    assert result.returncode != 0
    assert "linkdest-server: refused: backup drive" in result.stderr
    assert "is nearly full" in result.stderr
    assert server.tree() == before


def test_bad_lifecycle_settings_fail_clearly(server, monkeypatch, capsys):
    configure(server, retention={"min_keep": 0})
    assert server.gate(monkeypatch, "list") == 1
    assert "min_keep must be 1 or more" in capsys.readouterr().err


def prune_cli(server: Server, *args: str) -> int:
    return server_cli.main(["--config", str(server.config), "prune", *args])


def test_prune_dry_run_explains_every_snapshot_and_changes_nothing(server, capsys, drive):
    make_old_snapshots(server.area, WEEK_OLD, DAY_OLD, DAY_OLD_LATER, "2026-11-20T10_00_00")
    (server.area / "current").symlink_to("back-" + DAY_OLD_LATER)
    configure(server, retention={"min_keep": 1, "daily_days": 0})
    before = server.tree()

    assert prune_cli(server, "laptop", "--dry-run") == 0

    assert server.tree() == before
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "laptop back-%s keep: weekly 2026-W01" % WEEK_OLD,
        "laptop back-%s keep: weekly 2026-W02" % DAY_OLD,
        "laptop back-%s keep: current" % DAY_OLD_LATER,
        "laptop back-2026-11-20T10_00_00 keep: newest",
        "laptop: 4 kept, 0 to remove (dry run, nothing changed)",
        "drive: 50.0 MiB free (50.0%), 500 inodes free (50.0%) (estimated)",
    ]


def test_prune_removes_what_the_dry_run_said(server, capsys, drive):
    make_old_snapshots(server.area, WEEK_OLD, DAY_OLD, DAY_OLD_LATER, "2026-11-20T10_00_00")
    configure(server, retention={"min_keep": 1, "daily_days": 0, "weekly_weeks": 0})
    assert prune_cli(server, "--all", "--dry-run") == 0
    dry = capsys.readouterr().out.splitlines()
    assert (
        "laptop back-%s remove: thinned (weekly 2026-W02 kept by back-%s)"
        % (
            DAY_OLD_LATER,
            DAY_OLD,
        )
        in dry
    )

    assert prune_cli(server, "--all") == 0
    real = capsys.readouterr().out.splitlines()
    assert real[:-2] == dry[:-2]
    assert real[-2] == "laptop: 3 kept, 1 removed"
    assert finished(server.area) == [
        "back-" + WEEK_OLD,
        "back-" + DAY_OLD,
        "back-2026-11-20T10_00_00",
    ]
    # The lock file now exists, owned like the area, so the laptop can still lock it.
    lock = server.area / snap.LOCK_FILE
    assert lock.stat().st_uid == server.area.stat().st_uid

    assert prune_cli(server, "laptop", "--quiet") == 0
    assert capsys.readouterr() == ("", "")


def test_prune_of_a_busy_area_waits_then_gives_up(server, monkeypatch, capsys, drive):
    make_old_snapshots(server.area, DAY_OLD, DAY_OLD_LATER)
    monkeypatch.setattr(server_cli, "PRUNE_LOCK_WAIT", 0)
    with snap.area_lock(str(server.area)):
        assert prune_cli(server, "laptop") == server_cli.EXIT_BUSY
        assert prune_cli(server, "--all") == 0
    out = capsys.readouterr()
    assert "busy" in out.err
    assert "laptop: busy (a backup is running), skipped" in out.out
    assert len(finished(server.area)) == 2


def test_prune_refuses_an_unknown_client(server, capsys):
    assert prune_cli(server, "nobody") == 1
    assert "unknown client" in capsys.readouterr().err


def test_list_usage_shows_what_each_snapshot_alone_holds(server, capsys):
    make_old_snapshots(server.area, DAY_OLD)
    second = server.area / ("back-" + DAY_OLD_LATER)
    second.mkdir()
    os.link(server.area / ("back-" + DAY_OLD) / "file", second / "file")
    (second / "big").write_bytes(os.urandom(64 * 1024))
    assert server_cli.main(["--config", str(server.config), "list", "laptop", "--usage"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("back-%s adds " % DAY_OLD)
    assert lines[0].endswith(" in 1 inodes")  # its directory; the file is shared
    assert lines[1].endswith(" in 2 inodes")
    assert server_cli.main(["--config", str(server.config), "list", "laptop"]) == 0
    assert capsys.readouterr().out.splitlines() == ["back-" + DAY_OLD, "back-" + DAY_OLD_LATER]


# --- adoption of an article-made tree ---------------------------------------------------


class Chowns:
    """Stands in for chown (the tests need not run as root): records each call."""

    def __init__(self, monkeypatch):
        self.calls = []
        real_chown = os.chown

        def fchown(fd, uid, gid):
            self.calls.append((os.readlink("/proc/self/fd/%d" % fd), uid, gid))

        def chown(path, uid, gid, *, dir_fd=None, follow_symlinks=True):
            assert follow_symlinks is False
            assert dir_fd is not None
            where = os.readlink("/proc/self/fd/%d" % dir_fd)
            self.calls.append((os.path.join(where, path), uid, gid))

        monkeypatch.setattr(os, "fchown", fchown)
        monkeypatch.setattr(os, "chown", chown)
        self.real_chown = real_chown


def article_tree(area: Path, outside: Path) -> None:
    """What the article's script leaves: local-time names, hard links between
    snapshots, an absolute `current`, a leftover incomplete run."""
    first = area / "back-2026-01-10T08_00_00"
    (first / "docs").mkdir(parents=True)
    (first / "docs" / "same.txt").write_text("unchanged")
    (first / "docs" / "tool").write_text("#!/bin/sh\n")
    (first / "docs" / "tool").chmod(0o4755)
    (first / "escape").symlink_to(outside)
    second = area / "back-2026-01-11T08_00_00"
    (second / "docs").mkdir(parents=True)
    os.link(first / "docs" / "same.txt", second / "docs" / "same.txt")
    (area / "incomplete_back-2026-01-12T08_00_00").mkdir()
    (area / "current").symlink_to(second)  # absolute, as `ln -s $TARGET/back-...` makes
    (area / "notes.txt").write_text("not a snapshot: left alone")
    (area / snap.LOCK_FILE).write_text("")  # say root made it: the account could not lock
    (area / "back-2026-01-13T08_00_00").symlink_to(outside)  # not a snapshot either


def test_adopt_hands_the_tree_over_by_descriptor_and_records_fake_super(
    server, monkeypatch, capsys, tmp_path
):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("never touched")
    article_tree(server.area, outside)
    me = os.stat(server.area)
    fake_uid = me.st_uid + 4242
    account = pwd.struct_passwd(("bk-laptop", "x", fake_uid, me.st_gid + 1, "", "/", "/bin/sh"))
    monkeypatch.setattr(server_cli.pwd, "getpwnam", lambda name: account)
    chowns = Chowns(monkeypatch)

    assert server_cli.main(["--config", str(server.config), "adopt", "laptop"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out == [
        "adopted %s (1 entries) to bk-laptop" % snap.LOCK_FILE,
        "adopted back-2026-01-10T08_00_00 (5 entries) to bk-laptop",
        "adopted back-2026-01-11T08_00_00 (3 entries) to bk-laptop",
        "adopted current (1 entries) to bk-laptop",
        "adopted incomplete_back-2026-01-12T08_00_00 (1 entries) to bk-laptop",
        "made 2 manifest(s) for laptop",
    ]
    for name in ("back-2026-01-10T08_00_00", "back-2026-01-11T08_00_00"):
        mf.load(str(server.root), "laptop", name)
    touched = [path for path, uid, gid in chowns.calls]
    assert all(uid == fake_uid and gid == me.st_gid + 1 for _p, uid, gid in chowns.calls)
    assert all(path.startswith(str(server.area) + "/") for path in touched)
    assert str(outside) not in " ".join(touched)
    assert os.listxattr(outside / "secret") == []
    # Bottom-up: a snapshot's own directory changes last.
    first = str(server.area / "back-2026-01-10T08_00_00")
    assert touched.index(first) > max(i for i, p in enumerate(touched) if p.startswith(first + "/"))
    # The old owner and mode, as rsync --fake-super keeps them.
    tool = server.area / "back-2026-01-10T08_00_00" / "docs" / "tool"
    assert os.getxattr(tool, server_cli.FAKE_SUPER_XATTR) == b"104755 0,0 %d:%d" % (
        me.st_uid,
        me.st_gid,
    )
    assert os.getxattr(server.area / "back-2026-01-10T08_00_00", server_cli.FAKE_SUPER_XATTR) == (
        b"40%o 0,0 %d:%d" % (me.st_mode & 0o7777, me.st_uid, me.st_gid)
    )
    # The symlinks changed owner themselves (lchown), never what they point to.
    assert str(server.area / "back-2026-01-10T08_00_00" / "escape") in touched
    assert str(server.area / "current") in touched
    assert str(server.area / "notes.txt") not in touched
    assert str(server.area / snap.LOCK_FILE) in touched


def test_adopt_dry_run_and_an_adopted_area_change_nothing(server, monkeypatch, capsys, tmp_path):
    article_tree(server.area, tmp_path)
    me = os.stat(server.area)
    account = pwd.struct_passwd(("bk-laptop", "x", me.st_uid + 1, me.st_gid, "", "/", "/bin/sh"))
    monkeypatch.setattr(server_cli.pwd, "getpwnam", lambda name: account)
    chowns = Chowns(monkeypatch)
    before = server.tree()
    assert server_cli.main(["--config", str(server.config), "adopt", "laptop", "--dry-run"]) == 0
    assert "would adopt back-2026-01-10T08_00_00 (5 entries)" in capsys.readouterr().out
    assert chowns.calls == []
    assert server.tree() == before
    # An area the account already owns: nothing to say, nothing done (its
    # manifests come from the daily `manifest --all`).
    mine = pwd.struct_passwd(("bk-laptop", "x", me.st_uid, me.st_gid, "", "/", "/bin/sh"))
    monkeypatch.setattr(server_cli.pwd, "getpwnam", lambda name: mine)
    assert server_cli.main(["--config", str(server.config), "adopt", "laptop"]) == 0
    assert capsys.readouterr().out == ""
    assert chowns.calls == []


def test_an_adopted_tree_is_linked_by_the_next_backup(server, monkeypatch, capsys, tmp_path):
    article_tree(server.area, tmp_path)
    same = server.area / "back-2026-01-11T08_00_00" / "docs" / "same.txt"
    (server.src / "docs").mkdir()
    (server.src / "docs" / "same.txt").write_text("unchanged")
    os.utime(same, (1700000000, 1700000000))
    os.utime(server.src / "docs" / "same.txt", (1700000000, 1700000000))
    os.chmod(server.src / "docs" / "same.txt", same.stat().st_mode & 0o7777)
    me = os.stat(server.area)
    account = pwd.struct_passwd(("bk-laptop", "x", me.st_uid + 1, me.st_gid, "", "/", "/bin/sh"))
    monkeypatch.setattr(server_cli.pwd, "getpwnam", lambda name: account)
    Chowns(monkeypatch)
    assert server_cli.main(["--config", str(server.config), "adopt", "laptop"]) == 0
    monkeypatch.undo()
    capsys.readouterr()

    assert server.backup().returncode == 0
    assert server.gate(monkeypatch, "finalize 0") == 0
    name = capsys.readouterr().out.strip()
    # Linked against the article's absolute `current`, through the recorded owner.
    assert (server.area / name / "docs" / "same.txt").stat().st_ino == same.stat().st_ino


def test_a_laptop_on_btrfs_is_refused_when_the_drive_is_not_btrfs(server):
    # The drive here is the test machine's temporary directory, not btrfs.
    configure(server, backend="hardlink", backends={"laptop": "btrfs"})
    (server.src / "file").write_text("data")
    result = server.backup()
    assert result.returncode != 0
    assert "refused: backend btrfs, but backup drive %s is not btrfs" % server.root in (
        result.stderr
    )
    assert os.listdir(server.area) == []
    # The same laptop on the server's hard links goes through.
    configure(server, backends={})
    assert server.backup().returncode == 0
    assert len(incomplete(server.area)) == 1


# --- manifests and verify ---------------------------------------------------------


def backup_and_finalize(server: Server, monkeypatch, capsys) -> str:
    result = server.backup()
    assert result.returncode == 0, result.stderr
    assert server.gate(monkeypatch, "finalize 0") == 0
    return capsys.readouterr().out.strip()


def test_finalize_writes_a_manifest_reading_only_new_content(server, monkeypatch, capsys):
    (server.src / "kept").write_text("kept " * 1000)
    (server.src / "changed").write_text("first")
    name1 = backup_and_finalize(server, monkeypatch, capsys)
    (server.src / "changed").write_text("second")
    name2 = backup_and_finalize(server, monkeypatch, capsys)
    for name in (name1, name2):
        entries = mf.load(str(server.root), "laptop", name).by_path()
        assert sorted(entries) == ["changed", "kept"]
        assert entries["changed"].size == len((server.area / name / "changed").read_bytes())
    # Made before stdout named the snapshot, so before the laptop's run ended.
    assert "no manifest" not in capsys.readouterr().err


def test_manifest_through_sudo_names_one_finished_snapshot(server, monkeypatch, capsys):
    name = backup_and_finalize(server, monkeypatch, capsys)
    path = mf.manifest_path(str(server.root), "laptop", name)
    os.unlink(path)
    monkeypatch.setenv("SUDO_UID", str(os.getuid()))  # the laptop's account asks root
    run = ["--config", str(server.config), "manifest"]
    for refused in (["--all"], ["incomplete_" + name], ["../" + name], []):
        assert server_cli.main(run + refused) == 1
        assert "refused" in capsys.readouterr().err
    assert not os.path.exists(path)
    assert server_cli.main(run + [name]) == 0
    first = Path(path).read_bytes()
    # A trusted manifest is never rewritten, whatever the snapshot holds now.
    (server.area / name / "extra").write_text("added after the fact")
    assert server_cli.main(run + [name]) == 0
    assert Path(path).read_bytes() == first

    # Only the newest snapshot: the one the account's finalize just made.
    (server.area / name / "extra").unlink()
    (server.src / "second").write_text("a second snapshot")
    monkeypatch.delenv("SUDO_UID")
    newer = backup_and_finalize(server, monkeypatch, capsys)
    monkeypatch.setenv("SUDO_UID", str(os.getuid()))
    os.unlink(path)
    assert server_cli.main(run + [name]) == 1
    assert "is not the newest snapshot" in capsys.readouterr().err
    # Root's daily catch-up makes it, byte for byte as before.
    monkeypatch.delenv("SUDO_UID")
    assert server_cli.main(run + ["--all", "--quiet"]) == 0
    assert Path(path).read_bytes() == first
    mf.load(str(server.root), "laptop", newer)


def mirror_setup(server: Server, monkeypatch) -> Path:
    """A second drive the real mirror fills, as the backup_mirror role sets it up."""
    second = server.tmp / "drive2"
    second.mkdir()
    config_path = server.tmp / "mirror.json"
    config_path.write_text(
        json.dumps(
            {
                "source": str(server.root),
                "destination": str(second),
                "source_must_be_mount": False,
                "destination_must_be_mount": False,
                "state_dir": str(server.tmp / "mirror-state"),
                "log_file": str(server.tmp / "mirror.log"),
                "rsync": RSYNC,
            }
        )
    )
    monkeypatch.setattr(server_cli, "MIRROR_CONFIG", str(config_path))
    config = mirror.load_config(str(config_path))
    mirror.setup(config, datetime.now(timezone.utc))
    return second


def verify_cli(server: Server, *args: str) -> int:
    return server_cli.main(["--config", str(server.config), "verify", *args])


def test_verify_repairs_drive_one_from_the_mirror_and_reports_both_bad(server, monkeypatch, capsys):
    state = server.tmp / "state"
    data = json.loads(server.config.read_text())
    server.config.write_text(json.dumps(dict(data, state_dir=str(state))))
    (server.src / "a").write_text("alpha " * 500)
    (server.src / "b").write_text("bravo " * 500)
    names = [backup_and_finalize(server, monkeypatch, capsys) for _run in range(2)]
    second = mirror_setup(server, monkeypatch)
    mirror_config = mirror.load_config(server_cli.MIRROR_CONFIG)
    assert mirror.run(mirror_config).outcome == "ok"

    assert verify_cli(server) == 0
    assert "4 file(s) in 2 snapshot(s), 2 inode(s) read" in capsys.readouterr().out

    good = (server.area / names[0] / "a").read_bytes()
    lib.flip_byte(server.area / names[1] / "a")
    assert verify_cli(server) == 0  # repaired: nothing left open
    out = capsys.readouterr().out
    assert out.count("content differs from the manifest (repaired from %s)" % second) == 2
    for name in names:
        assert (server.area / name / "a").read_bytes() == good

    for root in (server.root, second):
        lib.flip_byte(root / "laptop" / names[0] / "b")
    assert verify_cli(server) == server_cli.EXIT_DAMAGED
    assert "the copy on %s is damaged too" % second in capsys.readouterr().out
    # Open damage stays in the check and its metrics until someone acts.
    metrics = server.tmp / "metrics"
    metrics.mkdir()
    data = json.loads(server.config.read_text())
    data["check"] = {"metrics_dir": str(metrics)}
    server.config.write_text(json.dumps(data))
    assert server_cli.main(["--config", str(server.config), "check"]) == 1
    assert "4 damaged file(s) not repaired" in capsys.readouterr().out
    text = (metrics / "linkdest.prom").read_text()
    assert 'linkdest_damaged_files{drive="%s"} 2' % server.root in text
    assert 'linkdest_damaged_files{drive="%s"} 2' % second in text


def test_verify_with_the_mirror_drive_unplugged_checks_drive_one_and_says_so(
    server, monkeypatch, capsys
):
    data = json.loads(server.config.read_text())
    server.config.write_text(json.dumps(dict(data, state_dir=str(server.tmp / "state"))))
    (server.src / "a").write_text("alpha " * 500)
    name = backup_and_finalize(server, monkeypatch, capsys)
    second = mirror_setup(server, monkeypatch)
    config_path = Path(server_cli.MIRROR_CONFIG)
    assert mirror.run(mirror.load_config(str(config_path))).outcome == "ok"
    # As the role writes it: the mirror drive must be a mount, and now it is not.
    mirror_data = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(dict(mirror_data, destination_must_be_mount=True)))
    before = sorted(p.name for p in second.iterdir())

    assert verify_cli(server, "--quiet", "--restart") == server_cli.EXIT_NOT_MOUNTED
    said = capsys.readouterr()
    assert said.out == ""
    assert (
        "verify: only the backup drive: the mirror drive is not available: destination drive"
        " %s is not a mount point" % second in said.err
    )
    assert sorted(p.name for p in second.iterdir()) == before
    # Drive one was still verified, and damage there outranks the missing drive.
    lib.flip_byte(server.area / name / "a")
    assert verify_cli(server, "--restart", "--no-repair") == server_cli.EXIT_DAMAGED
    assert "content differs from the manifest" in capsys.readouterr().out


def test_verify_slices_go_on_where_the_last_stopped(server, monkeypatch, capsys):
    data = json.loads(server.config.read_text())
    server.config.write_text(json.dumps(dict(data, state_dir=str(server.tmp / "state"))))
    monkeypatch.setattr(server_cli, "MIRROR_CONFIG", str(server.tmp / "none.json"))
    for index in range(5):
        (server.src / ("f%d" % index)).write_bytes(os.urandom(20000))
    name = backup_and_finalize(server, monkeypatch, capsys)
    lib.flip_byte(server.area / name / "f4")
    codes = []
    for _slice in range(10):
        # A tiny share of the drive: one file per run.
        codes.append(verify_cli(server, "--sample", "0.0000001"))
        if "end of the drive" in capsys.readouterr().out:
            break
    assert codes == [0, 0, 0, 0, server_cli.EXIT_DAMAGED]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--sample", "0"], "--sample"), (["--max-time", "-1"], "--max-time")],
)
def test_verify_refuses_bad_limits(server, capsys, args, message):
    assert verify_cli(server, *args) == 1
    assert message in capsys.readouterr().err


def test_the_gate_hands_a_laptop_its_own_manifest_and_no_other(server, monkeypatch, capsys):
    (server.src / "a.txt").write_text("alpha")
    name = backup_and_finalize(server, monkeypatch, capsys)
    assert server.gate(monkeypatch, "manifest") == 0
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0]) == {"snapshot": name, "verified": None, "damaged": []}
    assert lines[1].split() == [
        "linkdest-manifest",
        "1",
        "laptop",
        name,
        mf.filesystem_id(str(server.root)),
    ]
    assert lines[2].endswith(' "a.txt"')
    assert lines[3].startswith("end 1 ")
    elsewhere = "back-2000-01-01T00_00_00"
    assert server.gate(monkeypatch, "manifest %s" % elsewhere) == server_cli.EXIT_NOT_FOUND
    captured = capsys.readouterr()
    assert captured.out == ""
    assert elsewhere not in captured.err
    assert server.gate(monkeypatch, "manifest ../other/%s" % elsewhere) == server_cli.EXIT_REFUSED


# --- an unplugged backup drive --------------------------------------------------


def test_every_verb_names_an_unplugged_drive_and_writes_nothing_under_it(
    server, monkeypatch, capsys
):
    """The drive must be a mount point, and tmp_path's directory is not one:
    the server sees what it sees when the disk came loose. Every verb says
    so with exit 72; nothing appears under the mount point."""
    make_old_snapshots(server.area, WEEK_OLD)
    state, metrics = server.tmp / "state", server.tmp / "metrics"
    metrics.mkdir()
    alerts = server.tmp / "alerts"
    configure(
        server,
        root_must_be_mount=True,
        state_dir=str(state),
        check={"metrics_dir": str(metrics), "alert_command": 'echo "$1|$2" >> %s' % alerts},
    )
    before = server.tree()
    config = ["--config", str(server.config)]
    for verb in (
        ["list", "laptop"],
        ["finalize", "laptop", "incomplete_back-" + WEEK_OLD],
        ["prune", "laptop"],
        ["prune", "--all"],
        ["adopt", "laptop"],
        ["manifest", "--all"],
        ["verify"],
    ):
        assert server_cli.main(config + verb) == server_cli.EXIT_NOT_MOUNTED, verb
        said = capsys.readouterr()
        assert "backup drive %s is not mounted" % server.root in said.err, verb
    for request in ("list", "locate .", "manifest", "finalize 0", LAPTOP_ARGV):
        assert server.gate(monkeypatch, request) == server_cli.EXIT_NOT_MOUNTED, request
        assert "is not mounted" in capsys.readouterr().err
    assert server.tree() == before

    # The watchdog: one finding about the drive, not "no finished snapshot".
    assert server_cli.main(config + ["check"]) == server_cli.EXIT_NOT_MOUNTED
    out = capsys.readouterr().out
    assert "backup drive %s is not mounted (since " % server.root in out
    assert "no finished snapshot" not in out
    first = (state / "drive-absent-since").read_text()
    assert alerts.read_text().startswith("drive|backup drive %s is not mounted" % server.root)
    prom = (metrics / "linkdest.prom").read_text()
    assert "linkdest_drive_mounted 0" in prom
    assert "linkdest_snapshots" not in prom
    assert server_cli.main(config + ["check"]) == server_cli.EXIT_NOT_MOUNTED
    assert (state / "drive-absent-since").read_text() == first  # since when, kept
    assert server.tree() == before

    # The drive is back: the record of its absence goes, the check reads it.
    configure(server, root_must_be_mount=False)
    server_cli.main(config + ["check"])
    assert not (state / "drive-absent-since").exists()
    assert "linkdest_drive_mounted 1" in (metrics / "linkdest.prom").read_text()
