# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers the molecule verifiers share: hosts by inventory name, running
linkdest as the laptop user, and reading snapshots on the server."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

import testinfra
import yaml

ROOT = "/media/backup_drive"
USER = "alice"
HOME = "/home/alice"
SOURCE = HOME + "/Dropbox"
SSH = "ssh -F /etc/linkdest/ssh_config linkdest-server"
# What /usr/local/bin/linkdest runs (the launcher holds only the settings).
CLIENT_PROGRAM = (
    "/usr/local/lib/linkdest/ansible_collections/linkdest/backup/plugins/module_utils/client.py"
)


def get_host(name: str):
    """A test host by its container name, through docker exec (much faster
    than a round trip through Ansible for every command)."""
    return testinfra.get_host("docker://%s" % name)


def edited_inventory(directory: str, edit) -> str:
    """A copy of the scenario's inventory in ``directory``, changed by
    ``edit(data)`` as an operator edits theirs, with its group_vars and
    host_vars; the path of its hosts file."""
    source = pathlib.Path(os.environ["MOLECULE_INVENTORY_FILE"])
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    edit(data)
    target = pathlib.Path(directory) / "hosts.yml"
    target.write_text(yaml.safe_dump(data), encoding="utf-8")
    for name in ("group_vars", "host_vars"):
        if (source.parent / name).is_dir():
            (pathlib.Path(directory) / name).symlink_to(source.parent / name)
    return str(target)


def without_host(data: dict, host: str) -> None:
    """Take ``host`` out of every group of an inventory."""
    for group in data.values():
        if isinstance(group, dict) and isinstance(group.get("hosts"), dict):
            group["hosts"].pop(host, None)


def as_user(host, command: str, env: str = ""):
    """Run a shell command as the laptop user (not through a login shell)."""
    return host.run("runuser -u %s -- %s /bin/sh -c %s" % (USER, env, shlex.quote(command)))


def write_file(host, relpath: str, content: str, mode: str = "0644", mtime: str | None = None):
    path = SOURCE + "/" + relpath
    script = "mkdir -p %s && printf %%s %s > %s && chmod %s %s" % (
        shlex.quote(os.path.dirname(path)),
        shlex.quote(content),
        shlex.quote(path),
        mode,
        shlex.quote(path),
    )
    if mtime:
        script += " && touch -m -d %s %s" % (shlex.quote(mtime), shlex.quote(path))
    result = as_user(host, script)
    assert result.rc == 0, result.stderr


def start_backup_detached(container: str, bwlimit_kib: int) -> None:
    """Start `linkdest backup` as the user in the background (docker exec -d),
    slowed by a bandwidth limit so the test can act while it runs."""
    subprocess.run(
        [
            "docker",
            "exec",
            "-d",
            container,
            "runuser",
            "-u",
            USER,
            "--",
            "env",
            "LINKDEST_BWLIMIT=%d" % bwlimit_kib,
            "linkdest",
            "backup",
            "--quiet",
        ],
        check=True,
    )


def run_ok(host, command: str) -> str:
    """Run a command that must succeed; return its standard output."""
    result = host.run(command)
    assert result.rc == 0, "%s: %s %s" % (command, result.stdout, result.stderr)
    return result.stdout


def kill_a_backup_midway(laptop, server, client: str, relpaths, size: int) -> list[str]:
    """Write ``relpaths`` under the source (``size`` random bytes each), start a
    slow backup (3 MiB/s) and kill the whole run (linkdest, rsync, ssh), as a
    laptop that drops away would, once at least one file has fully arrived in
    the incomplete snapshot. Returns the relpaths that had arrived."""
    for rel in relpaths:
        script = "mkdir -p %s && head -c %d /dev/urandom > %s/%s" % (
            os.path.dirname("%s/%s" % (SOURCE, rel)),
            size,
            SOURCE,
            rel,
        )
        assert as_user(laptop, script).rc == 0
    start_backup_detached(client, 3072)
    area = "%s/%s" % (ROOT, client)
    arrived = []
    for _attempt in range(200):
        pending = sorted(n for n in server.file(area).listdir() if n.startswith("incomplete_"))
        if pending:
            arrived = [
                rel
                for rel in relpaths
                if server.file("%s/%s/%s" % (area, pending[-1], rel)).exists
                and server.file("%s/%s/%s" % (area, pending[-1], rel)).size == size
            ]
            if arrived:
                break
        time.sleep(0.1)
    assert arrived, "no file arrived before the kill"
    assert laptop.run("pkill -KILL -u %s" % USER).rc == 0
    time.sleep(2)
    return arrived


