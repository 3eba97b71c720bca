# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the real site.yml does against attacks on the setup itself: a drop-in
that turns passwords back on, and a laptop that leaves the inventory.

The revocation test runs last: it reruns site.yml with the full inventory at
its end, so the scenario is as converge left it (and stays idempotent).
"""

import os
import pathlib
import subprocess
import sys
import tempfile

import linkdest_testlib as lib
import pytest
from conftest import REPO, alice, offered_methods, server_address

PLANTED_DROP_IN = "/etc/ssh/sshd_config.d/00-cloud-init.conf"
OUR_DROP_IN = "/etc/ssh/sshd_config.d/00-linkdest.conf"
C10_KEYS = "/etc/linkdest/authorized_keys/bk-c10"


def site(inventory: str, *extra: str) -> subprocess.CompletedProcess:
    """The real site.yml from the repository, as an operator runs it."""
    binary = pathlib.Path(sys.executable).with_name("ansible-playbook")
    return subprocess.run(
        [str(binary) if binary.exists() else "ansible-playbook", "-i", inventory, "site.yml"]
        + list(extra),
        cwd=REPO,
        env=dict(
            os.environ,
            ANSIBLE_COLLECTIONS_PATH=str(REPO / "collections"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
        ),
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )


def inventory_without(directory: str, host: str) -> str:
    """A copy of the scenario's inventory without ``host``, with its group_vars."""
    return lib.edited_inventory(directory, lambda data: lib.without_host(data, host))


@pytest.mark.parametrize(
    "role_changes_sshd", [False, True], ids=["sshd config unchanged", "sshd config changed"]
)
def test_a_planted_password_drop_in_stops_site_yml_and_never_goes_live(
    attack, c1, server, role_changes_sshd
):
    """A drop-in that sorts before ours (as cloud-init's would) turns passwords
    back on. The role must stop, naming the effective value, and sshd must
    never run with it: also when the same run changes the sshd configuration
    (an upgrade or a new setting), which makes the role reload sshd."""
    assert PLANTED_DROP_IN < OUR_DROP_IN
    lib.put_file(server, PLANTED_DROP_IN, "PasswordAuthentication yes\n")
    if role_changes_sshd:
        # Our drop-in as an older release or another setting left it.
        assert server.run("echo '# an older setting' >> %s" % OUR_DROP_IN).rc == 0
    try:
        effective = server.run(
            "/usr/sbin/sshd -T -C user=root,host=c1,addr=127.0.0.1,lport=22"
        ).stdout
        assert "passwordauthentication yes" in effective.splitlines()
        result = site(
            os.environ["MOLECULE_INVENTORY_FILE"],
            "--limit",
            "sec-server",
            "--tags",
            "backup_server_sshd",
        )
        # What the running sshd offers now, before any cleanup.
        offered = offered_methods(
            alice(
                c1,
                "ssh -v -F /dev/null -o UserKnownHostsFile=/etc/linkdest/known_hosts"
                " -o HostKeyAlias=linkdest-server -o BatchMode=yes -o PubkeyAuthentication=no"
                " root@%s true </dev/null" % server_address(c1),
            ).output
        )
    finally:
        # Test cleanup: the planted file goes, and sshd rereads what is left.
        server.run("rm -f %s && systemctl reload ssh" % PLANTED_DROP_IN)
    output = result.stdout + result.stderr
    message = [
        line.strip() for line in output.splitlines() if "passwordauthentication" in line.lower()
    ]
    if message:
        # The sentence of the role's message that names the value.
        sentences = message[0].split(". ")
        message[0] = next(t for t in sentences if "passwordauthentication" in t.lower())
    problems = []
    if result.returncode == 0 or not message:
        problems.append("site.yml did not stop on the planted value (exit %d)" % result.returncode)
    if offered != {"publickey"}:
        problems.append(
            "the role reloaded sshd with the planted drop-in: it offers %s" % sorted(offered)
        )
    attack.record_verdict(
        "sshd",
        "a planted %s with PasswordAuthentication yes, then site.yml (%s)"
        % (PLANTED_DROP_IN, "our drop-in changed too" if role_changes_sshd else "nothing else"),
        "exit %d: %s; sshd offers %s"
        % (result.returncode, message[0] if message else "", ",".join(sorted(offered))),
        "detected: the run stops naming the value; sshd still offers publickey only"
        if not problems
        else ("HOLE: " if offered != {"publickey"} else "FAIL: ") + "; ".join(problems),
    )
    assert not problems, output[-3000:]
    # lport: the exposed port's Match LocalPort block makes sshd -T ask for it.
    effective = server.run("/usr/sbin/sshd -T -C user=root,host=c1,addr=127.0.0.1,lport=22")
    assert "passwordauthentication no" in effective.stdout.splitlines()


def test_a_revoked_laptop_is_refused_and_keeps_its_snapshots(attack, server, c1, c10):
    """c10 leaves the inventory and site.yml runs: c10's key stops working, its
    snapshots stay. Then site.yml with the full inventory restores it."""
    saved = server.file(C10_KEYS).content_string
    assert server.run("cp -p %s /root/bk-c10.authorized_keys.saved" % C10_KEYS).rc == 0
    before = lib.fingerprint(server)
    with tempfile.TemporaryDirectory(dir=os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")) as tmp:
        revoked = site(inventory_without(tmp, "c10"))
    try:
        assert revoked.returncode == 0, (revoked.stdout + revoked.stderr)[-3000:]
        assert not server.file(C10_KEYS).exists
        after = lib.fingerprint(server)
        assert after["areas"]["c10"] == before["areas"]["c10"], lib.fingerprint_diff(before, after)
        lib.write_file(c10, "after-revocation.txt", "written after c10 was revoked\n")
        attack.attempt(
            "revocation",
            "linkdest backup from c10 after c10 left the inventory and site.yml ran",
            lambda: alice(c10, "linkdest backup"),
            expect="Permission denied (publickey)",
            client="c10",
        )
        attack.attempt(
            "revocation",
            "c10's key reads its own snapshots after revocation",
            lambda: alice(c10, "ssh -F %s linkdest-server list </dev/null" % lib.SSH_CONFIG),
            expect="Permission denied (publickey)",
            client="c10",
        )
        # The other laptop is not affected.
        lib.backup_ok(c1)
    finally:
        restored = site(os.environ["MOLECULE_INVENTORY_FILE"])
        lib.as_user(c10, "rm -f %s/after-revocation.txt" % lib.SOURCE)
    assert restored.returncode == 0, (restored.stdout + restored.stderr)[-3000:]
    assert server.file(C10_KEYS).content_string == saved
    assert server.run("cmp %s /root/bk-c10.authorized_keys.saved" % C10_KEYS).rc == 0
    lib.backup_ok(c10)
