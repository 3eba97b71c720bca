# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The user's two big days, in the order a person lives them.

Converge already ran site.yml over real SSH as `admin` with sudo (the
scenario's inventory), and idempotence ran it again. Here: what that login
left on the server, the lock-out guard refusing an admin who has no key,
then a laptop lost and its history inherited by a new one. The tests run in
file order; each builds on the one before.
"""

import os
import pathlib
import shlex
import subprocess
import sys
import tempfile

import linkdest_testlib as lib

REPO = pathlib.Path(__file__).resolve().parents[3]


def server_address() -> str:
    """The server's address on the scenario's network (the one Ansible dials)."""
    return subprocess.run(
        [
            "docker",
            "inspect",
            "-f",
            '{{ (index .NetworkSettings.Networks "linkdest-journey").IPAddress }}',
            "journey-server",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


ADMIN_KEYS = "/home/admin/.ssh/authorized_keys"
OLD_AREA = lib.ROOT + "/journey-old"
BIG = "Videos/holiday.mov"
BIG_BYTES = 120 * 1024 * 1024
# What the awkward folder holds (relative to ~/Dropbox), besides BIG.
AWKWARD = {
    "Taxes 2025/receipt (final).pdf": ("%PDF-1.4 receipt\n", "0600", "2025-04-30 23:59:58"),
    "Fotos/été à Zürich/ölmühle.jpg": ("jpeg bytes\n", "0644", "2019-08-01 12:00:00"),
    "Fotos/日本/寺.jpg": ("more jpeg bytes\n", "0644", "2018-03-03 03:03:03"),
    "bin/sync notes.sh": ("#!/bin/sh\necho syncing\n", "0755", "2020-02-29 10:00:00"),
    "notes/-starts with a dash.txt": ("dash\n", "0640", "2001-01-01 00:00:00"),
    # One name twice: composed (NFC, as Linux programs write it) and decomposed
    # (NFD, as HFS+ and many Mac apps do). Two files, each back byte for byte.
    "Fotos/Caf\u00e9.txt": ("composed\n", "0644", "2021-06-01 08:00:00"),
    "Fotos/Cafe\u0301.txt": ("decomposed\n", "0644", "2021-06-01 08:00:01"),
    "Fotos/Nai\u0308ve/cre\u0300me bru\u0302le\u0301e.txt": ("nfd\n", "0644", "2022-02-02"),
}
_STATE = {}


def ansible_env(**extra) -> dict:
    return dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(REPO / "collections"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        **extra,
    )


def ansible(program: str, *args: str, **env) -> subprocess.CompletedProcess:
    binary = pathlib.Path(sys.executable).with_name(program)
    return subprocess.run(
        [str(binary) if binary.exists() else program, *args],
        cwd=REPO,
        env=ansible_env(**env),
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )


def inventory_with_new_laptop(directory: str) -> str:
    """The inventory after the loss: journey-old gone from it, journey-new a
    laptop that inherits journey-old's history (what the user edits)."""

    def edit(data: dict) -> None:
        lib.without_host(data, "journey-old")
        laptops = data.setdefault("laptops", {})
        laptops["hosts"] = {"journey-new": {"backup_client_inherit": "journey-old"}}

    return lib.edited_inventory(directory, edit)


def tree(host) -> dict:
    """~/Dropbox on a laptop: per path its type, mode, mtime, size, link
    target, and a SHA-256 of each file."""
    script = (
        "cd %s && find . -mindepth 1 -printf '%%y %%m %%T@ %%s %%p\\0%%l\\0' && echo"
        " && find . -type f -print0 | xargs -0 -r sha256sum" % lib.SOURCE
    )
    result = lib.as_user(host, script)
    assert result.rc == 0, result.stderr
    listing, _sep, sums = result.stdout.partition("\n")
    fields = listing.split("\0")
    found = {}
    for meta, target in zip(fields[0::2], fields[1::2], strict=False):
        kind, mode, mtime, size, path = meta.split(" ", 4)
        found[path] = {"kind": kind, "mode": mode, "mtime": mtime, "size": size, "link": target}
        if kind == "d":
            del found[path]["size"]  # a directory's size depends on its file system
        if kind in ("d", "l"):
            # rsync takes the times of directories and symlinks within the same
            # second as equal: a snapshot holds those to the second.
            found[path]["mtime"] = mtime.split(".")[0]
    for line in sums.splitlines():
        digest, path = line.split("  ", 1)
        found[path]["sha256"] = digest
    return found


def test_ansible_came_in_as_admin_and_sshd_is_key_only(server):
    """Converge logged in as admin; sshd is now key-only and admin's key
    still opens a fresh session (the guard's promise)."""
    effective = server.run("/usr/sbin/sshd -T -C user=admin,host=x,addr=192.0.2.1").stdout
    assert "passwordauthentication no" in effective.splitlines()
    assert "permitrootlogin no" in effective.splitlines()
    login = subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            os.environ["MOLECULE_EPHEMERAL_DIRECTORY"] + "/admin_ed25519",
            "-o",
            "UserKnownHostsFile=%s/known_hosts" % os.environ["MOLECULE_EPHEMERAL_DIRECTORY"],
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "admin@" + server_address(),
            "sudo -n id -un",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (login.returncode, login.stdout.strip()) == (0, "root"), login.stderr


def test_the_guard_refuses_an_admin_without_a_key(server):
    """The case the guard exists for: the account Ansible logs in with has no
    authorized key (here it arrives over an SSH connection that was already
    open). Making sshd key-only would lock it out: site.yml stops in its
    first play, naming admin, and changes nothing."""
    with tempfile.TemporaryDirectory() as control:
        # One master connection, kept open for the run below.
        env = {
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=600s",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": control,
        }
        inventory = os.environ["MOLECULE_INVENTORY_FILE"]
        opened = ansible(
            "ansible", "-i", inventory, "journey-server", "-m", "ansible.builtin.ping", **env
        )
        assert opened.returncode == 0, opened.stdout + opened.stderr
        moved = subprocess.run(
            ["docker", "exec", "journey-server", "mv", ADMIN_KEYS, "/root/admin-keys.saved"],
            check=False,
        )
        assert moved.returncode == 0
        try:
            run = ansible("ansible-playbook", "-i", inventory, "--check", "site.yml", **env)
        finally:
            subprocess.run(
                ["docker", "exec", "journey-server", "mv", "/root/admin-keys.saved", ADMIN_KEYS],
                check=True,
            )
            ansible(
                "ansible",
                "-i",
                inventory,
                "journey-server",
                "-m",
                "ansible.builtin.meta",
                "-a",
                "reset_connection",
                **env,
            )
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    assert "Ansible logs in as admin over SSH, which has no authorized key" in output, output[
        -3000:
    ]
    assert "Set up the backup server" not in output  # stopped in the first play


def test_the_old_laptop_backs_up_awkward_real_data(old, server):
    for relpath, (content, mode, mtime) in AWKWARD.items():
        lib.write_file(old, relpath, content, mode=mode, mtime=mtime)
    script = " && ".join(
        [
            "cd %s" % lib.SOURCE,
            # A big file, mostly holes: 120 MiB with real bytes at both ends.
            "mkdir -p Videos && truncate -s %d %s" % (BIG_BYTES, shlex.quote(BIG)),
            "printf start | dd of=%s conv=notrunc status=none" % shlex.quote(BIG),
            "printf end | dd of=%s bs=1 seek=%d conv=notrunc status=none"
            % (shlex.quote(BIG), BIG_BYTES - 3),
            "touch -m -d '2016-07-14 20:15:00' %s" % shlex.quote(BIG),
            "ln -s 'Taxes 2025/receipt (final).pdf' 'latest receipt'",
            "ln -s ../bin 'notes/tools link'",
            "mkdir 'empty folder'",
            "touch -m -d '1999-12-31 23:59:59' 'empty folder'",
        ]
    )
    assert lib.as_user(old, script).rc == 0
    lib.backup_ok(old)
    lib.write_file(old, "notes/today.txt", "written on the last day\n")
    last = lib.backup_ok(old)
    _STATE["last"] = last
    _STATE["old_tree"] = tree(old)
    _STATE["fingerprint"] = lib.fingerprint(server)
    assert len(lib.snapshot_names(server, "journey-old")) == 2
    big = "%s/%s/%s" % (OLD_AREA, last, BIG)
    assert server.file(big).size == BIG_BYTES


def test_the_new_laptop_inherits_the_history_and_the_old_key_is_revoked(old, new, server):
    """The old laptop is lost: the user takes it out of the inventory, adds
    the new one with backup_client_inherit, and runs site.yml."""
    assert not new.file(lib.SOURCE).exists
    with tempfile.TemporaryDirectory(dir=os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")) as tmp:
        inventory = inventory_with_new_laptop(tmp)
        run = ansible("ansible-playbook", "-i", inventory, "site.yml")
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-4000:]
        assert "restored . from %s to %s" % (_STATE["last"], lib.SOURCE) in output
        assert "the same as in %s, 0 not" % _STATE["last"] in output
        # A second run changes nothing: no second restore, no key change.
        again = ansible("ansible-playbook", "-i", inventory, "site.yml")
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    recap = [line for line in again.stdout.splitlines() if " changed=" in line]
    assert recap
    assert all(" changed=0 " in line for line in recap), "\n".join(recap)

    # Everything is back: bytes, modes, mtimes, symlink targets, the empty folder.
    assert tree(new) == _STATE["old_tree"]
    # The old key is refused; the new one has the old area.
    refused = lib.backup(old, retry_busy=False)
    assert refused.rc == 255, refused.stdout + refused.stderr
    assert "Permission denied (publickey)" in lib.read_status(old)["last_error"]
    assert lib.as_user(new, "%s list" % lib.SSH).rc == 0
    assert _STATE["last"] in lib.as_user(new, "linkdest list").stdout


def test_the_new_laptop_goes_on_with_the_same_history(new, server):
    lib.write_file(new, "notes/first day on the new laptop.txt", "hello\n")
    snapshot = lib.backup_ok(new)
    status = lib.read_status(new)
    # A change list against the inherited snapshot: only what changed went.
    assert status["last_kind"] == "changes", status
    names = lib.snapshot_names(server, "journey-old")
    assert names[-2:] == [_STATE["last"], snapshot]
    before, after = (
        lib.entries(server, "journey-old", name) for name in (_STATE["last"], snapshot)
    )
    for relpath in [BIG, *AWKWARD]:
        assert after[relpath]["ino"] == before[relpath]["ino"], relpath
    # Every earlier snapshot is as it was, inode for inode, byte for byte (the
    # link count grows: the new snapshot links the same inodes).
    now = lib.fingerprint(server)
    for path, record in _STATE["fingerprint"]["areas"]["journey-old"]["files"].items():
        unlinked = [field for index, field in enumerate(record) if index != 1]
        current = now["areas"]["journey-old"]["files"][path]
        assert [field for index, field in enumerate(current) if index != 1] == unlinked, path


def test_the_restore_playbook_brings_the_whole_folder_back_elsewhere(new):
    snapshot = lib.read_status(new)["last_snapshot"]
    with tempfile.TemporaryDirectory(dir=os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")) as tmp:
        run = ansible(
            "ansible-playbook",
            "-i",
            inventory_with_new_laptop(tmp),
            "linkdest.backup.restore",
            "--limit",
            "journey-new",
        )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    copy = "%s/linkdest-restore/%s/Dropbox" % (lib.HOME, snapshot)
    assert "check: " in run.stdout
    assert " 0 not" in run.stdout
    compared = lib.as_user(new, "diff -r --no-dereference %s %s" % (lib.SOURCE, copy))
    assert compared.rc == 0, compared.stdout


def test_the_new_laptop_ran_all_of_it_on_python_3_9(new):
    """journey-new is Debian 11: the restore, the change list and the restore
    playbook above ran on Python 3.9, the Python of a Mac's /usr/bin/python3
    (issue 21). The launcher is that interpreter, and verify works there too."""
    version = lib.run_ok(new, "/usr/bin/python3 -c 'import sys; print(sys.version_info[:2])'")
    assert version.strip() == "(3, 9)"
    launcher = new.file("/usr/local/bin/linkdest").content_string.splitlines()[0]
    assert launcher == "#!/usr/bin/python3 -IS"
    verified = lib.as_user(new, "linkdest verify")
    assert verified.rc == 0, verified.stdout + verified.stderr
    assert " 0 differ without a trace" in verified.stdout, verified.stdout
    status = lib.as_user(new, "linkdest status")
    assert status.rc == 0, status.stdout + status.stderr