def backup(host, env: str = "", retry_busy: bool = True, command: str = "linkdest backup"):
    """Run `linkdest backup` as the user. The laptops' real cron job may be
    running at that moment (every 30 minutes): then wait for it and run again,
    as a user would; the concurrency test asks for the raw answer instead."""
    result = as_user(host, command, env)
    for _attempt in range(60):
        if not retry_busy or result.rc != 75:
            break
        time.sleep(3)
        result = as_user(host, command, env)
    return result


def backup_ok(host, command: str = "linkdest backup") -> str:
    """Run a backup that must succeed; return the new snapshot's name."""
    result = backup(host, command=command)
    assert result.rc == 0, "linkdest backup failed: %s %s" % (result.stdout, result.stderr)
    status = read_status(host)
    return status["last_snapshot"]


def read_status(host) -> dict:
    content = host.file(HOME + "/.local/state/linkdest/status").content_string
    return dict(line.split("=", 1) for line in content.splitlines() if "=" in line)


def server_py(server, code: str):
    """Run a Python snippet on the server and decode its JSON output."""
    result = server.run("python3 -c %s" % shlex.quote(code))
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def snapshot_names(server, client: str) -> list[str]:
    area = "%s/%s" % (ROOT, client)
    return server_py(
        server,
        "import os, json; names = [n for n in os.listdir(%r) if n.startswith('back-')];"
        " print(json.dumps(sorted(names)))" % area,
    )


def entries(server, client: str, snapshot: str) -> dict:
    """Every path of a snapshot as the laptop had it (rsync --fake-super aware), plus inode data."""
    code = r"""
import json, os, stat
top = %r
out = {}
for base, dirs, files in os.walk(top):
    for name in dirs + files:
        path = os.path.join(base, name)
        st = os.lstat(path)
        full = st.st_mode
        try:
            # --fake-super keeps the laptop's own mode (with the file type) in an xattr.
            full = int(os.getxattr(path, "user.rsync.%%stat", follow_symlinks=False).split()[0], 8)
        except OSError:
            pass
        kind = "link" if stat.S_ISLNK(full) else "dir" if stat.S_ISDIR(full) else "file"
        target = None
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
        elif kind == "link":
            # Linux has no user xattrs on symlinks, so --fake-super stores a link
            # as a plain file holding its target: nothing on the server follows it.
            with open(path, encoding="utf-8") as handle:
                target = handle.read()
        out[os.path.relpath(path, top)] = {
            "ino": st.st_ino,
            "nlink": st.st_nlink,
            "mode": stat.S_IMODE(full),
            "mtime": int(st.st_mtime),
            "type": kind,
            "link": target,
            "server_type": "link" if stat.S_ISLNK(st.st_mode) else "other",
        }
print(json.dumps(out))
""" % ("%s/%s/%s" % (ROOT, client, snapshot))
    return server_py(server, code)


def site_playbook(*args: str) -> subprocess.CompletedProcess:
    """Run the collection's site.yml with the scenario's inventory, as a user reruns it."""
    return subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "linkdest.backup.site"]
        + list(args),
        cwd=pathlib.Path(__file__).resolve().parents[3],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )


def run_module(host_name: str, module: str, args: dict, check: bool = False) -> dict:
    """Run one module on a scenario host with the `ansible` CLI and the
    scenario's inventory (as a user would ad hoc); return its result."""
    command = ["ansible", "-i", os.environ["MOLECULE_INVENTORY_FILE"], host_name]
    command += ["-m", module, "-a", json.dumps(args)] + (["--check"] if check else [])
    env = dict(
        os.environ,
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
    )
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, check=False, timeout=300
    )
    assert done.stdout.strip(), done.stderr
    return json.loads(done.stdout)["plays"][0]["tasks"][0]["hosts"][host_name]


