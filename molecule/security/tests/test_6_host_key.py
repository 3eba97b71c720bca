# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""A changed or impostor server host key stops the backup with a clear
message before the laptop authenticates or sends anything."""

import linkdest_testlib as lib
import pytest
from conftest import WORK, alice

KNOWN_HOSTS = "/etc/linkdest/known_hosts"


@pytest.fixture
def pinned(c1):
    """The pinned known_hosts file, put back exactly after the test."""
    original = c1.file(KNOWN_HOSTS).content_string
    yield original
    lib.put_file(c1, KNOWN_HOSTS, original, mode="0644", owner="root")
    assert c1.file(KNOWN_HOSTS).content_string == original
    # Backups work again (and the laptop's status recovers).
    lib.backup_ok(c1)


def other_key(laptop) -> str:
    """A fresh ed25519 public key: what an impostor server would present."""
    result = lib.as_user(
        laptop,
        "rm -f %s/impostor %s/impostor.pub && ssh-keygen -q -t ed25519 -N '' -f %s/impostor"
        " && cat %s/impostor.pub" % ((WORK,) * 4),
    )
    assert result.rc == 0, result.stderr
    return " ".join(result.stdout.split()[:2])


def _attempt(attack, c1, server, what, expect):
    cursor = lib.journal_cursor(server)

    def no_login_and_a_clear_status(result):
        problems = []
        status = lib.read_status(c1)
        if status.get("last_result") != "failed" or expect not in status.get("last_error", ""):
            problems.append(
                "status says %s: %s" % (status.get("last_result"), status.get("last_error"))
            )
        if "Accepted publickey for bk-c1" in lib.journal_since(server, cursor):
            problems.append("the laptop logged in to the server")
        return problems

    attack.attempt(
        "host key",
        what,
        lambda: alice(c1, "linkdest backup"),
        expect=expect,
        check=no_login_and_a_clear_status,
    )


def test_a_changed_host_key_stops_the_backup(attack, c1, server, pinned):
    key = other_key(c1)
    changed = "".join(
        "linkdest-server %s\n" % key if line.startswith("linkdest-server ") else line + "\n"
        for line in pinned.splitlines()
    )
    assert changed != pinned
    lib.put_file(c1, KNOWN_HOSTS, changed, mode="0644", owner="root")
    _attempt(
        attack,
        c1,
        server,
        "linkdest backup with another ed25519 key pinned for the server (changed or impostor"
        " server)",
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
    )


def test_no_pinned_host_key_stops_the_backup(attack, c1, server, pinned):
    """No trust on first use: without the pinned key ssh does not connect."""
    lib.put_file(c1, KNOWN_HOSTS, "# emptied by the attack suite\n", mode="0644", owner="root")
    _attempt(
        attack,
        c1,
        server,
        "linkdest backup with no host key pinned (trust on first use)",
        "Host key verification failed",
    )
