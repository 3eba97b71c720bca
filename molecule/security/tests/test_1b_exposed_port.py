# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The port a home router forwards from the internet, on Debian 12 (issue 22).

OpenSSH 9.2 has no per-source penalties (Debian 13's are tested in the
journey scenario). What holds here: only the laptops' accounts log in on the
exposed port, keys only, and one source address gets at most three
unauthenticated connections at once (PerSourceMaxStartups), so a flood from
one address leaves the slots to everyone else.
"""

import shlex

import linkdest_testlib as lib

EXPOSED = 2222
# c10 holds three connections that never log in, then tries a fourth;
# prints what each got back.
HOLD = r"""
import socket, sys, time
held = []
for _ in range(3):
    s = socket.create_connection(("sec-server", 2222), timeout=10)
    held.append(s)
    print("held:", s.recv(64)[:8], flush=True)
fourth = socket.create_connection(("sec-server", 2222), timeout=10)
try:
    got = fourth.recv(64)
except OSError as exc:
    got = repr(exc).encode()
print("fourth:", got[:8] or b"closed", flush=True)
time.sleep(int(sys.argv[1]))
"""


def test_sshd_applies_the_exposed_ports_settings(server):
    effective = server.run(
        "/usr/sbin/sshd -T -C user=alice,host=c10,addr=192.0.2.7,lport=%d" % EXPOSED
    ).stdout.splitlines()
    for line in (
        "port 2222",
        "allowgroups linkdest",
        "permitrootlogin no",
        "passwordauthentication no",
        "authenticationmethods publickey",
        "maxauthtries 2",
        "persourcemaxstartups 3",
    ):
        assert line in effective, line
    assert lib.run_ok(server, "/usr/sbin/sshd -V 2>&1").startswith("OpenSSH_9.2")
    # No penalties on 9.2: the role wrote none (sshd would refuse the keyword).
    drop_in = server.file("/etc/ssh/sshd_config.d/00-linkdest.conf").content_string
    assert "PerSourcePenalties" not in drop_in


def test_an_account_whose_key_works_on_the_lan_port_is_refused_on_the_exposed_one(server, c10):
    """An admin-like account with a valid key: it logs in on port 22, and on
    the exposed port sshd refuses it for its groups (the Match block), with
    the same key from the same address."""
    lib.run_ok(c10, "rm -f /root/carol && ssh-keygen -q -t ed25519 -N '' -f /root/carol")
    key = lib.run_ok(c10, "cat /root/carol.pub").strip()
    lib.run_ok(server, "useradd -m -s /bin/sh carol")
    try:
        lib.run_ok(server, "mkdir -p /home/carol/.ssh")
        lib.put_file(server, "/home/carol/.ssh/authorized_keys", key + "\n")
        lib.run_ok(server, "chown -R carol: /home/carol/.ssh && chmod 700 /home/carol/.ssh")
        ssh = (
            "ssh -i /root/carol -o BatchMode=yes -o StrictHostKeyChecking=no"
            " -o UserKnownHostsFile=/dev/null -p %d carol@sec-server echo in"
        )
        cursor = lib.run_ok(server, "journalctl -n 0 --show-cursor -o cat").split("cursor: ")[-1]
        lan = c10.run(ssh % 22)
        assert (lan.rc, lan.stdout.strip()) == (0, "in"), lan.stderr
        exposed = c10.run(ssh % EXPOSED)
        assert exposed.rc == 255
        assert "Permission denied (publickey)" in exposed.stderr, exposed.stderr
        log = server.run(
            "journalctl -u ssh --no-pager -o cat --after-cursor=%s" % shlex.quote(cursor.strip())
        ).stdout
        assert [
            line
            for line in log.splitlines()
            if line.startswith("User carol from ")
            and line.endswith("not allowed because none of user's groups are listed in AllowGroups")
        ], log
    finally:
        server.run("userdel -r carol")


def test_a_flood_from_one_address_leaves_the_port_to_the_laptops(c1, c10):
    lib.run_ok(c10, "cat > /tmp/hold.py <<'EOF'\n%s\nEOF" % HOLD)
    lib.run_ok(c10, "nohup python3 /tmp/hold.py 20 > /tmp/hold.out 2>&1 &")
    # While c10 holds its three, c1 (another address) lists its snapshots
    # over the exposed port with its own key.
    for _ in range(50):
        if c10.file("/tmp/hold.out").contains("fourth:"):
            break
        lib.run_ok(c10, "sleep 0.2")
    exposed_ssh = "ssh -F %s -o Port=%d" % (lib.SSH_CONFIG, EXPOSED)
    listed = lib.as_user(c1, exposed_ssh + " linkdest-server list")
    assert listed.rc == 0, listed.stderr
    assert "back-" in listed.stdout
    said = c10.file("/tmp/hold.out").content_string
    assert said.count("held: b'SSH-") == 3, said
    # The fourth from the same address gets no banner: sshd closed it.
    assert "fourth: b'SSH-" not in said, said
    assert "fourth:" in said, said
