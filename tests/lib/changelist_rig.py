# Copyright (c) 2026 linkdest.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A laptop and a server area in a temporary directory, for change-list tests
(tests/unit/.../test_changelist.py, and on btrfs tests/integration/).

The laptop's `linkdest backup` (client.py) runs for real; a script stands in
for ssh and sshd's forced command: it drops ssh's options and the host and
runs ``linkdest-server gate laptop`` with the rest as SSH_ORIGINAL_COMMAND, as
sshd would. Everything else is real: rsync on both ends, --fake-super, hard
links or btrfs subvolumes, the file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import stat
import sys
import time
from pathlib import Path

from hypothesis import strategies as st

from ansible_collections.linkdest.backup.plugins.module_utils import changelist, client, server_cli
from ansible_collections.linkdest.backup.plugins.module_utils import snapshots as snap

RSYNC = shutil.which("rsync")
ME = pwd.getpwuid(os.getuid()).pw_name
COLLECTIONS_PATH = str(Path(server_cli.__file__).parents[5])
FAKE_SSH = r"""#!%(python)s
# ssh [-F X] [-o X]... [-O CMD] HOST WORDS...: sshd's forced command for WORDS.
import os, sys
args = sys.argv[1:]
while args and args[0].startswith("-"):
    option = args.pop(0)
    if option in ("-N", "-f"):
        sys.exit(0)  # a connection opened ahead: there is none to open
    value = args.pop(0)
    if option == "-O":
        sys.exit(0)  # no master to stop
args.pop(0)  # the host
os.environ["SSH_ORIGINAL_COMMAND"] = " ".join(args)
sys.path.insert(0, %(collections)r)
from ansible_collections.linkdest.backup.plugins.module_utils import server_cli
sys.exit(server_cli.main(["--config", %(config)r, "gate", "laptop"]))
"""


class Rig:
    """A laptop folder, its linkdest, and a server area, all in tmp_path."""

    def __init__(self, tmp_path: Path, backend: str = "hardlink", root: Path | None = None):
        self.source = tmp_path / "src"
        self.source.mkdir()
        self.root = root or tmp_path / "root"
        self.area = self.root / "laptop"
        self.area.mkdir(parents=True)
        config = tmp_path / "server.json"
        config.write_text(
            json.dumps(
                {
                    "root": str(self.root),
                    "rsync": RSYNC,
                    "rsync_timeout": 60,
                    "clients": {"laptop": ME},
                    "backend": backend,
                }
            )
        )
        fake_ssh = tmp_path / "fake-ssh"
        fake_ssh.write_text(
            FAKE_SSH
            % {"python": sys.executable, "collections": COLLECTIONS_PATH, "config": str(config)}
        )
        fake_ssh.chmod(0o755)
        self.settings = client.Settings.from_mapping(
            {
                "source": str(self.source),
                "ssh_config": "/dev/null",
                "server": "server",
                "log_file": str(tmp_path / "state" / "linkdest.log"),
                "key_file": str(tmp_path / "key"),
                "user_home": str(tmp_path),
                "copy_links": False,
            },
            environ={},
        )
        self.fake_ssh = str(fake_ssh)

    def backup(self, full: bool = False, **changed_settings) -> tuple[str, str]:
        """One `linkdest backup`: the new snapshot and the kind of run."""
        for key, value in changed_settings.items():
            setattr(self.settings, key, value)
        command = client.Linkdest(self.settings, quiet=True)
        command.ssh_program = self.fake_ssh
        code = command.backup(full=full)
        status = command.status.read()
        log = Path(self.settings.log_file).read_text()
        assert code == 0, log[-3000:]
        return status["last_snapshot"], status["last_kind"]

    def finished(self) -> list[str]:
        return [s.name for s in snap.list_snapshots(str(self.area))]


def fingerprint(top: Path) -> dict[str, tuple]:
    """Every path of a snapshot: type, content (or symlink target), the mode
    and owner --fake-super recorded, mtime. Hard links do not show."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in ["", *dirnames, *filenames] if dirpath == str(top) else [*dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            found[os.path.relpath(path, top)] = _entry(path)
    return found


def _entry(path: str) -> tuple:
    st_ = os.lstat(path)
    try:
        fake = os.getxattr(path, "user.rsync.%stat", follow_symlinks=False).decode()
    except OSError:
        fake = None
    content = None
    if stat.S_ISREG(st_.st_mode):
        content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return (stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode), fake, st_.st_mtime_ns, content)


def inodes(top: Path) -> dict[str, tuple]:
    """The fingerprint plus every file's inode: what history must keep."""
    result = {}
    for path, entry in fingerprint(top).items():
        st_ = os.lstat(top / path)
        result[path] = (*entry, None if stat.S_ISDIR(st_.st_mode) else st_.st_ino)
    return result


