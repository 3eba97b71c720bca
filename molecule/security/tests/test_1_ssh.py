# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""A laptop's key gets no shell, no command, no pty, no forwarding, no sftp or
scp; no account takes a password."""

import shlex
import time

import linkdest_testlib as lib
import pytest
from conftest import PROBE, WORK, Result, alice, offered_methods, server_address

SSH = "ssh -F %s" % lib.SSH_CONFIG
# The laptop's ssh configuration clears forwardings; malware simply asks again.
SSH_FORWARD = SSH + " -o ClearAllForwardings=no"
# The server's own sshd, seen from the server: a forward that worked would
# show its banner.
SSHD_PORT = 22


def _latest(world):
    return world["c1"]["latest"]


COMMANDS = [
    ("id", "id"),
    ("sh -c", "sh -c id"),
    ("an interactive shell by name", "/bin/bash -i"),
    ("rm -rf of the drive", "rm -rf /media/backup_drive"),
    ("rm -rf of the area", "rm -rf ."),
    ("python", "python3 -c 'import os; print(os.getuid())'"),
    ("the server command's own verbs", "linkdest-server prune --all"),
    ("the manifest verb (root's, through sudo)", "manifest --all"),
    ("sudo to write a manifest", "sudo -n linkdest-server manifest back-2026-01-01T00_00_00"),
    ("the verify verb", "linkdest-server verify"),
    ("the gate naming another laptop", "gate c10"),
    ("the gate's full path", "/usr/local/sbin/linkdest-server gate c10"),
    ("an rsync daemon", "rsync --daemon"),
    ("an rsync daemon over the server protocol", "rsync --server --daemon ."),
    ("';' after an allowed verb", "list; id"),
    ("'&&' after an allowed verb", "list && id"),
    ("a pipe after an allowed verb", "list | id"),
    ("command substitution", "list $(id)"),
    ("backticks", "list `id`"),
    ("a newline after an allowed verb", "list\nid"),
    ("finalize followed by rm", "finalize 0; rm -rf /media/backup_drive"),
    ("more than 64 arguments", "list " + "x " * 80),
    ("a command longer than 4 KiB", "list " + "x" * 5000),
]


@pytest.mark.parametrize(("what", "command"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_arbitrary_commands_are_refused(attack, c1, what, command):
    # printf keeps newlines and quotes exactly as the attacker sends them.
    sent = "$(printf %%s %s)" % shlex.quote(shlex.quote(command))
    attack.attempt(
        "command",
        "ssh linkdest-server %s" % (what if len(command) > 60 else repr(command)),
        lambda: alice(c1, "%s linkdest-server %s </dev/null" % (SSH, sent)),
        expect="linkdest-server: refused",
        forbidden_output=("uid=",),
    )


def test_interactive_shell_is_refused(attack, c1):
    attack.attempt(
        "shell",
        "ssh linkdest-server with no command, commands on stdin",
        lambda: alice(c1, "printf 'id\\nexit\\n' | %s linkdest-server" % SSH),
        expect="linkdest-server: refused: no command given",
        forbidden_output=("uid=",),
    )


@pytest.mark.parametrize(
    ("what", "options"),
    [("ssh -tt (no command)", "-tt"), ("ssh -o RequestTTY=force id", "-o RequestTTY=force")],
)
def test_no_pty(attack, c1, what, options):
    command = "" if options == "-tt" else "id"
    attack.attempt(
        "pty",
        what,
        lambda: alice(c1, "%s %s linkdest-server %s </dev/null" % (SSH, options, command)),
        expect="PTY allocation request failed",
        forbidden_output=("uid=",),
    )


def _forward_in_background(laptop, options: str) -> str:
    """Start ssh with a forwarding in the background as the laptop user; its pid."""
    result = lib.as_user(
        laptop,
        "%s %s -N linkdest-server </dev/null >%s/forward.log 2>&1 & echo $!"
        % (SSH_FORWARD, options, WORK),
    )
    assert result.rc == 0, result.stderr
    time.sleep(3)
    return result.stdout.strip()


def _stop(laptop, pid: str) -> str:
    lib.as_user(laptop, "kill %s; sleep 0.5" % pid)
    return lib.as_user(laptop, "cat %s/forward.log" % WORK).stdout


def test_local_forwarding_does_not_work(attack, c1):
    def run():
        pid = _forward_in_background(c1, "-L 127.0.0.1:47022:127.0.0.1:%d" % SSHD_PORT)
        probe = alice(c1, "python3 %s/probe.py 127.0.0.1 47022" % WORK)
        log = _stop(c1, pid)
        return Result(-1 if "SSH-" not in probe.output else 0, probe.output + log)

    attack.attempt(
        "forwarding",
        "ssh -N -L 47022:127.0.0.1:22 (sshd on the server), then connect to it",
        run,
        expect="administratively prohibited",
        forbidden_output=("SSH-",),
    )


def test_remote_forwarding_does_not_work(attack, c1, server):
    def run():
        pid = _forward_in_background(c1, "-R 127.0.0.1:47023:127.0.0.1:%d" % SSHD_PORT)
        probe = server.run("python3 -c %s 127.0.0.1 47023" % shlex.quote(PROBE))
        listening = server.run("ss -Htln sport = :47023").stdout
        log = _stop(c1, pid)
        output = (
            probe.stdout + probe.stderr + log + ("listening: " + listening if listening else "")
        )
        return Result(-1 if "SSH-" not in output and not listening else 0, output)

    attack.attempt(
        "forwarding",
        "ssh -N -R 47023:127.0.0.1:22, then connect to port 47023 on the server",
        run,
        expect="remote port forwarding failed",
        forbidden_output=("SSH-", "listening:"),
    )


def test_dynamic_forwarding_does_not_work(attack, c1):
    def run():
        pid = _forward_in_background(c1, "-D 127.0.0.1:47024")
        probe = alice(c1, "python3 %s/probe.py 127.0.0.1 47024 %d" % (WORK, SSHD_PORT))
        log = _stop(c1, pid)
        return Result(-1 if "SSH-" not in probe.output else 0, probe.output + log)

    attack.attempt(
        "forwarding",
        "ssh -N -D 47024, then SOCKS5 CONNECT to 127.0.0.1:22 through it",
        run,
        expect="administratively prohibited",
        forbidden_output=("SSH-",),
    )


def test_stdio_forwarding_does_not_work(attack, c1):
    attack.attempt(
        "forwarding",
        "ssh -W 127.0.0.1:22 (stdio forwarding, as ProxyJump uses)",
        lambda: alice(
            c1, "%s -W 127.0.0.1:%d linkdest-server </dev/null" % (SSH_FORWARD, SSHD_PORT)
        ),
        expect="administratively prohibited",
        forbidden_output=("SSH-",),
    )


def test_environment_from_the_laptop_is_not_accepted(attack, c1):
    attack.attempt(
        "command",
        "ssh -o SetEnv='LD_PRELOAD=... PYTHONPATH=... SSH_ORIGINAL_COMMAND=list' id",
        lambda: alice(
            c1,
            "%s -o SetEnv='LD_PRELOAD=/nonexistent.so PYTHONPATH=%s"
            " SSH_ORIGINAL_COMMAND=list' linkdest-server id </dev/null" % (SSH, WORK),
        ),
        expect="linkdest-server: refused: command 'id'",
        forbidden_output=("LD_PRELOAD", "uid=", "back-"),
    )


def test_sftp_is_refused_both_ways(attack, c1, world):
    latest = _latest(world)
    for what, batch in (
        ("sftp: ls, get of a snapshot's file", "ls\nget %s/shared.txt %s/got\n" % (latest, WORK)),
        (
            "sftp: put into a snapshot, rm of its file",
            "put /etc/hostname %s/x\nrm %s/shared.txt\n" % (latest, latest),
        ),
    ):
        command = (
            "printf %%s %s > %s/batch && sftp -F %s -b %s/batch linkdest-server; rc=$?;"
            " test ! -e %s/got; exit $rc" % (shlex.quote(batch), WORK, lib.SSH_CONFIG, WORK, WORK)
        )
        attack.attempt(
            "sftp/scp",
            what,
            lambda command=command: alice(c1, command + " </dev/null"),
            expect="Connection closed",
        )


SCP = [
    ("scp download of a snapshot's file (SFTP protocol)", "", "download", "Connection closed"),
    ("scp upload onto a snapshot's file (SFTP protocol)", "", "upload", "Connection closed"),
    (
        "scp -O download of a snapshot's file (scp protocol)",
        "-O",
        "download",
        "linkdest-server: refused: command 'scp'",
    ),
    (
        "scp -O upload onto a snapshot's file (scp protocol)",
        "-O",
        "upload",
        "linkdest-server: refused: command 'scp'",
    ),
    (
        "scp -O upload into c10's area by absolute path",
        "-O",
        "upload-c10",
        "linkdest-server: refused: command 'scp'",
    ),
]


@pytest.mark.parametrize(("what", "flag", "direction", "expect"), SCP, ids=[s[0] for s in SCP])
def test_scp_is_refused_both_ways(attack, c1, world, what, flag, direction, expect):
    latest = _latest(world)
    remote = "linkdest-server:%s/shared.txt" % latest
    if direction == "download":
        command = "scp %s -F %s %s %s/got; rc=$?; test ! -e %s/got; exit $rc" % (
            flag,
            lib.SSH_CONFIG,
            remote,
            WORK,
            WORK,
        )
    else:
        if direction == "upload-c10":
            remote = "linkdest-server:%s/c10/%s/x" % (lib.ROOT, world["c10"]["latest"])
        command = "echo overwritten > %s/new && scp %s -F %s %s/new %s" % (
            WORK,
            flag,
            lib.SSH_CONFIG,
            WORK,
            remote,
        )
    attack.attempt("sftp/scp", what, lambda: alice(c1, command + " </dev/null"), expect=expect)


ACCOUNTS = ["root", "bk-c1", "bk-c10", "alice", "linkdest"]


@pytest.mark.parametrize("account", ACCOUNTS)
def test_password_and_keyboard_interactive_are_refused(attack, c1, server, account):
    """The server offers publickey only: ssh never even asks for a password."""
    server_name = server_address(c1)
    command = (
        f"rm -f {WORK}/askpass.log; SSH_ASKPASS={WORK}/askpass SSH_ASKPASS_REQUIRE=force"
        " DISPLAY=:0 ssh -v -F /dev/null -o UserKnownHostsFile=/etc/linkdest/known_hosts"
        " -o HostKeyAlias=linkdest-server -o StrictHostKeyChecking=yes"
        " -o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive"
        f" -o NumberOfPasswordPrompts=1 {account}@{server_name} id </dev/null; rc=$?;"
        f" cat {WORK}/askpass.log 2>/dev/null; exit $rc"
    )

    def check(result):
        offered = offered_methods(result.output)
        return [] if offered == {"publickey"} else ["the server offers %s" % offered]

    attack.attempt(
        "password",
        "password/keyboard-interactive login as %s" % account,
        lambda: alice(c1, command),
        expect="Permission denied (publickey)",
        forbidden_output=("asked", "uid="),
        check=check,
    )
    # The real point, beyond the client's view: sshd's effective settings.
    effective = server.run(
        "/usr/sbin/sshd -T -C user=%s,host=c1,addr=127.0.0.1,lport=22" % account
    ).stdout.splitlines()
    assert "passwordauthentication no" in effective
    assert "kbdinteractiveauthentication no" in effective
