# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers the molecule verifiers share: hosts by inventory name, running
linkdest as the laptop user, and reading snapshots on the server."""

from __future__ import annotations

import json
import os
import shlex
import subprocess

import testinfra

ROOT = "/media/backup_drive"
USER = "alice"
HOME = "/home/alice"
SOURCE = HOME + "/Dropbox"
SSH = "ssh -F /etc/linkdest/ssh_config linkdest-server"


def get_host(name: str):
    """A test host by its container name, through docker exec (much faster
    than a round trip through Ansible for every command)."""
    return testinfra.get_host("docker://%s" % name)


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


def backup(host, env: str = ""):
    return as_user(host, "linkdest backup", env)


def backup_ok(host) -> str:
    """Run a backup that must succeed; return the new snapshot's name."""
    result = backup(host)
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