NAMES = ["a", "b c", "-dash", "ü", "new\nline", "d", "#x", "a*[b\\"]
PATHS = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
OPERATIONS = st.one_of(
    st.tuples(st.just("write"), PATHS, st.binary(max_size=64)),
    st.tuples(st.just("same_size_edit"), PATHS, st.none()),
    st.tuples(st.just("chmod"), PATHS, st.sampled_from([0o600, 0o644, 0o755, 0o700])),
    st.tuples(st.just("touch"), PATHS, st.integers(0, 2_000_000_000)),
    st.tuples(st.just("delete"), PATHS, st.none()),
    st.tuples(st.just("rename"), PATHS, PATHS),
    st.tuples(st.just("mkdir"), PATHS, st.none()),
    st.tuples(st.just("symlink"), PATHS, st.sampled_from(["a", "../x", "b c/ü"])),
    st.tuples(st.just("hardlink"), PATHS, PATHS),
    st.tuples(st.just("exclude"), st.sampled_from([[], ["*.tmp"], ["d/"], ["/a"]]), st.none()),
)


def apply(rig: Rig, operation) -> None:
    kind, path, arg = operation
    if kind == "exclude":
        rig.settings.excludes = path
        return
    full = rig.source / path
    try:
        if kind == "write":
            full.parent.mkdir(parents=True, exist_ok=True)
            if full.is_dir() and not full.is_symlink():
                shutil.rmtree(full)
            elif full.is_symlink():
                full.unlink()
            full.write_bytes(arg)
        elif kind == "same_size_edit" and full.is_file() and not full.is_symlink():
            stamp = os.stat(full)
            data = full.read_bytes()
            full.write_bytes(bytes((byte + 1) % 256 for byte in data))
            os.utime(full, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        elif kind == "chmod" and full.exists() and not full.is_symlink():
            full.chmod(arg | (0o700 if full.is_dir() else 0))
        elif kind == "touch" and full.exists() and not full.is_symlink():
            os.utime(full, (arg, arg))
        elif kind == "delete":
            if full.is_dir() and not full.is_symlink():
                shutil.rmtree(full)
            elif full.is_symlink() or full.exists():
                full.unlink()
        elif kind == "rename" and (full.exists() or full.is_symlink()):
            target = rig.source / arg
            if not str(target).startswith(str(full) + "/") and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(full, target)
        elif kind == "mkdir":
            full.mkdir(parents=True, exist_ok=True)
        elif kind == "symlink" and not full.exists() and not full.is_symlink():
            full.parent.mkdir(parents=True, exist_ok=True)
            full.symlink_to(arg)
        elif kind == "hardlink" and full.is_file() and not full.is_symlink():
            target = rig.source / arg
            if not target.exists() and not target.is_symlink():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(full, target)
    except (NotADirectoryError, FileExistsError, IsADirectoryError, FileNotFoundError):
        pass  # an operation that makes no sense in this tree: skipped


def age_directories(top: Path) -> None:
    """Give every directory changed in the last seconds an mtime an hour ago.

    rsync's last pass over directory times compares whole seconds only: a
    directory the receiver writes into within the second of its own mtime
    keeps the receiver's time, in full runs and change lists alike. A laptop
    does not change a folder within a second of every run; this test would.
    Only directories that changed anyway are aged (so they are listed
    anyway): the others must stay unlisted, as on a real laptop.
    """
    now = time.time()
    when = int(now) - 3600
    for dirpath, _dirnames, _filenames in os.walk(top):
        if os.lstat(dirpath).st_mtime >= now - 2:
            os.utime(dirpath, (when, when))


def write(rig: Rig, relpath: str, content: str, mode: int | None = None) -> None:
    path = rig.source / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    if mode is not None:
        path.chmod(mode)


def check_steps(rig: Rig, steps) -> None:
    """The property: after each step, a snapshot through the change list and
    then a full one are identical, and no older snapshot changed, byte for
    byte and inode for inode. A step that changes nothing, and the half hour
    after every step, make no snapshot: the laptop's newest snapshot stays
    the one that holds the folder as it is."""
    write(rig, "a", "first")
    age_directories(rig.source)
    rig.backup()
    history: dict[str, dict] = {}
    for step in steps:
        for operation in step:
            apply(rig, operation)
        age_directories(rig.source)
        for name in rig.finished():
            history.setdefault(name, inodes(rig.area / name))
        by_list, kind = rig.backup()
        if not step:
            assert (kind, by_list) == ("unchanged", rig.finished()[-1]), step
        quiet_half_hour = rig.backup()
        assert quiet_half_hour == (by_list, "unchanged"), step
        assert rig.finished()[-1] == by_list
        assert not snap.list_incomplete(str(rig.area))
        by_full, full_kind = rig.backup(full=True)
        assert full_kind == "full"
        assert fingerprint(rig.area / by_list) == fingerprint(rig.area / by_full), step
        for name, before in history.items():
            assert inodes(rig.area / name) == before, (name, step)


@contextlib.contextmanager
def no_racy_window():
    """Tests change files faster than a timestamp tick: with the real windows
    every file would be racy and listed again, and a change list would never
    skip anything (test_recent_changes_are_sent_again checks the windows)."""
    saved = changelist.RACY_NS, changelist.RACY_COARSE_NS, changelist.RACY_DIR_NS
    changelist.RACY_NS = changelist.RACY_COARSE_NS = changelist.RACY_DIR_NS = 0
    try:
        yield
    finally:
        changelist.RACY_NS, changelist.RACY_COARSE_NS, changelist.RACY_DIR_NS = saved
