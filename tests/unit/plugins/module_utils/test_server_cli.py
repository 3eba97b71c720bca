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
from pathlib import Path

import pytest

from ansible_collections.linkdest.backup.plugins.module_utils import gate, server_cli
from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap

RSYNC = shutil.which("rsync")
ME = pwd.getpwuid(os.getuid()).pw_name
# .../ansible_collections/linkdest/backup/plugins/module_utils/server_cli.py
COLLECTIONS_PATH = str(Path(server_cli.__file__).parents[5])
LAPTOP_ARGV = "rsync --server -logDtpre.iLsfxCIvu --timeout=30 --delete . /home/alice/../../etc"


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
    assert not any("/home/alice" in word or "etc" in word for word in argv)
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