# --- the security scenario's helpers ---------------------------------------------

SSH_CONFIG = "/etc/linkdest/ssh_config"
# rsync's remote shell through the laptop's own ssh configuration and key.
RSYNC_SSH = "-e %s" % shlex.quote("ssh -F " + SSH_CONFIG)


def fingerprint(server) -> dict:
    """The state of the backup drive that no refused attempt may change.

    For every laptop's area: the names at its top (finished and incomplete
    snapshots, the lock, the journal), the target of ``current``, the owner
    and mode of the area, the content of the area's own files, and for every
    path in every finished snapshot its content hash, inode, link count, mode,
    owner, mtime and the mode rsync --fake-super recorded. Nothing is
    followed: symlinks are read, never opened.
    """
    code = (
        r"""
import hashlib, json, os, stat
root = %r

def digest(path):
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

def record(path):
    st = os.lstat(path)
    try:
        fake = os.getxattr(path, "user.rsync.%%stat", follow_symlinks=False).decode()
    except OSError:
        fake = None
    if stat.S_ISREG(st.st_mode):
        content = digest(path)
    elif stat.S_ISLNK(st.st_mode):
        content = "-> " + os.readlink(path)
    else:
        content = None
    return [st.st_ino, st.st_nlink, "%%o" %% st.st_mode, st.st_uid, st.st_gid,
            st.st_mtime_ns, content, fake]

out = {"root": record(root)[2:5], "names": sorted(os.listdir(root)), "areas": {}}
# The manifests each snapshot is verified against (root's, never a laptop's).
manifests = os.path.join(root, ".linkdest-manifests")
out["manifests"] = {}
for base, dirs, leaves in os.walk(manifests):
    for one in [base] + [os.path.join(base, n) for n in dirs + leaves]:
        out["manifests"][os.path.relpath(one, root)] = record(one)
for client in out["names"]:
    area = os.path.join(root, client)
    if client.startswith(".") or not stat.S_ISDIR(os.lstat(area).st_mode):
        continue
    names = sorted(os.listdir(area))
    link = os.path.join(area, "current")
    tops, files = {}, {}
    for name in names:
        path = os.path.join(area, name)
        if name.startswith("back-") and stat.S_ISDIR(os.lstat(path).st_mode):
            for base, dirs, leaves in os.walk(path):
                for one in [base] + [os.path.join(base, n) for n in dirs + leaves]:
                    files[os.path.relpath(one, area)] = record(one)
        elif not name.startswith("incomplete_back-"):
            tops[name] = record(path)
    out["areas"][client] = {
        "area": record(area)[2:5],
        "names": names,
        "current": os.readlink(link) if os.path.islink(link) else None,
        "top": tops,
        "files": files,
    }
print(json.dumps(out))
"""
        % ROOT
    )
    return server_py(server, code)


FINGERPRINT_FIELDS = ("inode", "links", "mode", "uid", "gid", "mtime_ns", "content", "fake-super")


def _record_diff(old, new) -> str:
    if old is None or new is None:
        return "appeared" if old is None else "disappeared"
    return ", ".join(
        "%s %s -> %s" % (field, a, b)
        for field, a, b in zip(FINGERPRINT_FIELDS, old, new, strict=True)
        if a != b
    )


