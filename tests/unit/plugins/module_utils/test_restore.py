# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Everything back on a new laptop: `linkdest restore` of the whole folder,
the check against the snapshot's manifest, and the history going on.

Real rsync on both ends, the real gate (tests/lib/changelist_rig.py stands a
script in for ssh only); molecule's journey scenario does the same across
containers over real ssh.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pty
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from changelist_rig import Rig, no_racy_window, write

from ansible_collections.linkdest.backup.plugins.module_utils import client, codes


def awkward_folder(rig: Rig) -> None:
    """What real folders hold: spaces, Unicode, a symlink, private and
    executable modes, old times, an empty directory."""
    write(rig, "Taxes 2025/receipt (1).pdf", "%PDF receipt")
    write(rig, "Fotos/été à Zürich.jpg", "jpeg bytes")
    write(rig, "bin/run.sh", "#!/bin/sh\necho hi\n")
    write(rig, "secret.txt", "only me")
    os.chmod(rig.source / "bin" / "run.sh", 0o755)
    os.chmod(rig.source / "secret.txt", 0o600)
    (rig.source / "empty dir").mkdir()
    (rig.source / "latest").symlink_to("Taxes 2025/receipt (1).pdf")
    os.utime(rig.source / "Taxes 2025" / "receipt (1).pdf", (1_262_304_000, 1_262_304_000))


def tree(top: Path) -> dict[str, tuple]:
    """Every path below top: type, mode, mtime (s), content or link target."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                what = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                what = ("file", Path(path).read_bytes(), int(st.st_mtime))
            else:
                what = ("dir",)
            found[os.path.relpath(path, top)] = (*what, stat.S_IMODE(st.st_mode))
    return found


def new_laptop(rig: Rig, tmp_path: Path, empty: bool = True) -> client.Linkdest:
    """Another machine with the same area: its own folder and state."""
    source = tmp_path / "new" / "Dropbox"
    source.mkdir(parents=True)
    settings = dataclasses.replace(
        rig.settings, source=str(source), log_file=str(tmp_path / "new-state" / "linkdest.log")
    )
    os.makedirs(settings.state_dir)
    command = client.Linkdest(settings, quiet=True)
    command.ssh_program = rig.fake_ssh
    return command


def restore(laptop: client.Linkdest, *args) -> int:
    """`linkdest restore ...`: its exit code."""
    try:
        return laptop.restore(*args)
    except client.Finished as finished:
        return finished.code


@pytest.fixture
def rig(tmp_path):
    with no_racy_window():
        rig = Rig(tmp_path)
        awkward_folder(rig)
        rig.backup()
        write(rig, "Fotos/new.jpg", "a later photo")
        rig.backup()
        yield rig


def test_everything_back_into_the_empty_folder_and_the_history_goes_on(rig, tmp_path, capsys):
    newest = rig.finished()[-1]
    laptop = new_laptop(rig, tmp_path)
    source = Path(laptop.settings.source)
    assert restore(laptop, None, None, str(source.parent), False) == 0
    said = capsys.readouterr().out
    assert "restored . from %s to %s" % (newest, source) in said
    assert "check: 6 file(s) the same as in %s, 0 not" % newest in said
    assert "the next backup continues from %s" % newest in said
    assert tree(source) == tree(rig.source)

    # The next backup on the new laptop is a change list against the
    # inherited snapshot: what did not change is the old laptop's inode.
    write(rig, "unused", "")  # (the old laptop's folder is not read again)
    (source / "Fotos" / "from the new laptop.jpg").write_text("new")
    assert laptop.backup() == 0
    status = laptop.status.read()
    assert status["last_kind"] == "changes", status
    after = status["last_snapshot"]
    assert rig.finished()[-2:] == [newest, after]
    for name in ("secret.txt", "Taxes 2025/receipt (1).pdf", "Fotos/été à Zürich.jpg"):
        assert (rig.area / after / name).stat().st_ino == (rig.area / newest / name).stat().st_ino
    assert (rig.area / after / "Fotos" / "from the new laptop.jpg").read_text() == "new"


def test_an_older_snapshot_comes_back_but_the_next_backup_is_full(rig, tmp_path, capsys):
    first = rig.finished()[0]
    laptop = new_laptop(rig, tmp_path)
    source = Path(laptop.settings.source)
    assert restore(laptop, None, first, str(source.parent), False) == 0
    assert not (source / "Fotos" / "new.jpg").exists()
    before = tree(rig.source)
    del before["Fotos/new.jpg"]
    assert tree(source) == before
    assert "the next backup continues" not in capsys.readouterr().out
    # The record names the older snapshot: the server's current is newer,
    # so the server asks for everything, and the run is a full one.
    assert laptop.backup() == 0
    assert laptop.status.read()["last_kind"] == "full"


def test_a_restore_never_overwrites_and_says_what_is_missing(rig, tmp_path, capsys):
    laptop = new_laptop(rig, tmp_path)
    source = Path(laptop.settings.source)
    (source / "mine.txt").write_text("not in any snapshot")
    assert restore(laptop, None, None, str(source.parent), False) == codes.EXIT_EXISTS
    assert "exists; not overwriting it" in capsys.readouterr().err
    assert sorted(os.listdir(source)) == ["mine.txt"]

    # Elsewhere, the default place; then the same again is refused.
    home = tmp_path / "home"
    assert restore(laptop, None, None, str(home), False) == 0
    assert restore(laptop, None, None, str(home), False) == codes.EXIT_EXISTS
    assert restore(laptop, str(source / "no such file"), None, str(home), False) == 67
    assert restore(laptop, None, "1999-01-01T00:00", str(home), False) == 67

    # --overwrite restores over what is there and keeps the rest, but a
    # folder that held other files is no record for a change list.
    assert restore(laptop, None, None, str(source.parent), True) == 0
    assert (source / "mine.txt").exists()
    assert (source / "secret.txt").read_text() == "only me"
    assert not os.path.exists(laptop.record_file)


def test_an_empty_new_laptop_does_not_bury_the_history(rig, tmp_path):
    before = rig.finished()
    laptop = new_laptop(rig, tmp_path)
    assert laptop.backup() == codes.EXIT_NO_SOURCE
    status = laptop.status.read()
    assert status["last_result"] == "failed"
    assert "is empty and this laptop has never backed up" in status["last_error"]
    assert "restore them first" in status["last_error"]
    assert rig.finished() == before


def test_a_file_changed_right_after_the_restore_is_sent_by_the_next_backup(
    rig, tmp_path, monkeypatch
):
    """The record is of the folder after the restore: a chmod made after rsync
    ended but before the record was taken must not look like the snapshot's."""
    laptop = new_laptop(rig, tmp_path)
    source = Path(laptop.settings.source)
    walk = laptop._walk_restored

    def chmod_first(restored_ns):
        os.chmod(source / "secret.txt", 0o644)
        return walk(restored_ns)

    monkeypatch.setattr(laptop, "_walk_restored", chmod_first)
    assert restore(laptop, None, None, str(source.parent), False) == 0
    assert laptop.backup() == 0
    status = laptop.status.read()
    assert status["last_kind"] == "changes"
    assert status["last_paths"] == "2"  # secret.txt, and "." that holds it
    after = rig.finished()[-1]
    stored = rig.area / after / "secret.txt"
    try:  # --fake-super records the mode when the receiver is not root
        mode = int(os.getxattr(stored, "user.rsync.%stat").decode().split()[0], 8)
    except OSError:
        mode = stored.stat().st_mode
    assert stat.S_IMODE(mode) == 0o644


