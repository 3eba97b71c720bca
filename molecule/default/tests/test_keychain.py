# Copyright (c) 2026 linkdest.backup contributors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The article's keychain flow: a passphrase on the key, unlocked once at login."""

import linkdest_testlib as lib

KEY = lib.HOME + "/.ssh/linkdest_ed25519"
PASSPHRASE = "correct horse battery staple"
CRON_ENV = "env -i PATH=/usr/bin:/bin SHELL=/bin/sh HOME=/home/alice LOGNAME=alice"


def log_in(laptop):
    """What the user's login does: ~/.profile runs keychain, which asks for the passphrase."""
    askpass = "/tmp/linkdest-askpass"
    laptop.run(
        "printf '#!/bin/sh\\necho %s\\n' > %s && chmod 755 %s" % (PASSPHRASE, askpass, askpass)
    )
    result = lib.as_user(
        laptop,
        ". ~/.profile",
        env="env HOME=/home/alice SSH_ASKPASS=%s SSH_ASKPASS_REQUIRE=force DISPLAY=none" % askpass,
    )
    laptop.run("rm -f %s" % askpass)
    assert result.rc == 0, result.stderr


def log_out_everywhere(laptop):
    laptop.run("pkill -u alice ssh-agent; rm -rf %s/.keychain" % lib.HOME)


def test_the_key_has_a_passphrase_and_keychain_starts_at_login(laptop_k):
    assert laptop_k.package("keychain").is_installed
    assert laptop_k.run("ssh-keygen -y -P '' -f %s" % KEY).rc != 0
    profile = laptop_k.file(lib.HOME + "/.profile").content_string
    assert "# BEGIN linkdest.backup keychain" in profile
    assert "keychain --eval --quiet --agents ssh %s" % KEY in profile


def test_without_an_unlocked_agent_the_run_fails_and_says_why(laptop_k):
    log_out_everywhere(laptop_k)
    result = laptop_k.run("runuser -u alice -- %s /usr/local/bin/linkdest backup" % CRON_ENV)
    assert result.rc == 78
    assert "the ssh agent holds no unlocked backup key" in result.stderr
    status = lib.read_status(laptop_k)
    assert status["last_result"] == "failed"
    assert "the ssh agent holds no unlocked backup key" in status["last_error"]
    assert (
        "the ssh agent holds no unlocked backup key"
        in laptop_k.file(lib.HOME + "/.local/state/linkdest/linkdest.log").content_string
    )


def test_after_login_crons_run_uses_the_agent(laptop_k, server):
    log_out_everywhere(laptop_k)
    log_in(laptop_k)
    lib.write_file(laptop_k, "keychain.txt", "unlocked once\n")
    # cron's bare environment: only the agent keychain left behind can help.
    result = laptop_k.run(
        "runuser -u alice -- %s /usr/local/bin/linkdest backup --quiet" % CRON_ENV
    )
    assert result.rc == 0, result.stderr
    name = lib.read_status(laptop_k)["last_snapshot"]
    assert (
        server.file("%s/laptop-k/%s/keychain.txt" % (lib.ROOT, name)).content_string
        == "unlocked once\n"
    )
