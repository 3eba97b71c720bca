# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The user's two big days, in the order a person lives them.

Converge already ran site.yml over real SSH as `admin` with sudo (the
scenario's inventory), and idempotence ran it again. Here: what that login
left on the server, the lock-out guard refusing an admin who has no key,
the port the router forwards from the internet and the dynamic-DNS name,
then a laptop lost and its history inherited by a new one that is away from
home, a new public address, and a stranger guessing logins. The tests run in
file order; each builds on the one before.
"""

import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time

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


def gateway() -> str:
    """The control machine's own address on the home network (Docker's gateway)."""
    return subprocess.run(
        [
            "docker",
            "network",
            "inspect",
            "-f",
            "{{ (index .IPAM.Config 0).Gateway }}",
            "linkdest-journey",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


ADMIN_KEYS = "/home/admin/.ssh/authorized_keys"
# The home router's public address (journey-router on the internet side),
# the name ddclient keeps pointed at it, and the port it forwards.
PUBLIC = "198.51.100.2"
NEW_PUBLIC = "198.51.100.3"
NAME = "home.linkdest.test"
AWAY = NAME + ":2222"
# The laptop's own ssh configuration, dialling the name and the forward.
EXPOSED_SSH = "ssh -F %s -o HostName=%s -o Port=2222 linkdest-server" % (lib.SSH_CONFIG, NAME)
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


def assert_old_snapshots_unchanged(server) -> None:
    """Every snapshot the old laptop made is as it was, inode for inode, byte
    for byte (the link count grows: later snapshots link the same inodes)."""
    now = lib.fingerprint(server)
    for path, record in _STATE["fingerprint"]["areas"]["journey-old"]["files"].items():
        unlinked = [field for index, field in enumerate(record) if index != 1]
        current = now["areas"]["journey-old"]["files"][path]
        assert [field for index, field in enumerate(current) if index != 1] == unlinked, path


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


def control_ssh(*args: str, pinned: bool = False) -> subprocess.CompletedProcess:
    """ssh from the control machine (on both networks) with the admin's key;
    the server's host key pinned as converge saw it, or not checked at all
    where the host key is not what a test is about."""
    ephemeral = os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
    known = (
        ["-o", "UserKnownHostsFile=%s/known_hosts" % ephemeral, "-o", "StrictHostKeyChecking=yes"]
        if pinned
        else ["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"]
    )
    return subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", ephemeral + "/admin_ed25519", *known]
        + ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_ansible_came_in_as_admin_and_sshd_is_key_only(server):
    """Converge logged in as admin; sshd is now key-only and admin's key
    still opens a fresh session (the guard's promise)."""
    effective = server.run("/usr/sbin/sshd -T -C user=admin,host=x,addr=192.0.2.1,lport=22").stdout
    assert "passwordauthentication no" in effective.splitlines()
    assert "permitrootlogin no" in effective.splitlines()
    login = control_ssh("admin@" + server_address(), "sudo -n id -un", pinned=True)
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


def dns_answer(internet) -> str:
    return internet.run("dig +short @198.51.100.53 %s A" % NAME).stdout.strip()


def wait_for_dns(internet, address: str, seconds: int = 180) -> None:
    """ddclient looks at the public address every minute (the scenario's
    interval_minutes: 1) and updates the name when it changed."""
    deadline = time.monotonic() + seconds
    while dns_answer(internet) != address:
        assert time.monotonic() < deadline, "DNS still says %r, not %s" % (
            dns_answer(internet),
            address,
        )
        time.sleep(3)


def test_ddclient_points_the_name_at_the_routers_public_address(server, internet):
    """ddclient asked the internet's page for the home's address (the
    router's, as the page saw it) and updated the name with nsupdate."""
    wait_for_dns(internet, PUBLIC)
    config = server.file("/etc/ddclient.conf")
    assert (config.user, config.group, config.mode) == ("root", "root", 0o600)
    key = server.file("/etc/ddclient/linkdest-tsig.key")
    assert (key.user, key.mode) == ("root", 0o600)
    assert server.service("ddclient").is_running


def test_the_exposed_port_lets_in_the_laptops_accounts_only(server):
    """Over the port the router forwards, sshd's effective settings (asked
    as the role asks them) and three real attempts, each from another source
    address so that no penalty stands in for the refusal: the admin's key
    from the internet, root on the server's own port 2222, and a password."""
    effective = server.run(
        "/usr/sbin/sshd -T -C user=admin,host=x,addr=198.51.100.9,lport=2222"
    ).stdout.splitlines()
    for line in (
        "allowgroups linkdest",
        "permitrootlogin no",
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
        "authenticationmethods publickey",
        "maxauthtries 2",
        "persourcemaxstartups 3",
    ):
        assert line in effective, line
    penalties = [line for line in effective if line.startswith("persourcepenalties ")]
    assert penalties
    assert {"authfail:10", "noauth:5", "grace-exceeded:20"} <= set(penalties[0].split())
    # The LAN port is as it was: the admin logs in there (the first test).
    assert (
        "maxauthtries 3"
        in server.run(
            "/usr/sbin/sshd -T -C user=admin,host=x,addr=192.0.2.1,lport=22"
        ).stdout.splitlines()
    )

    admin = control_ssh("-p", "2222", "admin@" + PUBLIC, "true")
    assert admin.returncode == 255
    assert "Permission denied (publickey)" in admin.stderr, admin.stderr
    root = control_ssh("-p", "2222", "root@" + server_address(), "true")
    assert root.returncode == 255
    assert "Permission denied (publickey)" in root.stderr, root.stderr
    # sshd says why: the accounts are not in the laptops' group.
    log = server.run("journalctl -u ssh --no-pager -o cat").stdout
    assert "User admin from 198.51.100.1 not allowed because none of user's groups" in log
    assert "User root from %s not allowed because" % gateway() in log


def test_no_password_is_ever_asked_for_on_the_exposed_port(internet):
    tried = internet.run(
        "ssh -p 2222 -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
        " -o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive"
        " alice@%s true" % PUBLIC
    )
    assert tried.rc == 255
    # sshd offers the public key method only.
    assert "Permission denied (publickey)." in tried.stderr, tried.stderr


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


def test_at_home_the_laptop_dials_the_lan_and_the_public_name_is_no_use(old):
    """journey-old is at home: its backups went to the server's LAN address.
    The name resolves there too, to the router's public address, which leads
    nowhere from inside (no hairpin NAT): why the LAN address comes first."""
    # The role spells out each address's port when there are several.
    home = server_address() + ":22"
    assert lib.read_status(old)["last_address"] == home
    assert lib.run_ok(old, "getent hosts %s" % NAME).split()[0] == PUBLIC
    inside = lib.as_user(old, "%s list" % EXPOSED_SSH)
    assert inside.rc == 255
    assert "Connection refused" in inside.stderr, inside.stderr
    status = lib.as_user(old, "linkdest status")
    assert "Reached at:    %s" % home in status.stdout, status.stdout


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
    # Away from home: the new key, with plain ssh, through the name and the forward.
    assert lib.as_user(new, "%s list" % EXPOSED_SSH).rc == 0
    assert _STATE["last"] in lib.as_user(new, "linkdest list").stdout


def test_the_new_laptop_goes_on_with_the_same_history(new, server):
    lib.write_file(new, "notes/first day on the new laptop.txt", "hello\n")
    snapshot = lib.backup_ok(new)
    status = lib.read_status(new)
    # A change list against the inherited snapshot: only what changed went.
    assert status["last_kind"] == "changes", status
    # From away: the LAN address timed out, the name and the forward worked.
    assert status["last_address"] == AWAY, status
    names = lib.snapshot_names(server, "journey-old")
    assert names[-2:] == [_STATE["last"], snapshot]
    before, after = (
        lib.entries(server, "journey-old", name) for name in (_STATE["last"], snapshot)
    )
    for relpath in [BIG, *AWKWARD]:
        assert after[relpath]["ino"] == before[relpath]["ino"], relpath
    assert_old_snapshots_unchanged(server)


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


def test_a_new_public_address_reaches_the_away_laptop_through_ddclient(new, internet, router):
    """The provider gives the home another address: the router's internet
    side is re-addressed. ddclient sees it and updates the name; the next
    backup from away works without touching the laptop."""
    device = lib.run_ok(router, "ip -o -4 addr show to 198.51.100.0/24").split()[1]
    lib.run_ok(router, "ip addr add %s/24 dev %s" % (NEW_PUBLIC, device))
    lib.run_ok(router, "ip addr del %s/24 dev %s" % (PUBLIC, device))
    wait_for_dns(internet, NEW_PUBLIC)
    lib.write_file(new, "notes/after the move.txt", "the address changed\n")
    snapshot = lib.backup_ok(new)
    status = lib.read_status(new)
    assert (status["last_address"], status["last_kind"]) == (AWAY, "changes"), status
    assert lib.as_user(new, "linkdest latest").stdout.strip() == snapshot


def test_a_stranger_guessing_logins_is_held_back_while_the_away_laptop_backs_up(
    new, server, internet
):
    """A bounded burst of failed logins from one internet address: after the
    first failures sshd refuses that address for a while (PerSourcePenalties),
    and a laptop from another address backs up all the same."""
    lib.run_ok(internet, "rm -f /root/guess && ssh-keygen -q -t ed25519 -N '' -f /root/guess")
    # The stranger found the home's address (this container's own resolver
    # is Docker's; the name is in the zone it serves).
    home = dns_answer(internet)
    assert home == NEW_PUBLIC
    said = []
    for _attempt in range(8):
        tried = internet.run(
            "timeout 30 ssh -p 2222 -i /root/guess -o BatchMode=yes -o ConnectTimeout=10"
            " -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
            " bk-journey-old@%s true" % home
        )
        assert tried.rc != 0
        said.append(tried.stderr.strip().splitlines()[-1] if tried.stderr.strip() else "")
    denied = [line for line in said if "Permission denied" in line]
    # The first guesses get as far as a refused key; the rest never get that far.
    assert denied[:1] == said[:1], said
    assert 1 <= len(denied) <= 3, said
    assert not [line for line in said[-3:] if "Permission denied" in line], said
    log = server.run("journalctl -u ssh --no-pager -o cat").stdout
    penalized = [line for line in log.splitlines() if "penalty" in line]
    assert [line for line in penalized if "198.51.100.53" in line], log[-3000:]

    lib.write_file(new, "notes/during the guessing.txt", "still backing up\n")
    lib.backup_ok(new)
    assert lib.read_status(new)["last_address"] == AWAY


def test_every_earlier_snapshot_is_unchanged_after_all_of_it(server):
    assert_old_snapshots_unchanged(server)


def test_turning_dynamic_dns_off_takes_back_what_the_role_wrote(server):
    """backup_server_ddns.enabled: false on a server where the role ran
    ddclient: the service stops and the role's configuration and key go."""
    run = ansible(
        "ansible-playbook",
        "-i",
        os.environ["MOLECULE_INVENTORY_FILE"],
        "site.yml",
        "--limit",
        "journey-server",
        "--tags",
        "backup_server_ddns",
        "-e",
        '{"backup_server_ddns": {"enabled": false}}',
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert not server.service("ddclient").is_running
    assert not server.service("ddclient").is_enabled
    assert not server.file("/etc/ddclient.conf").exists
    assert not server.file("/etc/ddclient/linkdest-tsig.key").exists
    # The package stays: the role only takes back what it wrote.
    assert server.package("ddclient").is_installed