RESTORE_ON_A_TERMINAL = """
import dataclasses, json, sys
from ansible_collections.linkdest.backup.plugins.module_utils import client
values = json.loads(sys.argv[1])
settings = client.Settings.from_mapping(values["settings"], environ={})
command = client.Linkdest(settings, quiet=True)
command.ssh_program = values["ssh"]
try:
    sys.exit(command.restore(None, None, values["to"], False))
except client.Finished as finished:
    sys.exit(finished.code)
"""


def test_a_restore_on_a_terminal_shows_its_progress(rig, tmp_path):
    """A person restoring a big folder sees how far it got; cron and
    playbooks (no terminal) get the summary lines only."""
    settings = dataclasses.asdict(rig.settings)
    values = {"settings": settings, "ssh": rig.fake_ssh, "to": str(tmp_path / "on-a-terminal")}
    primary, secondary = pty.openpty()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.Popen(
        [sys.executable, "-c", RESTORE_ON_A_TERMINAL, json.dumps(values)],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        env=env,
    )
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    assert run.wait(timeout=120) == 0, seen
    os.close(primary)
    text = seen.decode("utf-8", "replace")
    assert "to-chk=0/" in text, text  # rsync's progress2 line, to the last file
    assert "check: 6 file(s) the same" in text

    piped = subprocess.run(
        [
            sys.executable,
            "-c",
            RESTORE_ON_A_TERMINAL,
            json.dumps(dict(values, to=values["to"] + "2")),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert piped.returncode == 0, piped.stderr
    assert "to-chk" not in piped.stdout + piped.stderr