def fingerprint_diff(before: dict, after: dict, limit: int = 15) -> list[str]:
    """What differs between two fingerprints, one short line per difference."""
    lines = []
    if before["root"] != after["root"] or before["names"] != after["names"]:
        lines.append("%s: %s -> %s" % (ROOT, before["names"], after["names"]))
    for client in sorted(set(before["areas"]) | set(after["areas"])):
        old = before["areas"].get(client, {})
        new = after["areas"].get(client, {})
        old_names, new_names = set(old.get("names", [])), set(new.get("names", []))
        if new_names - old_names:
            lines.append("%s: new %s" % (client, ", ".join(sorted(new_names - old_names))))
        if old_names - new_names:
            lines.append("%s: gone %s" % (client, ", ".join(sorted(old_names - new_names))))
        for key in ("area", "current"):
            if old.get(key) != new.get(key):
                lines.append("%s %s: %s -> %s" % (client, key, old.get(key), new.get(key)))
        for group in ("top", "files"):
            old_group, new_group = old.get(group, {}), new.get(group, {})
            for path in sorted(set(old_group) | set(new_group)):
                if old_group.get(path) != new_group.get(path):
                    change = _record_diff(old_group.get(path), new_group.get(path))
                    lines.append("%s/%s: %s" % (client, path, change))
    old_manifests, new_manifests = before.get("manifests", {}), after.get("manifests", {})
    for path in sorted(set(old_manifests) | set(new_manifests)):
        if old_manifests.get(path) != new_manifests.get(path):
            change = _record_diff(old_manifests.get(path), new_manifests.get(path))
            lines.append("%s: %s" % (path, change))
    return lines[:limit] + (["... %d more" % (len(lines) - limit)] if len(lines) > limit else [])


def put_file(host, path: str, content: str, mode: str = "0644", owner: str = "root") -> None:
    """Write ``content`` to ``path`` exactly (as root), then set its owner and mode."""
    encoded = base64.b64encode(content.encode()).decode()
    result = host.run(
        "printf %%s %s | base64 -d > %s && chown %s %s && chmod %s %s"
        % (encoded, shlex.quote(path), owner, shlex.quote(path), mode, shlex.quote(path))
    )
    assert result.rc == 0, result.stderr


def journal_cursor(host) -> str:
    """A position in the host's journal, for journal_since()."""
    result = host.run("journalctl -n 0 --show-cursor -q")
    assert result.rc == 0, result.stderr
    return result.stdout.strip().split("cursor: ", 1)[1]


def journal_since(host, cursor: str) -> str:
    """The journal's messages after ``cursor``, one a line."""
    # No -t filter: systemd 252 returns nothing for --after-cursor with a match.
    return host.run(
        "journalctl -q -o cat --no-pager --after-cursor=%s" % shlex.quote(cursor)
    ).stdout


# --- damage as a failing disk does it (issue 12) -------------------------------------------

# Flip one byte in place: the same inode, size and mtime, so rsync's quick
# check cannot see it; only a checksum can. Run as a script: PATH OFFSET.
FLIP_PY = (
    "import os, sys; p, off = sys.argv[1], int(sys.argv[2]); st = os.stat(p);"
    " fd = os.open(p, os.O_RDWR); b = os.pread(fd, 1, off);"
    " os.pwrite(fd, bytes([b[0] ^ 0xFF]), off); os.fsync(fd); os.close(fd);"
    " os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))"
)


def flip_byte(path, offset: int = 0) -> None:
    """Damage a local file (unit tests)."""
    subprocess.run([sys.executable, "-c", FLIP_PY, str(path), str(offset)], check=True)


def flip_on(host, path: str, offset: int = 0) -> None:
    """Damage a file on a test host."""
    result = host.run("python3 -c %s %s %d" % (shlex.quote(FLIP_PY), shlex.quote(path), offset))
    assert result.rc == 0, result.stderr


def flip_in_sealed_on(server, snapshot: str, relpath: str, offset: int = 0) -> None:
    """Damage a file in a read-only btrfs snapshot on the server: unsealed for
    the write by the installed library's ioctl (which, unlike ``btrfs property
    set``, keeps a received snapshot's received UUID), sealed again."""
    code = (
        "import sys; sys.path.insert(0, '/usr/local/lib/linkdest')\n"
        "from ansible_collections.linkdest.backup.plugins.module_utils import subvolumes\n"
        "fd = subvolumes.open_dir(%r)\n"
        "with subvolumes.unsealed(fd):\n"
        "    sys.argv = ['flip', %r, '%d']\n"
        "    exec(%r)\n" % (snapshot, "%s/%s" % (snapshot, relpath), offset, FLIP_PY)
    )
    result = server.run("python3 -c %s" % shlex.quote(code))
    assert result.rc == 0, result.stderr
